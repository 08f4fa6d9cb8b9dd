"""Labelled data formats (koelectra_crf.formats): every reader gives the same examples, writers read back exactly,
bad data fails with its file and line, prediction output reads back as training data."""

import json
import unicodedata
import warnings

import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import TINY_TEXT, character_tokenizer, tiny_model

from koelectra_crf import KLUE_LABELS, KoElectraCrfTokenClassificationPipeline
from koelectra_crf.alignment import nfc_with_offsets
from koelectra_crf.data import KlueFormatError, label_names, read_klue_tsv, tokenize_and_align
from koelectra_crf.formats import (
    WRITE_FORMATS,
    bio_labels,
    convert,
    detect_scheme,
    entity_types,
    examples_to_dataset,
    examples_to_klue_rows,
    make_example,
    read_examples,
    spans_to_tags,
    tags_to_spans,
    write_examples,
    write_predictions,
)

SUFFIX = {"jsonl": ".jsonl", "doccano": ".jsonl", "label-studio": ".json", "conll": ".conll", "conll-char": ".conll",
          "klue": ".tsv"}  # fmt: skip
READ_AS = {"doccano": "auto", "conll-char": "conll-char"}  # how each written file is read back (auto but these)


def write(tmp_path, name: str, content: str):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    return path


def written_and_read(examples, tmp_path, data_format, tag_scheme="bio", name="data"):
    path = tmp_path / f"{name}-{data_format}-{tag_scheme}{SUFFIX[data_format]}"
    write_examples(examples, path, data_format, tag_scheme)
    return read_examples(path, READ_AS.get(data_format, "auto"))


# KLUE: the official validation file, read directly and through every other format


def test_klue_file_reads_as_read_klue_tsv_does(klue_valid_file):
    examples = read_examples(klue_valid_file)
    assert examples_to_klue_rows(examples) == read_klue_tsv(klue_valid_file)
    assert bio_labels(entity_types(examples)) == KLUE_LABELS


@pytest.mark.parametrize("data_format", WRITE_FORMATS)
def test_klue_file_through_every_format_gives_identical_rows(klue_valid_file, tmp_path, data_format):
    rows = read_klue_tsv(klue_valid_file)
    schemes = ["bio", "iob1", "bioes", "bilou"] if data_format.startswith("conll") else ["bio"]
    for tag_scheme in schemes:
        path = tmp_path / f"{tag_scheme}{SUFFIX[data_format]}"
        assert convert(klue_valid_file, path, output_format=data_format, output_tag_scheme=tag_scheme) == len(rows)
        assert examples_to_klue_rows(read_examples(path, READ_AS.get(data_format, "auto"))) == rows


def test_klue_file_through_a_datasets_folder_gives_identical_rows(klue_valid_file, tmp_path):
    """A local `datasets` folder with character `tokens` (spaces included) and ClassLabel `ner_tags`, no text column
    (`sentence` is not one): the characters are joined as they are."""
    examples = read_examples(klue_valid_file)
    examples_to_dataset(examples).save_to_disk(tmp_path / "klue")
    assert examples_to_klue_rows(read_examples(tmp_path / "klue")) == read_klue_tsv(klue_valid_file)


def test_klue_with_other_types(klue_valid_file, tmp_path):
    """The issue's case: the validation split with OG renamed PRD (tags and header marks) is read, not refused."""
    renamed = klue_valid_file.read_text(encoding="utf-8").replace("-OG\n", "-PRD\n").replace(":OG>", ":PRD>")
    path = write(tmp_path, "prd.tsv", renamed)
    with pytest.raises(KlueFormatError, match="unknown tag 'B-PRD'"):
        read_klue_tsv(path)  # the default still accepts KLUE's 13 tags only
    expected = [
        {**e, "entities": [(s, t, "PRD" if y == "OG" else y) for s, t, y in e["entities"]]}
        for e in read_examples(klue_valid_file)
    ]
    examples = read_examples(path)
    assert examples == expected
    assert entity_types(examples) == ["PS", "LC", "DT", "TI", "QT", "PRD"]


