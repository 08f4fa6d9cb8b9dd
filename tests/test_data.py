"""KLUE NER loading: the v1.1 TSV parser, the Hub-schema normalisation, labels by name, format errors."""

import re
import warnings

import pytest
from datasets import ClassLabel, Dataset, Features, Sequence, Value

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
)

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
        ("## g1\tAB\nA\tO\nB O\n", 8, "no tab"),
        ("## g1\tAB\nA\tO\nB\tB-XX\n", 8, "'B-XX' is not one of"),
        ("## g1\tAB\nA\tO\nB\tb-ps\n", 8, "'b-ps' is not one of"),
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
