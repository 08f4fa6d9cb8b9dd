"""KLUE NER loading: the v1.1 TSV parser, the Hub-schema normalisation, labels by name, format errors."""

import re
import unicodedata
import warnings
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Sequence, Value
from tiny import character_tokenizer, tiny_model
from transformers import DataCollatorForTokenClassification

from koelectra_crf.alignment import NerDataCollator, pad_inputs
from koelectra_crf.configuration_koelectra_crf import KLUE_LABELS
from koelectra_crf.data import (
    KlueFormatError,
    example_tag_names,
    label_names,
    load_klue_ner,
    normalize_hub_split,
    read_klue_tsv,
    strip_entity_marks,
    tags_to_ids,
    tokenize_and_align,
    with_label_names,
)
from koelectra_crf.inputs import read_records, read_texts

# The Hub's `klue`/`ner` ClassLabel order (alphabetical by type): a different order than KLUE_LABELS on purpose.
HUB_NAMES = ["B-DT", "I-DT", "B-LC", "I-LC", "B-OG", "I-OG", "B-PS", "I-PS", "B-QT", "I-QT", "B-TI", "I-TI", "O"]

TYPES = "|".join(label[2:] for label in KLUE_LABELS if label.startswith("B-"))
MARK = re.compile(rf"<([^<>]+):({TYPES})>")


