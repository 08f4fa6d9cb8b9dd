"""The one reader of input texts (`inputs.read_records`): its formats and their ids, `auto`, line endings, what it
refuses, its imports; and `inputs.tagged_records`, the one way texts stream through the pipeline."""

import ast
import re
import sys
from pathlib import Path

import pytest

from koelectra_crf import inputs, options, usage
from koelectra_crf.inputs import TextRecord, detect_input_format, read_records
from koelectra_crf.usage import UsageError

KLUE_FILE = (
    "## 토큰, 레이블 구분자 : \\t\n"
    "## g-1\t<김철:PS> 씨\n김\tB-PS\n철\tI-PS\n \tO\n씨\tO\n\n"
    "## g-2\t서울\n서\tO\n울\tO\n"
)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("a.jsonl", '{"text": "김철수"}\n', "jsonl"),
        ("a.tsv", "김철수\n", "tsv"),
        ("a.txt", "\n  \nid-1\t김철수\n", "tsv"),  # a tab in the first non-blank line
        ("a.txt", "김철수\nid-2\t서울\n", "text"),  # the first non-blank line decides
        ("a.tsv", KLUE_FILE, "klue"),
        ("a.txt", KLUE_FILE, "klue"),
        ("a", "김철수\n", "text"),
    ],
)
def test_auto_tells_the_format_by_extension_and_content(tmp_path, name, content, expected):
    (tmp_path / name).write_text(content, encoding="utf-8")
    assert detect_input_format(tmp_path / name) == expected


def test_each_format_gives_its_texts_in_order_with_their_ids(tmp_path):
    (tmp_path / "a.txt").write_text("김철수\n\n  \nid\t서울\n", encoding="utf-8")
    assert list(read_records(tmp_path / "a.txt")) == [("line-1", "김철수"), ("line-4", "id\t서울")]

    # A byte order mark, \r\n and \r line ends; a line without a tab; a blank text; a tab inside the text.
    tsv = "\ufeffid-1\t김철수\r\n서울에서\r\rid-4\t \nid-5\t만났다\t오늘\n"
    (tmp_path / "a.tsv").write_text(tsv, encoding="utf-8", newline="")
    assert list(read_records(tmp_path / "a.tsv")) == [
        ("id-1", "김철수"),
        ("line-2", "서울에서"),
        ("id-5", "만났다\t오늘"),
    ]

    jsonl = '{"id": "a", "text": "김철수"}\n\n{"id": 7, "text": "서울"}\n{"text": "부산"}\n{"id": null, "text": ""}\n'
    (tmp_path / "a.jsonl").write_text(jsonl, encoding="utf-8")
    assert list(read_records(tmp_path / "a.jsonl")) == [
        ("a", "김철수"),
        (7, "서울"),
        ("line-4", "부산"),
        ("line-5", ""),
    ]

    (tmp_path / "klue.tsv").write_text(KLUE_FILE, encoding="utf-8")
    assert list(read_records(tmp_path / "klue.tsv")) == [("g-1", "김철 씨"), ("g-2", "서울")]
    assert inputs.read_texts(tmp_path / "klue.tsv", limit=1) == ["김철 씨"]


@pytest.mark.parametrize(
    "line, message",
    [
        ("김철수", 'expected a JSON object with a "text" string'),
        ('["김철수"]', 'expected a JSON object with a "text" string'),
        ('{"text": 3}', 'expected a JSON object with a "text" string'),
        ('{"id": [1], "text": "김철수"}', '"id" must be a string or an integer, got [1]'),
        ('{"id": true, "text": "김철수"}', '"id" must be a string or an integer, got True'),
    ],
)
def test_a_bad_jsonl_line_is_refused_by_file_and_line(tmp_path, line, message):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "서울"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(UsageError, match=re.escape(f"{path}:3: {message}")):
        list(read_records(path))


def test_an_unknown_format_is_refused_before_reading(tmp_path):
    with pytest.raises(ValueError, match=r"input_format must be one of \('auto', 'text', 'tsv', 'jsonl', 'klue'\)"):
        read_records(tmp_path / "missing.csv", "csv")


def top_level_imports(module) -> set[str]:
    """The modules a module imports when it is imported (its top-level import statements)."""
    imported = set()
    for node in ast.parse(Path(module.__file__).read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    return imported


def test_the_reader_imports_the_standard_library_only():
    """A command line reads its input before it needs torch: the reader and what it imports import nothing but the
    standard library (a KLUE TSV file is parsed by `data`, imported when one is read)."""

    def outside_the_standard_library(module) -> set[str]:
        return {name for name in top_level_imports(module) if name.split(".")[0] not in sys.stdlib_module_names}

    assert outside_the_standard_library(inputs) == {"koelectra_crf.options", "koelectra_crf.usage"}
    assert outside_the_standard_library(options) == outside_the_standard_library(usage) == set()


def test_tagged_records_pairs_each_record_with_its_result_as_the_pipeline_streams():
    read = []

    def pipeline(texts, batch_size, **pipeline_kwargs):
        assert (batch_size, pipeline_kwargs) == (2, {"aggregation_strategy": "simple"})
        for text in texts:
            read.append(text)
            yield len(text)

    records = [TextRecord("a", "김"), TextRecord("b", "서울")]
    tagged = inputs.tagged_records(pipeline, iter(records), 2, aggregation_strategy="simple")
    assert next(tagged) == (records[0], 1)
    assert read == ["김"]  # the second text is read when its result is asked for
    assert list(tagged) == [(records[1], 2)]
