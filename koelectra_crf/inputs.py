"""Input texts: the one reader of the raw texts that `predict`, `pseudo-label`, `benchmark` and `adapt` read, and the
one way to stream them through the pipeline ([`tagged_records`]).

[`read_records`] gives each text with its id, in file order, as they are asked for (a KLUE TSV file, which
`data.read_klue_tsv` reads and checks whole, is held whole). Formats (`input_format`):

- `text`: one text per line; its id is `line-<number>` (the line's number in the file, blank lines counted).
- `tsv`: `<id>\\t<text>` lines, such as KLUE's raw `klue-ner-train-sentences.tsv` (the text is what follows the first
  tab); a line without a tab is a text of its own, with the id `line-<number>`.
- `jsonl`: one JSON object per line with a `"text"` string and optionally an `"id"` (a string or an integer, kept as
  it is; `line-<number>` without one, or with `null`).
- `klue`: a KLUE NER TSV file (`## <guid>\\t<marked sentence>` headers, a `CHAR\\tTAG` line per character): its
  sentences, their guids as ids.
- `auto` ([`detect_input_format`]): `jsonl` for a `.jsonl` file; `klue` for a file whose first line starts with `## `;
  `tsv` for a `.tsv` file or one whose first non-blank line holds a tab; `text` otherwise (`text` keeps a line's
  tabs in its text).

Lines end at `\\n`, `\\r\\n` or `\\r`, not at the other characters `str.splitlines` breaks at (such as U+2028, which a
JSON string may hold as it is). Blank lines, and `tsv` lines whose text is blank, are skipped. A file must be UTF-8 (a
byte order mark is fine). What the reader refuses is a one-line `UsageError` that starts with `file:line:`.

This module imports the standard library only (a KLUE TSV file is parsed by `data`, imported when one is read), so
that a command line can read its input before loading torch.
"""

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice, tee
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from koelectra_crf.options import INPUT_FORMATS
from koelectra_crf.usage import UsageError

if TYPE_CHECKING:
    from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline

LINE_FORMATS = ("text", "tsv", "jsonl")
"""The formats read line by line, as they are asked for."""

KLUE_HEADER_PREFIX = "## "


class TextRecord(NamedTuple):
    """One input text and its id (see the module docstring for the ids of each format)."""

    id: str | int
    text: str


def read_records(path: str | Path, input_format: str = "auto") -> Iterator[TextRecord]:
    """The texts of an input file with their ids, in order, read as they are asked for (see the module docstring)."""
    path = Path(path)
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if input_format == "auto":
        input_format = detect_input_format(path)
    if input_format == "klue":
        from koelectra_crf.data import read_klue_tsv  # datasets and torch: only for the format that needs them

        return (TextRecord(sentence["guid"], sentence["sentence"]) for sentence in read_klue_tsv(path))
    return _read_lines(path, input_format)


def _read_lines(path: Path, input_format: str) -> Iterator[TextRecord]:
    with open(path, encoding="utf-8-sig") as file, utf8_required(path):
        yield from line_records(file, str(path), input_format)


def line_records(lines: Iterable[str], source: str, input_format: str = "text") -> Iterator[TextRecord]:
    """The records of `lines` in a line format (`text`, `tsv` or `jsonl`): lines of a file or of standard input
    opened as text (universal newlines), `source` naming them in errors (`source:line`)."""
    if input_format not in LINE_FORMATS:
        raise ValueError(f"input_format must be one of {LINE_FORMATS}, got {input_format!r}")
    for number, line in enumerate(lines, start=1):
        line = line.rstrip("\n")  # universal newlines: every line break reads as "\n"
        if not line.strip():
            continue
        if input_format == "jsonl":
            yield _json_record(line, f"{source}:{number}", f"line-{number}")
            continue
        record_id, tab, text = line.partition("\t")
        if input_format == "text" or not tab:
            yield TextRecord(f"line-{number}", line)
        elif text.strip():
            yield TextRecord(record_id, text)


def _json_record(line: str, where: str, default_id: str) -> TextRecord:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise UsageError(f'{where}: expected a JSON object with a "text" string, got {line[:200]!r}')
    record_id = default_id if record.get("id") is None else record["id"]
    if not isinstance(record_id, str | int) or isinstance(record_id, bool):
        raise UsageError(f'{where}: "id" must be a string or an integer, got {record_id!r}')
    return TextRecord(record_id, record["text"])


def count_records(path: str | Path, input_format: str = "auto") -> int:
    """How many records [`read_records`] gives, checking the whole input on the way (a bad line fails before any
    tagging)."""
    return sum(1 for _ in read_records(path, input_format))


def read_texts(path: str | Path, limit: int | None = None, input_format: str = "auto") -> list[str]:
    """The texts of the first `limit` records (all when None) of an input file, without their ids."""
    return [record.text for record in islice(read_records(path, input_format), limit)]


def detect_input_format(path: str | Path) -> str:
    """The format `input_format="auto"` reads a file as (see the module docstring)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return "jsonl"
    if is_klue_tsv(path):
        return "klue"
    with open(path, encoding="utf-8-sig") as file, utf8_required(path):
        first_text_line = next((line for line in file if line.strip()), "")
    return "tsv" if path.suffix == ".tsv" or "\t" in first_text_line else "text"


def is_klue_tsv(path: str | Path) -> bool:
    """Whether `path` looks like a KLUE NER TSV file: its first line a `## ` comment or sentence header."""
    with open(path, encoding="utf-8-sig") as file, utf8_required(path):
        return file.readline().startswith(KLUE_HEADER_PREFIX)


def tagged_records(
    ner: "KoElectraCrfTokenClassificationPipeline", records: Iterable[TextRecord], batch_size: int, **pipeline_kwargs
) -> Iterator[tuple[TextRecord, Any]]:
    """Each record with the pipeline's output for its text (`pipeline_kwargs`, e.g. `aggregation_strategy`, go to
    the pipeline), in order, as the pipeline produces them: it reads a few batches ahead of what is taken."""
    records, to_tag = tee(records)
    # A generator makes the pipeline stream its results in order (a list would come back only once all are done).
    results = ner((record.text for record in to_tag), batch_size=batch_size, **pipeline_kwargs)
    return zip(records, results, strict=True)


def refuse_input_as_output(input_path: str | Path, output: Path) -> None:
    """Raise when `output` is the file `input_path` (or a link to it): a command writing there would lose its input."""
    if output.exists() and output.samefile(input_path):
        raise UsageError(f"--output {output} is the input file: choose another --output")


@contextmanager
def utf8_required(path: str | Path, error: type[UsageError] = UsageError) -> Iterator[None]:
    """Turn a decoding error while reading the text file `path` into an `error` that names the file and line and
    says how to convert it (Korean text often comes in CP949)."""
    try:
        yield
    except UnicodeDecodeError:
        # The reader decodes in blocks: find the first bad line. A line break never falls inside a UTF-8 character,
        # so lines decode on their own.
        with open(path, "rb") as file:
            for line_no, line in enumerate(file, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    raise error(
                        f"{path}:{line_no}: not UTF-8 (byte {line[bad.start]:#04x}); the file must be UTF-8, convert "
                        "it first (e.g. `iconv -f cp949 -t utf-8` for a legacy Korean encoding)"
                    ) from None
        raise