def header_lines(path) -> list[str]:
    """The marked sentence of every sentence header, read straight from the file."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t", 1)[1] for line in f if line.startswith("## klue-ner")]


def marks(marked: str) -> tuple[str, set[tuple[int, int, str]]]:
    """Plain text and entity spans of a marked sentence (written independently of the library)."""
    text, spans, last = "", set(), 0
    for match in MARK.finditer(marked):
        text += marked[last : match.start()]
        spans.add((len(text), len(text) + len(match.group(1)), match.group(2)))
        text += match.group(1)
        last = match.end()
    return text + marked[last:], spans


def tag_spans(tags: list[str]) -> set[tuple[int, int, str]]:
    """Entity spans of a well-formed BIO sequence."""
    spans, start = set(), None
    for i, tag in enumerate([*tags, "O"]):
        if start is not None and not (tag.startswith("I-") and tag[2:] == tags[start][2:]):
            spans.add((start, i, tags[start][2:]))
            start = None
        if tag.startswith("B-"):
            start = i
    return spans


def test_valid_file_matches_its_headers(klue_valid_file):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official file has no ill-formed BIO
        sentences = read_klue_tsv(klue_valid_file)
    headers = header_lines(klue_valid_file)
    assert len(sentences) == len(headers) == 500
    for sentence, marked in zip(sentences, headers, strict=True):
        text, spans = marks(marked)
        assert "".join(sentence["tokens"]) == sentence["sentence"] == text
        assert all(len(token) == 1 for token in sentence["tokens"])
        assert tag_spans(sentence["ner_tags"]) == spans, sentence["guid"]
    assert sum(len(marks(marked)[1]) for marked in headers) > 1000  # the comparison above is not vacuous


def test_load_klue_ner_from_files(klue_train_file, klue_valid_file):
    data = load_klue_ner(train_file=klue_train_file, validation_file=klue_valid_file)
    assert list(data) == ["train", "validation"]
    assert data.num_rows == {"train": 3500, "validation": 500}
    assert set(data["train"].features) == {"guid", "sentence", "tokens", "ner_tags"}
    assert label_names(data) == KLUE_LABELS
    # Ids are stored, names come back through the features.
    parsed = read_klue_tsv(klue_valid_file)
    names = label_names(data["validation"])
    for example, sentence in zip(data["validation"], parsed, strict=True):
        assert example["guid"] == sentence["guid"]
        assert example_tag_names(example, names) == sentence["ner_tags"]
    # Official-file edge case: an entity whose first character is a space, tagged B- (`< 24살:QT>`).
    example = next(example for example in data["train"] if example["guid"] == "klue-ner-v1_dev_01601-wikitree")
    start = example["sentence"].index(" 24살")
    assert example_tag_names(example, names)[start : start + 4] == ["B-QT", "I-QT", "I-QT", "I-QT"]


def test_hub_schema_gives_the_same_tag_names(klue_valid_file):
    parsed = read_klue_tsv(klue_valid_file)[:100]
    headers = header_lines(klue_valid_file)[:100]
    hub = Dataset.from_dict(
        {
            "sentence": headers,  # the Hub keeps the marks in `sentence`
            "tokens": [sentence["tokens"] for sentence in parsed],
            "ner_tags": [[HUB_NAMES.index(tag) for tag in sentence["ner_tags"]] for sentence in parsed],
        },
        features=Features(
            {
                "sentence": Value("string"),
                "tokens": Sequence(Value("string")),
                "ner_tags": Sequence(ClassLabel(names=HUB_NAMES)),
            }
        ),
    )
    from_hub = normalize_hub_split(hub, "validation")
    from_tsv = load_klue_ner(validation_file=klue_valid_file)["validation"].select(range(100))

    assert list(from_hub.features) == list(from_tsv.features)
    for column in ("guid", "sentence", "tokens"):
        assert from_hub.features[column] == from_tsv.features[column]
    assert label_names(from_hub) == HUB_NAMES and label_names(from_tsv) == KLUE_LABELS
    assert from_hub[0]["guid"] == "klue-ner-validation-0"
    model_label2id = {label: i for i, label in enumerate(KLUE_LABELS)}
    hub_names, tsv_names = label_names(from_hub), label_names(from_tsv)
    for hub_example, tsv_example in zip(from_hub, from_tsv, strict=True):
        assert hub_example["sentence"] == tsv_example["sentence"]
        assert hub_example["tokens"] == tsv_example["tokens"]
        hub_tags = example_tag_names(hub_example, hub_names)
        assert hub_tags == example_tag_names(tsv_example, tsv_names)
        # Different stored ids, the same ids for a model once converted by name.
        assert tags_to_ids(hub_tags, model_label2id) == tsv_example["ner_tags"]
    assert any(hub["ner_tags"] != tsv["ner_tags"] for hub, tsv in zip(from_hub, from_tsv, strict=True))


def test_strip_entity_marks_edge_cases():
    # Entity text with `:` and spaces, a space-led entity, stray brackets, and a broken mark left as text.
    assert strip_entity_marks("<12:30:TI>에 <을지로 2가:LC>") == ("12:30에 을지로 2가", [(0, 5, "TI"), (7, 13, "LC")])
    assert strip_entity_marks("최근< 24살:QT>") == ("최근 24살", [(2, 6, "QT")])
    assert strip_entity_marks("영화 <<레이:PS>>는") == ("영화 <레이>는", [(4, 6, "PS")])
    assert strip_entity_marks("<한:LC><일:;LC>월드컵") == ("한<일:;LC>월드컵", [(0, 1, "LC")])


def test_tags_to_ids_names_the_unknown_tag():
    assert tags_to_ids(["O", "B-PS"], {"B-PS": 0, "O": 1}) == [1, 0]
    with pytest.raises(ValueError, match="'B-XX'"):
        tags_to_ids(["O", "B-XX"], {"B-PS": 0, "O": 1})


# The five comment lines that open the official files (the last one has a tab).
HEADER = (
    "## 토큰, 레이블 구분자 : \\t\n## 토큰 구분자 : \\n\n## 문장 구분자 : \\n\\n\n## 주석 : ##\n"
    "## 컬럼명 : CHAR\tNE_TAG\n"
)


def write(tmp_path, body: str):
    path = tmp_path / "ner.tsv"
    path.write_text(HEADER + body, encoding="utf-8")
    return path


def test_small_file_parses(tmp_path):
    path = write(tmp_path, "## g1\t<A:PS> 씨\nA\tB-PS\n \tO\n씨\tO\n\n## g2\t끝 \n끝\tO\n \tO\n")  # no final blank
    assert read_klue_tsv(path) == [
        {"guid": "g1", "sentence": "A 씨", "tokens": ["A", " ", "씨"], "ner_tags": ["B-PS", "O", "O"]},
        {"guid": "g2", "sentence": "끝 ", "tokens": ["끝", " "], "ner_tags": ["O", "O"]},
    ]


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("## g1\tAB\nA\tO\nB O\n", 8, "expected 2 tab-separated columns 'CHAR<tab>TAG', found 1: 'B O'"),
        ("## g1\tAB\nA\tO\nB\tI-OG\textra\n", 8, "expected 2 tab-separated columns 'CHAR<tab>TAG', found 3"),
        ("## g1\tAB\nA\tO\nB\tB-XX\n", 8, "unknown tag 'B-XX': the tags are B-PS, I-PS, B-LC"),
        ("## g1\tAB\nA\tO\nB\tb-ps\n", 8, "unknown tag 'b-ps'"),
        ("## g1\tA B\nA\tO\n\tO\nB\tO\n", 8, "empty character before the tab (a space is written as ' ')"),
        ("## g1\t<AB:PS>\nA\tB-PS\nC\tI-PS\n\n", 6, "join to 'AC'"),
        ("## g1\tA\nA\tO\n\n## g2\tB\n\n## g3\tC\nC\tO\n", 9, "without characters"),
        ("## g1\tA\nA\tO\n\n## g2 B\nB\tO\n", 9, "without a tab"),
        ("## g1\tAB\nAB\tO\n", 7, "one character"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, body, line, message):
    path = write(tmp_path, body)
    with pytest.raises(KlueFormatError, match=re.escape(f"{path}:{line}: ") + ".*" + re.escape(message)):
        read_klue_tsv(path)


def test_ill_formed_bio_is_kept_and_counted(tmp_path):
    path = write(tmp_path, "## g1\t<AB:PS>C\nA\tI-PS\nB\tI-PS\nC\tO\n\n## g2\tD E\nD\tB-LC\n \tO\nE\tI-OG\n\n")
    with pytest.warns(UserWarning, match=re.escape(str(path)) + ": 2 ill-formed BIO tags"):
        sentences = read_klue_tsv(path)
    assert [sentence["ner_tags"] for sentence in sentences] == [["I-PS", "I-PS", "O"], ["B-LC", "O", "I-OG"]]


def test_collator_pads_token_windows_like_transformers_and_character_keys_to_their_own_length(tmp_path):
    raw = load_klue_ner(Path(__file__).resolve().parents[1] / "training/smoke/smoke-train.tsv")["train"].select(
        range(6)
    )
    tokenizer = character_tokenizer(tmp_path, texts=list(raw["sentence"]))
    token_rows = tokenize_and_align(raw, tokenizer, tiny_model(tokenizer.vocab_size, tag_unit="token").config).to_list()
    ours = NerDataCollator(tokenizer.pad_token_id, pad_to_multiple_of=8)(token_rows)
    theirs = DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8)(token_rows)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key

    character_config = tiny_model(tokenizer.vocab_size, tag_unit="character").config
    rows = tokenize_and_align(raw, tokenizer, character_config).to_list()
    batch = NerDataCollator(tokenizer.pad_token_id, pad_to_multiple_of=None)(rows)
    characters = max(len(row["labels"]) for row in rows)
    assert batch["labels"].shape == batch["char_codes"].shape == (len(rows), characters)
    assert batch["input_ids"].shape == (len(rows), max(len(row["input_ids"]) for row in rows))
    for i, row in enumerate(rows):
        assert batch["labels"][i, len(row["labels"]) :].eq(-100).all()
        assert batch["char_codes"][i, : len(row["char_codes"])].tolist() == row["char_codes"]


def test_tensor_values_pad_along_their_first_dimension_in_their_dtype():
    """Calibration pads windows' emissions (length, tags) and gold tags with the same function as model inputs."""
    emissions = [torch.randn(3, 4), torch.randn(1, 4)]
    gold = [torch.tensor([1, 2, 0]), torch.tensor([3])]
    batch = pad_inputs([{"emissions": e, "labels": g} for e, g in zip(emissions, gold, strict=True)], None, 4)
    assert batch["emissions"].dtype == torch.float32 and batch["emissions"].shape == (2, 4, 4)
    assert torch.equal(batch["emissions"][0, :3], emissions[0]) and torch.equal(batch["emissions"][1, :1], emissions[1])
    assert batch["emissions"][0, 3:].eq(0).all() and batch["emissions"][1, 1:].eq(0).all()
    assert batch["labels"].tolist() == [[1, 2, 0, -100], [3, -100, -100, -100]]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    plain = read_klue_tsv(write(tmp_path, "## g1\tA 씨\nA\tB-PS\n \tO\n씨\tO\n"))
    path = tmp_path / "bom.tsv"
    path.write_text(HEADER + "## g1\tA 씨\nA\tB-PS\n \tO\n씨\tO\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_klue_tsv(path) == plain


@pytest.mark.parametrize("content", ["", "\n\n", HEADER])
def test_a_file_without_sentences_is_refused_by_name(tmp_path, content):
    path = tmp_path / "empty.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(KlueFormatError, match=re.escape(f"{path}: no sentences")):
        load_klue_ner(train_file=path)


def test_a_file_that_is_not_utf8_is_refused_by_name_and_line(tmp_path):
    path = tmp_path / "cp949.tsv"
    path.write_bytes(("## g1\tAB\nA\tO\nB\tO\n\n" * 3000 + "## g2\t씨\n씨\tO\n").encode("cp949"))  # past a read block
    with pytest.raises(KlueFormatError, match=re.escape(f"{path}:12001: not UTF-8") + ".*must be UTF-8"):
        read_klue_tsv(path)


@pytest.mark.parametrize(
    "read",
    [
        lambda path: list(read_records(path)),  # `predict`, `pseudo-label`: auto-detected format
        lambda path: list(read_records(path, "text")),
        lambda path: list(read_records(path, "tsv")),
        lambda path: list(read_records(path, "jsonl")),
        lambda path: read_texts(path),  # `benchmark`, `adapt`
    ],
    ids=["auto", "text", "tsv", "jsonl", "texts"],
)
@pytest.mark.parametrize(
    "content, line",
    [(b'{"text": "ok"}\n' + '{"text": "서울에서 만났다"}\n'.encode("cp949"), 2), ("김철수\n".encode("cp949"), 1)],
    ids=["second-line", "first-line"],
)
def test_every_text_input_that_is_not_utf8_is_refused_by_name_and_line(tmp_path, read, content, line):
    """A CP949 file (Korean text often comes so) fails with the file, the line of its first non-UTF-8 byte and how
    to convert it, wherever the project reads user text."""
    path = tmp_path / "cp949.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: not UTF-8") + ".*iconv -f cp949 -t utf-8"):
        read(path)


def nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def test_decomposed_hangul_is_composed_with_the_first_characters_tag(tmp_path):
    """An NFD file (one line per jamo) reads as the NFC file does; a composed character takes its first jamo's tag,
    and an entity boundary inside a syllable moves to the syllable's start (here: counted as ill-formed BIO)."""
    body = "## g1\t<김민준:PS> 씨\n김\tB-PS\n민\tI-PS\n준\tI-PS\n \tO\n씨\tO\n\n"
    composed = read_klue_tsv(write(tmp_path, body))
    decomposed_path = tmp_path / "nfd.tsv"
    lines = []
    for line in body.splitlines():
        char, tab, tag = line.partition("\t")
        if line.startswith("## ") or not tab or char == " ":
            lines.append(nfd(line))
        else:  # one line per jamo: the first keeps the tag, the others continue the entity
            jamo = nfd(char)
            inside = "O" if tag == "O" else f"I-{tag[2:]}"
            lines += [f"{jamo[0]}\t{tag}"] + [f"{j}\t{inside}" for j in jamo[1:]]
    decomposed_path.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    with pytest.warns(UserWarning, match="1 sentences not in Unicode NFC"):
        assert read_klue_tsv(decomposed_path) == composed

    # 씨 = ᄊ + ᅵ; an entity starting on the vowel starts with the syllable: the syllable takes ᄊ's tag.
    path = tmp_path / "split.tsv"
    path.write_text(HEADER + "## g2\t" + nfd("씨김") + "\nᄊ\tO\nᅵ\tB-PS\n" + "".join(
        f"{j}\tI-PS\n" for j in nfd("김")), encoding="utf-8")  # fmt: skip
    with pytest.warns(UserWarning, match="not in Unicode NFC"), pytest.warns(UserWarning, match="1 ill-formed"):
        assert read_klue_tsv(path)[0]["ner_tags"] == ["O", "I-PS"]