def test_klue_ill_formed_inside_tag_starts_an_entity(tmp_path):
    """The one normalisation: KLUE's reader keeps an `I-X` after `O` (and warns); it starts an entity, as the
    metrics read it, so rows made from the examples tag it `B-X`."""
    path = write(tmp_path, "ill.tsv", "## a\t김 씨\n김\tI-PS\n \tO\n씨\tO\n\n")
    with pytest.warns(UserWarning, match="1 ill-formed BIO tags"):
        examples = read_examples(path)
    assert examples == [{"id": "a", "text": "김 씨", "entities": [(0, 1, "PS")]}]
    assert examples_to_klue_rows(examples)[0]["ner_tags"] == ["B-PS", "O", "O"]


# Random texts: every format reads back what it wrote

KOREAN = st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3)
PIECES = ["한국", unicodedata.normalize("NFD", "김민준"), "e\u0301", "😀", "👩‍👩‍👧", "🇰🇷", "２０２４", "ABC", "서울시",
          "e\u0301\u0323x", " ", "  ", "\u3000", "\u00a0", ".", "#", "-", "=", ":"]  # fmt: skip
LINE_TEXT = st.lists(
    st.one_of(KOREAN, st.sampled_from(PIECES), st.characters(blacklist_characters="\t\n\r<>")), max_size=25
).map("".join)
JSON_TEXT = st.lists(st.one_of(LINE_TEXT, st.sampled_from(["\n", "\t", "\r\n", "<서울:LC>"])), max_size=4).map("".join)
TYPES = st.sampled_from(["PS", "LC", "PRD", "제품", "B-X", "Drug name"])


@st.composite
def examples_of(draw, texts, word_level: bool = False):
    """An example whose text may be in NFD, and its expected NFC form: the entities are drawn on the characters of
    the NFC text and mapped back to the raw text, so that reading the raw text must map them forward again."""
    raw = draw(texts)
    text, char_spans = nfc_with_offsets(raw)
    bounds = sorted(draw(st.sets(st.integers(0, len(text)), max_size=8)))
    spans = [(start, end, draw(TYPES)) for start, end in zip(bounds[::2], bounds[1::2], strict=False)]
    if word_level:  # a word file holds no entity that starts or ends with whitespace
        spans = [span for span in spans if not (text[span[0]].isspace() or text[span[1] - 1].isspace())]
    raw_spans = [(char_spans[start][0], char_spans[end - 1][1], label_type) for start, end, label_type in spans]
    example_id = draw(st.sampled_from(["1", "doc-7", "가나 다"]))
    return {"id": example_id, "text": raw, "entities": raw_spans}, {"id": example_id, "text": text, "entities": spans}


ROUND_TRIP = settings(max_examples=40, deadline=None)


@ROUND_TRIP
@given(pairs=st.lists(examples_of(JSON_TEXT), min_size=1, max_size=3), data_format=st.sampled_from(
    ["jsonl", "doccano", "label-studio"]))  # fmt: skip
def test_json_formats_round_trip(tmp_path_factory, pairs, data_format):
    raw, expected = zip(*pairs, strict=True)
    examples = [make_example(e["id"], e["text"], e["entities"], "test") for e in raw]
    assert examples == list(expected)  # NFD text composed, spans mapped exactly
    assert written_and_read(examples, tmp_path_factory.mktemp("json"), data_format) == examples


@ROUND_TRIP
@given(pairs=st.lists(examples_of(LINE_TEXT.filter(bool)), min_size=1, max_size=3),
       tag_scheme=st.sampled_from(["bio", "iob1", "bioes", "bilou"]))  # fmt: skip
def test_character_formats_round_trip(tmp_path_factory, pairs, tag_scheme):
    """KLUE TSV (BIO; texts not empty) and CoNLL character columns in every scheme."""
    examples = [make_example(e["id"], e["text"], e["entities"], "test") for e, _ in pairs]
    assert examples == [expected for _, expected in pairs]
    folder = tmp_path_factory.mktemp("char")
    assert written_and_read(examples, folder, "conll-char", tag_scheme) == examples
    if tag_scheme == "bio":
        assert written_and_read(examples, folder, "klue") == examples


@ROUND_TRIP
@given(pairs=st.lists(examples_of(LINE_TEXT, word_level=True), min_size=1, max_size=3),
       tag_scheme=st.sampled_from(["bio", "iob1", "bioes", "bilou"]))  # fmt: skip
def test_word_columns_round_trip(tmp_path_factory, pairs, tag_scheme):
    """CoNLL word columns: any spacing (the `# text` line keeps it), entities cut inside words, no entity starting
    or ending with whitespace."""
    examples = [make_example(e["id"], e["text"], e["entities"], "test") for e, _ in pairs]
    assert written_and_read(examples, tmp_path_factory.mktemp("word"), "conll", tag_scheme) == examples


WORDS = st.lists(st.lists(st.one_of(KOREAN, st.sampled_from(["😀", "A", "２", "e\u0301"])), min_size=1, max_size=4)
                 .map("".join), min_size=1, max_size=8)  # fmt: skip


@ROUND_TRIP
@given(words=WORDS, data=st.data())
def test_plain_word_columns_join_words_with_single_spaces(tmp_path_factory, words, data):
    """Without `# text` lines (a plain CoNLL file) the words are joined with single spaces: texts of single-spaced
    words with entities on word boundaries read back as they were."""
    words = [unicodedata.normalize("NFC", word) for word in words]
    text = " ".join(words)
    starts = [sum(len(word) + 1 for word in words[:k]) for k in range(len(words))]
    ends = [start + len(word) for start, word in zip(starts, words, strict=True)]
    bounds = sorted(data.draw(st.sets(st.integers(0, len(words) - 1), max_size=4)))
    entities = [(starts[a], ends[b], data.draw(TYPES)) for a, b in zip(bounds[::2], bounds[1::2], strict=False)]
    example = make_example("0", text, entities, "test")
    path = tmp_path_factory.mktemp("plain") / "plain.conll"
    write_examples([example], path, "conll")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(line for line in lines if not line.startswith("# ")), encoding="utf-8")
    assert read_examples(path, "conll", token_unit="word") == [example]


# Reading what tools export


def test_doccano_variants_and_our_jsonl_give_the_same_examples(tmp_path):
    text = "김민준은 서울에 산다."
    expected = [{"id": "7", "text": text, "entities": [(0, 3, "PS"), (5, 7, "LC")]}]
    variants = {
        "label.jsonl": {"id": 7, "text": text, "label": [[5, 7, "LC"], [0, 3, "PS"]]},
        "labels.jsonl": {"id": 7, "text": text, "labels": [[0, 3, "PS"], [5, 7, "LC"]]},
        "offsets.jsonl": {"id": 7, "text": text, "entities": [
            {"id": 1, "start_offset": 0, "end_offset": 3, "label": "PS"},
            {"id": 2, "start_offset": 5, "end_offset": 7, "label": "LC"}], "relations": []},
        "ours.jsonl": {"id": "7", "text": text, "entities": [
            {"start": 0, "end": 3, "label": "PS"}, {"start": 5, "end": 7, "label": "LC"}]},
        "predict.jsonl": {"id": 7, "text": text, "entities": [
            {"entity_group": "PS", "score": 0.9, "word": "김민준", "start": 0, "end": 3},
            {"entity_group": "LC", "score": 0.8, "word": "서울", "start": 5, "end": 7}]},
    }  # fmt: skip
    for name, record in variants.items():
        assert read_examples(write(tmp_path, name, json.dumps(record, ensure_ascii=False) + "\n")) == expected, name
    listed = write(tmp_path, "list.json", json.dumps([variants["label.jsonl"]]))
    assert read_examples(listed) == expected


def test_nfd_text_is_composed_with_spans_mapped(tmp_path):
    text = unicodedata.normalize("NFD", "김민준은 서울에")  # 김민준 is 9 jamo, 은 3, then a space and 서울 (5 jamo)
    path = write(tmp_path, "nfd.jsonl", json.dumps({"text": text, "label": [[0, 9, "PS"], [13, 18, "LC"]]}) + "\n")
    assert read_examples(path) == [{"id": "0", "text": "김민준은 서울에", "entities": [(0, 3, "PS"), (5, 7, "LC")]}]
    cut = write(tmp_path, "cut.jsonl", json.dumps({"text": text, "label": [[0, 8, "PS"]]}) + "\n")
    with pytest.raises(ValueError, match=r"cut\.jsonl:1: entity \(0, 8, 'PS'\) cuts a character that NFC composes"):
        read_examples(cut)