def test_compatibility_characters_stay_and_combining_marks_compose(tmp_path):
    # NFC leaves full-width digits and ㈜ alone (only NFKC would change them); é from e + U+0301 takes e's tag.
    body = "## g1\t㈜２０ e\u0301\n㈜\tB-OG\n２\tB-QT\n０\tI-QT\n \tO\ne\tB-PS\n\u0301\tI-PS\n"
    with pytest.warns(UserWarning, match="1 sentences not in Unicode NFC"):
        [sentence] = read_klue_tsv(write(tmp_path, body))
    assert sentence["sentence"] == "㈜２０ é" and sentence["tokens"] == list("㈜２０ é")
    assert sentence["ner_tags"] == ["B-OG", "B-QT", "I-QT", "O", "B-PS"]


def test_with_label_names_reencodes_ids_by_name(klue_valid_file):
    split = load_klue_ner(validation_file=klue_valid_file)["validation"].select(range(20))
    hub_order = with_label_names(split, HUB_NAMES)
    assert label_names(hub_order) == HUB_NAMES
    for example, relabelled in zip(split, hub_order, strict=True):
        assert example_tag_names(relabelled, HUB_NAMES) == example_tag_names(example, KLUE_LABELS)
    assert with_label_names(split, KLUE_LABELS) is split