def test_nfd_column_file_is_composed_with_spans_mapped(tmp_path):
    jamo = unicodedata.normalize("NFD", "김 씨")  # 3 jamo, a space, 2 jamo
    tags = ["B-PS", "I-PS", "I-PS", "O", "O", "O"]
    path = write(tmp_path, "nfd.conll", "".join(f"{char}\t{tag}\n" for char, tag in zip(jamo, tags, strict=True)))
    assert read_examples(path, "conll-char") == [{"id": "0", "text": "김 씨", "entities": [(0, 1, "PS")]}]
    tags[2] = "O"  # the entity ends inside the syllable 김
    path.write_text("".join(f"{char}\t{tag}\n" for char, tag in zip(jamo, tags, strict=True)), encoding="utf-8")
    with pytest.raises(ValueError, match=r"nfd\.conll: sentence 1: entity \(0, 2, 'PS'\) cuts a character"):
        read_examples(path, "conll-char")


def test_format_detection(tmp_path):
    assert read_examples(write(tmp_path, "a.json", json.dumps([{"text": "가", "label": []}]))) == [
        {"id": "0", "text": "가", "entities": []}
    ]
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl: no such file"):
        read_examples(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match=r"cannot tell the data format from the extension '\.xml': give data_format"):
        read_examples(write(tmp_path, "a.xml", "<a/>"))
    with pytest.raises(ValueError, match=r"cannot tell the output format from '\.xml'"):
        write_examples([], tmp_path / "b.xml")


def label_studio_task(task_id, text, *annotations, predictions=None):
    task = {"id": task_id, "data": {"text": text}, "annotations": list(annotations)}
    return task | ({"predictions": predictions} if predictions is not None else {})


def region(start, end, label, text=None, **extra):
    value = {"start": start, "end": end, "labels": [label]} | ({"text": text} if text is not None else {})
    return {"id": f"r{start}", "from_name": "label", "to_name": "text", "type": "labels", "value": value} | extra


def test_label_studio_annotation_choice(tmp_path):
    text = "김민준은 서울에 산다."
    tasks = [
        label_studio_task(1, text,  # the last created of those not cancelled
            {"created_at": "2024-01-02T00:00:00Z", "result": [region(0, 3, "PS", "김민준")]},
            {"created_at": "2024-01-03T00:00:00Z", "result": [region(0, 3, "PS"), region(5, 7, "LC", "서울")]},
            {"created_at": "2024-01-04T00:00:00Z", "was_cancelled": True, "result": []}),
        label_studio_task(2, text,  # a ground-truth annotation wins
            {"created_at": "2024-01-02T00:00:00Z", "ground_truth": True, "result": [region(5, 7, "LC")]},
            {"created_at": "2024-01-03T00:00:00Z", "result": []}),
        label_studio_task(3, text, predictions=[{"result": [region(0, 3, "PS")], "score": 0.5}]),  # pre-annotated
        label_studio_task(4, text, {"was_cancelled": True, "result": [region(0, 3, "PS")]}),  # skipped
        label_studio_task(5, text, {"result": [region(0, 3, "PS"), {"type": "relation", "from_id": "a", "to_id": "b"},
                                               {"type": "choices", "value": {"choices": ["ok"]}}]}),
    ]  # fmt: skip
    path = write(tmp_path, "export.json", json.dumps(tasks, ensure_ascii=False))
    with pytest.warns(UserWarning, match="1 tasks without annotations were read from their predictions .* 1 tasks"):
        examples = read_examples(path)
    assert [(e["id"], e["entities"]) for e in examples] == [
        ("1", [(0, 3, "PS"), (5, 7, "LC")]), ("2", [(5, 7, "LC")]), ("3", [(0, 3, "PS")]), ("5", [(0, 3, "PS")])
    ]  # fmt: skip


def test_conll_words_docstart_columns_and_spaces(tmp_path):
    """CoNLL-2003 shape: space separated, tag in the last column, -DOCSTART-; words joined with single spaces."""
    path = write(tmp_path, "train.txt", "-DOCSTART- -X- -X- O\n\n김민준 NNP B-NP B-PS\n씨는 NNB I-NP O\n\n"
                 "서울 NNP B-NP B-LC\n특별시 NNG I-NP I-LC\n에서 JKB O O\n\n\n")  # fmt: skip
    assert read_examples(path) == [
        {"id": "0", "text": "김민준 씨는", "entities": [(0, 3, "PS")]},
        {"id": "1", "text": "서울 특별시 에서", "entities": [(0, 6, "LC")]},
    ]


@pytest.mark.parametrize(
    "tags, scheme",
    [
        (["I-PS", "I-PS", "O", "I-LC", "B-LC"], "iob1"),
        (["B-PS", "I-PS", "O", "B-LC", "B-LC"], "bio"),
        (["B-PS", "E-PS", "O", "S-LC", "S-LC"], "bioes"),
        (["B-PS", "L-PS", "O", "U-LC", "U-LC"], "bilou"),
    ],
)
def test_tag_schemes_are_detected_and_decoded(tmp_path, tags, scheme):
    assert detect_scheme([tags]) == scheme
    path = write(tmp_path, "s.conll", "".join(f"{w}\t{t}\n" for w, t in zip("가나다라마", tags, strict=True)))
    expected = [(0, 3, "PS"), (6, 7, "LC"), (8, 9, "LC")]  # "가 나 다 라 마": words joined with spaces
    assert read_examples(path, token_unit="word")[0]["entities"] == expected
    assert tags_to_spans(tags, scheme) == [(0, 2, "PS"), (3, 4, "LC"), (4, 5, "LC")]
    assert spans_to_tags(5, [(0, 2, "PS"), (3, 4, "LC"), (4, 5, "LC")], scheme) == tags


def test_conll_characters_with_space_lines_and_unit_detection(tmp_path):
    char_file = write(tmp_path, "c.conll", "김\tB-PS\n민\tI-PS\n \tO\n씨\tO\n\n")
    assert read_examples(char_file) == [{"id": "0", "text": "김민 씨", "entities": [(0, 2, "PS")]}]
    assert read_examples(char_file, "conll-char") == read_examples(char_file)
    no_spaces = write(tmp_path, "n.conll", "김\tB-PS\n민\tI-PS\n씨\tO\n\n")
    with pytest.raises(ValueError, match=r"n\.conll: every token is one character and none is a space"):
        read_examples(no_spaces)
    assert read_examples(no_spaces, "conll-char")[0]["text"] == "김민씨"
    assert read_examples(no_spaces, token_unit="word")[0]["text"] == "김 민 씨"


def test_conll_tokens_aligned_to_the_text_line(tmp_path):
    path = write(tmp_path, "t.conll", "# sent_id = a\n# text =  경찰은  A씨를\n경찰\tB-OG\n은\tO\nA\tB-PS\n씨를\tO\n\n")
    assert read_examples(path) == [{"id": "a", "text": " 경찰은  A씨를", "entities": [(1, 3, "OG"), (6, 7, "PS")]}]
    wrong = write(tmp_path, "w.conll", "# text = 경찰은\n경찰\tB-OG\n는\tO\n\n")
    with pytest.raises(ValueError, match=r"w\.conll:3: token '는' is not the text's next word"):
        read_examples(wrong)


def test_datasets_folder_with_words_and_a_text_column(tmp_path):
    features = Features({"id": Value("string"), "tokens": Sequence(Value("string")), "text": Value("string"),
                         "ner_tags": Sequence(ClassLabel(names=["O", "B-PRD", "I-PRD"]))})  # fmt: skip
    train = Dataset.from_list(
        [
            {
                "id": "x",
                "tokens": ["갤럭시", "S24", "를", "샀다"],
                "text": "갤럭시 S24를  샀다",
                "ner_tags": [1, 2, 0, 0],
            }
        ],
        features=features,
    )
    DatasetDict({"train": train, "validation": train}).save_to_disk(tmp_path / "hub")
    assert read_examples(tmp_path / "hub", split="train") == [
        {"id": "x", "text": "갤럭시 S24를  샀다", "entities": [(0, 7, "PRD")]}
    ]
    with pytest.raises(ValueError, match="name a split .*: it has train, validation"):
        read_examples(tmp_path / "hub")
    with pytest.raises(ValueError, match=r"\[validation\] row 0, token 1: token '갤럭시' is not the text's next word"):
        read_examples(tmp_path / "hub", "datasets", split="validation", text_column="id")


# Bad data: one line naming the file and line or record


@pytest.mark.parametrize(
    "name, content, tag_scheme, message",
    [
        ("a.jsonl", '{"text": "가나다", "label": [[1, 5, "PS"]]}\n', "auto",
         r"a\.jsonl:1: entity \(1, 5, 'PS'\) is outside the text's 3 characters"),
        ("a.jsonl", '\n{"text": "가나다", "label": [[1, 1, "PS"]]}\n', "auto",
         r"a\.jsonl:2: entity \(1, 1, 'PS'\) is empty"),
        ("a.jsonl", '{"text": "가나다", "label": [[0, 2, "PS"], [1, 3, "LC"]]}\n', "auto",
         r"a\.jsonl:1: entity \(1, 3, 'LC'\) overlaps entity \(0, 2, 'PS'\)"),
        ("a.jsonl", '{"text": "가나다"}\n', "auto", r"a\.jsonl:1: expected an object with a text and one list"),
        ("a.jsonl", '{"text": "가나다", "label": ["positive"]}\n', "auto", r"a\.jsonl:1: entity 'positive' is not"),
        ("a.conll", "김민준\tB-PS\n씨\tO\n\n서울\tO\n시\tI-LC\n", "auto", r"a\.conll:5: 'I-LC' does not continue a LC"),
        ("a.conll", "김민준\tB-PS\n씨\tX-PS\n", "auto", r"a\.conll:2: tag 'X-PS' is not O or B/I-TYPE"),
        ("a.conll", "김민준\tB-PS\n씨\tO\n", "bioes", r"a\.conll:2: 'O' comes before the PS entity is closed"),
        ("a.conll", "김민준\tB-PS\n씨\tI-PS\n", "bioes", r"a\.conll:2: the PS entity is not closed"),
        ("a.conll", "가\tB-PS\n나\tE-PS\n다\tL-PS\n", "auto", "the tags mix BIOES .* and BILOU"),
        ("a.conll", "가\tB-PS\n나\n", "auto", r"a\.conll:2: expected a token and its tag"),
        ("a.conll", "가나\tB-PS\n", "pos", "tag_scheme must be one of"),
    ],
)  # fmt: skip
def test_bad_data_is_a_clear_error(tmp_path, name, content, tag_scheme, message):
    with pytest.raises(ValueError, match=message):
        read_examples(write(tmp_path, name, content), tag_scheme=tag_scheme)


def test_label_studio_errors(tmp_path):
    two_labels = [
        label_studio_task(
            3, "가나다", {"result": [{"id": "r", "value": {"start": 0, "end": 1, "labels": ["PS", "LC"]}}]}
        )
    ]
    with pytest.raises(ValueError, match=r"ls\.json: task 1 \(id 3\): region 'r' has the labels \['PS', 'LC'\]"):
        read_examples(write(tmp_path, "ls.json", json.dumps(two_labels)))
    shifted = [label_studio_task(4, "😀 가나", {"result": [region(3, 5, "PS", "가나")]})]  # UTF-16 offsets
    with pytest.raises(ValueError, match=r"task 1 \(id 4\): region 'r3' \(3, 5\) is '나' in the text but '가나'"):
        read_examples(write(tmp_path, "ls.json", json.dumps(shifted)), "label-studio")


def test_writers_refuse_what_their_format_cannot_hold(tmp_path):
    line_break = make_example("1", "가\n나", [(0, 1, "PS")], "test")
    for data_format in ("conll", "conll-char", "klue"):
        with pytest.raises(ValueError, match=r"example 1 \(id '1'\): the text '가\\n나' holds a tab or line break"):
            write_examples([line_break], tmp_path / "out", data_format)
    space_edge = make_example("2", "가 나", [(1, 3, "PS")], "test")
    with pytest.raises(
        ValueError, match=r"example 1 \(id '2'\): entity \(1, 3, 'PS'\) ' 나' starts or ends with whitespace"
    ):
        write_examples([space_edge], tmp_path / "out.conll")
    mark_like = make_example("3", "<가:PS>", [], "test")
    with pytest.raises(ValueError, match="KLUE TSV cannot hold this text"):
        write_examples([mark_like], tmp_path / "out.tsv")
    assert not list(tmp_path.iterdir())  # nothing written by a refused write


# Entity types, labels, the project's rows


def test_entity_types_order_and_labels():
    examples = [make_example(0, "가나다라마", [(3, 4, "제품"), (0, 1, "QT"), (1, 2, "Drug"), (2, 3, "PS")], "test")]
    assert entity_types(examples) == ["PS", "QT", "Drug", "제품"]  # KLUE's in KLUE's order, then by code point
    assert entity_types(list(reversed(examples * 2))) == ["PS", "QT", "Drug", "제품"]
    assert bio_labels(["PRD", "PS"]) == ["B-PRD", "I-PRD", "B-PS", "I-PS", "O"]
    with pytest.raises(ValueError, match="distinct non-empty"):
        bio_labels(["PS", "PS"])


def test_examples_to_dataset_labels_by_name():
    examples = [make_example("a", "갤럭시 폰", [(0, 5, "PRD")], "test")]
    dataset = examples_to_dataset(examples)
    assert label_names(dataset) == ["B-PRD", "I-PRD", "O"]
    assert [label_names(dataset)[i] for i in dataset[0]["ner_tags"]] == ["B-PRD"] + ["I-PRD"] * 4  # the space: I-
    with pytest.raises(ValueError, match="'B-PRD' is not in the label set"):
        examples_to_dataset(examples, KLUE_LABELS)


def test_examples_train_through_the_project_alignment(tmp_path):
    """`examples_to_dataset` feeds `data.tokenize_and_align`: each character unit's label is its character's tag."""
    examples = [make_example("a", "갤럭시 S24를 김민준이 샀다", [(0, 7, "PRD"), (9, 12, "PS")], "test")]
    tokenizer = character_tokenizer(tmp_path, examples[0]["text"])
    config = tiny_model(tokenizer.vocab_size, labels=bio_labels(entity_types(examples)), max_length=64).config
    rows = tokenize_and_align(examples_to_dataset(examples), tokenizer, config).to_list()
    char_tags = examples_to_klue_rows(examples)[0]["ner_tags"]
    expected = [config.label2id[tag] for char, tag in zip(examples[0]["text"], char_tags, strict=True) if char != " "]
    assert [row["labels"] for row in rows] == [expected]


def test_convert_refuses_its_input_as_output(tmp_path):
    path = write(tmp_path, "a.jsonl", '{"text": "가", "entities": []}\n')
    with pytest.raises(ValueError, match="is the input file"):
        convert(path, path)
    assert convert(path, tmp_path / "a.conll") == 1
    assert read_examples(tmp_path / "a.conll") == read_examples(path)


# Closing the annotation loop: predictions read back as training data


@pytest.fixture(scope="module")
def predicting_pipeline(tmp_path_factory) -> KoElectraCrfTokenClassificationPipeline:
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path_factory.mktemp("predict"))
    model = tiny_model(tokenizer.vocab_size, labels=bio_labels(["PRD", "PS"]))
    with torch.no_grad():  # a random head that predicts a few entities
        model.classifier.bias.copy_(torch.tensor([0.6, 0.3, 0.5, 0.2, 0.0]))
    return KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)


@pytest.mark.parametrize("output_format", WRITE_FORMATS)
def test_predictions_read_back_as_training_data(predicting_pipeline, tmp_path, output_format):
    texts = [TINY_TEXT, "서울에서 삼성전자 사과를 샀다", unicodedata.normalize("NFD", "김철수는 서울에서")]
    results = predicting_pipeline(texts, aggregation_strategy="simple")
    assert any(results)  # the test needs entities
    path = tmp_path / f"predictions{SUFFIX[output_format]}"
    write_predictions(texts, results, path, output_format)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = read_examples(path, READ_AS.get(output_format, "auto"))
    if output_format == "label-studio":  # pre-annotations, not annotations: read, and said so
        assert "3 tasks without annotations were read from their predictions" in str(caught[0].message)
    for text, entities, example in zip(texts, results, examples, strict=True):
        nfc, char_spans = nfc_with_offsets(text)
        starts = {start: i for i, (start, _) in enumerate(char_spans)}
        ends = {end: i + 1 for i, (_, end) in enumerate(char_spans)}
        assert example["text"] == nfc
        assert example["entities"] == [(starts[e["start"]], ends[e["end"]], e["entity_group"]) for e in entities]
    if output_format == "label-studio":
        task = json.loads(path.read_text(encoding="utf-8"))[0]
        scores = [region["value"]["score"] for region in task["predictions"][0]["result"]]
        assert scores == [entity["score"] for entity in results[0]]
        assert task["predictions"][0]["score"] == min(scores)
