"""Labelled NER data in the formats of annotation tools and corpora: read into one shape, written back, converted.

Every reader gives *examples*: `{"id": str, "text": str, "entities": [(start, end, type), ...]}`, the text in Unicode
NFC and the entities sorted, non-empty, non-overlapping character spans of it (end exclusive). A text given in NFD
(decomposed Hangul) is composed with its spans mapped exactly (`alignment.nfc_with_offsets`); a span that would cut
a composed character is an error. Bad data is a one-line `ValueError` naming the file and the line or record: a
span out of range, empty or overlapping another (nested entities cannot be tagged in BIO), an unknown tag or tag
scheme, tags that break their scheme. Nothing is fixed silently.

Formats (`data_format`; `"auto"` decides by the file's extension and content, see [`detect_format`]):

- `jsonl`: one JSON object per line, `{"id", "text", "entities": [{"start", "end", "label"}]}`; what [`write_examples`]
  writes and what `predict` writes (its entities' `entity_group` is read as the label). The same reader takes the
  `doccano` exports: `{"text", "label": [[start, end, "TYPE"], ...]}`, the `labels` variant, and `entities` holding
  `{"start_offset", "end_offset", "label"}`; and a `.json` file holding a list of such records. A record needs one
  of `label`, `labels`, `entities` (an empty list for a text without entities): a bare `{"text"}` is refused, not
  read as a text without entities.
- `doccano`: read as `jsonl`; written as doccano imports it, `{"id", "text", "label": [[start, end, "TYPE"]]}`.
- `label-studio`: a Label Studio JSON export, a list of tasks `{"id", "data": {"text"}, "annotations": [{"result":
  [{"value": {"start", "end", "labels": ["TYPE"]}}]}]}`. Of a task's annotations, cancelled (`was_cancelled`) and
  skipped ones are dropped; of the rest, a `ground_truth` one is used if there is one, else the last created
  (`created_at`, then order in the list; Label Studio's converter orders them by `created_at` too). A task without
  any annotation is read from its `predictions` (pre-annotations, chosen the same way), one with only cancelled
  annotations is skipped; both are counted in a warning. Only results with `value.labels` are spans (relations and
  choices are not entities); a region with several labels is an error, and so is one whose `value.text` is not the
  text at its offsets (offsets in another unit, e.g. UTF-16 from an old Label Studio version). Written tasks use
  Label Studio's default NER template names (`from_name="label"`, `to_name="text"`).
- `conll`, `conll-char`: column files, one token and its tag per line (tab separated, or space separated for
  tokens without spaces; the token in the first column, the tag in the last), a blank line between sentences,
  `-DOCSTART-` lines ignored, CoNLL-U's comment lines (a tab-free `# key = value` line) before a sentence read
  (`# sent_id` is its id, `# text` its text; other keys are ignored). The tokens of a sentence with a `# text`
  line are aligned in order to it (only whitespace between them); without one, words (`conll`) are joined with
  single spaces and characters (`conll-char`, a space is a token of its own: `" \\tO"`) as they are.
  `token_unit="auto"` reads characters when every token is one character and some token is whitespace, words when
  some token is longer, and refuses to guess otherwise. Writers write `# sent_id` and `# text` and tab-separated
  columns, so that any text reads back exactly: words are the text's whitespace-separated pieces, cut where an
  entity starts or ends (`경찰` `은` for `<경찰:OG>은`); an entity that starts or ends with whitespace has no word to
  carry it (an error: use `conll-char`).
- `klue`: KLUE NER TSV (`data.read_klue_tsv(any_tags=True)`: any `B-X`/`I-X` tags, BIO, a space inside an entity
  tagged `I-` as KLUE does). An `I-X` that does not follow `X` (kept and counted in a warning by the reader) starts
  an entity, as the metrics read it.
- `datasets`: a local `Dataset`/`DatasetDict` folder (`save_to_disk`) or a Hub dataset (`config_name`, `split`), as
  run_ner's `--dataset_name`/`--dataset_config_name`: `tokens` and `ner_tags` (`ClassLabel` ids or tag strings),
  optionally `id` (or `guid`, as in this project's splits) and an original-text column (`text_column`, default
  `text` when there is one) that the tokens are aligned to; without it tokens are joined as in `conll`
  (`token_unit`). Not written (`examples_to_dataset(...).save_to_disk(...)` makes one).

Tag schemes (`tag_scheme`) of the tag-based formats (`conll`, `conll-char`, `datasets`): `bio` (IOB2), `iob1`, `bioes`
and `bilou`; `"auto"` picks BIOES or BILOU by their `E-`/`S-` or `L-`/`U-` tags, IOB1 when entities start with `I-`
and none with `B-`, else BIO (where no entity starts with `I-`, IOB1 and BIO read the same spans; where some do and
others start with `B-`, reading them as BIO fails at the first `I-` that starts one). KLUE TSV is BIO.

Writers ([`write_examples`], [`convert`], [`write_predictions`]) check everything before writing a byte. A line-based
file (`conll`, `conll-char`, `klue`) cannot hold a tab or line break in an id, text or type; KLUE TSV cannot hold an
empty text or one with `<...:TYPE>` in it (its header would read it as a mark). Reading back what was written gives
the same examples.

Entity types and labels: [`entity_types`] (a stable order), [`bio_labels`] (for `KoElectraCrfConfig(labels=...)`);
[`examples_to_klue_rows`] and [`examples_to_dataset`] give the rows and `Dataset` the rest of the project reads.
"""

import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, load_dataset, load_from_disk

from koelectra_crf.alignment import OUTSIDE, char_tags_to_spans, nfc_with_offsets, spans_to_char_tags
from koelectra_crf.bulk import output_line
from koelectra_crf.configuration_koelectra_crf import ENTITY_TYPES
from koelectra_crf.data import (
    klue_features,
    load_klue_ner,
    mark_entities,
    read_klue_tsv,
    strip_entity_marks,
    tags_to_ids,
)
from koelectra_crf.inputs import is_klue_tsv, refuse_input_as_output, utf8_required
from koelectra_crf.options import READ_FORMATS, TAG_SCHEMES, TOKEN_UNITS, WRITE_FORMATS
from koelectra_crf.usage import UsageError

# What `output_format="auto"` writes for an extension (doccano's JSONL must be named: `.jsonl` is ours).
_OUTPUT_BY_SUFFIX = {".jsonl": "jsonl", ".json": "label-studio", ".conll": "conll", ".tsv": "klue"}
_COLUMN_SUFFIXES = (".conll", ".bio", ".iob", ".bioes", ".bilou", ".txt", ".tsv")
_SCHEME_PREFIXES = {"bio": "BI", "iob1": "BI", "bioes": "BIES", "bilou": "BILU"}
_COMMENT = re.compile(r"# (\S[^=\t]*?) = (.*)")  # CoNLL-U's `# key = value` (a tab-free line)
_LINE_BREAKING = re.compile(r"[\t\n\r]")  # what a line of a column or KLUE file cannot hold

Span = tuple[int, int, str]


def make_example(example_id, text: str, entities: Iterable, where: str) -> dict:
    """An example from a text and its entities (`(start, end, type)` spans of `text`), checked and in NFC.

    `where` names the record in error messages (e.g. `"train.jsonl:12"`).
    """
    if not isinstance(text, str):
        raise ValueError(f"{where}: expected a text string, found {str(text)[:60]!r}")
    spans = []
    for entity in entities:
        offsets = entity[:2] if isinstance(entity, (tuple, list)) and len(entity) == 3 else ()
        if not (all(isinstance(o, int) and not isinstance(o, bool) for o in offsets) and isinstance(entity[2], str)):
            raise ValueError(f"{where}: entity {entity!r} is not (start, end, type) with integer offsets")
        start, end, label_type = entity
        if not label_type or start >= end:
            raise ValueError(f"{where}: entity {entity!r} is empty (or has an empty type)")
        if not 0 <= start < end <= len(text):
            raise ValueError(f"{where}: entity {entity!r} is outside the text's {len(text)} characters")
        spans.append((start, end, label_type))
    spans.sort()
    for before, after in zip(spans, spans[1:], strict=False):
        if after[0] < before[1]:
            raise ValueError(f"{where}: entity {after!r} overlaps entity {before!r} (BIO tags cannot nest entities)")
    nfc_text, char_spans = nfc_with_offsets(text)
    starts = {start: i for i, (start, _) in enumerate(char_spans)}
    ends = {end: i + 1 for i, (_, end) in enumerate(char_spans)}
    for start, end, label_type in spans:
        if start not in starts or end not in ends:
            raise ValueError(f"{where}: entity {(start, end, label_type)!r} cuts a character that NFC composes")
    entities = [(starts[start], ends[end], label_type) for start, end, label_type in spans]
    return {"id": str(example_id), "text": nfc_text, "entities": entities}


def entity_types(examples: Iterable[dict]) -> list[str]:
    """The entity types of `examples`: KLUE's (PS, LC, OG, DT, TI, QT) in KLUE's order, then the others sorted by code
    point. The order depends on the set of types only (not on the order or number of examples), and data with
    KLUE's types gets `KLUE_LABELS` from [`bio_labels`]: the published model's label ids."""
    found = {label_type for example in examples for _, _, label_type in example["entities"]}
    return [t for t in ENTITY_TYPES if t in found] + sorted(found - set(ENTITY_TYPES))


def bio_labels(types: Iterable[str]) -> list[str]:
    """The BIO label list of entity types, for `KoElectraCrfConfig(labels=...)`: `B-` and `I-` of each type in the
    given order, then `O` (as `KLUE_LABELS` orders them)."""
    types = list(types)
    if len(set(types)) != len(types) or not all(isinstance(t, str) and t for t in types):
        raise ValueError(f"entity types must be distinct non-empty strings, got {types}")
    return [f"{prefix}-{label_type}" for label_type in types for prefix in "BI"] + [OUTSIDE]


def examples_to_klue_rows(examples: Iterable[dict]) -> list[dict]:
    """The rows `data.read_klue_tsv` gives: `guid`, `sentence`, `tokens` (the characters, spaces included) and
    `ner_tags` (BIO tag names per character; a space inside an entity is `I-`, as in KLUE)."""
    return [
        {
            "guid": example["id"],
            "sentence": example["text"],
            "tokens": list(example["text"]),
            "ner_tags": spans_to_char_tags(len(example["text"]), example["entities"]),
        }
        for example in examples
    ]


def examples_to_dataset(examples: list[dict], labels: list[str] | None = None) -> Dataset:
    """The `Dataset` that `data.load_klue_ner` gives for a split (`guid`, `sentence`, `tokens`, `ner_tags` as ids of
    a `ClassLabel` over `labels`, by default `bio_labels(entity_types(examples))`), for `data.tokenize_and_align`."""
    labels = bio_labels(entity_types(examples)) if labels is None else list(labels)
    label2id = {label: i for i, label in enumerate(labels)}
    rows = examples_to_klue_rows(examples)
    for row in rows:
        row["ner_tags"] = tags_to_ids(row["ner_tags"], label2id)
    return Dataset.from_list(rows, features=klue_features(labels))


def load_split(source: str | Path, flag: str, data_format: str = "auto", **read_options) -> Dataset:
    """One split of labelled data in any format, as the commands and the training read it (`data.load_klue_ner`'s
    features). A KLUE TSV file of KLUE's types is read as it always was (`data.load_klue_ner`: `ner_tags` over all of
    `KLUE_LABELS`); any other data through [`read_examples`] (`read_options`) and [`examples_to_dataset`], its labels
    those of its own types ([`entity_types`]). Labels travel by name, so splits of either kind go together. Data it
    cannot read is a `UsageError` naming `flag` (e.g. `--test_file`)."""
    try:
        data_format = detect_format(source) if data_format == "auto" else data_format
        examples = read_examples(source, data_format, **read_options)
        if data_format == "klue" and set(entity_types(examples)) <= set(ENTITY_TYPES):
            return load_klue_ner(test_file=source)["test"]
        return examples_to_dataset(examples)
    except UsageError:
        raise
    except (ValueError, OSError) as error:  # the readers' one-line errors name the file and the record
        raise UsageError(f"{flag} {source}: {str(error).splitlines()[0]}") from error


# Tag schemes


def _split_tag(tag: str, scheme: str, where: str) -> tuple[str, str | None]:
    """(prefix, type) of a tag, BILOU's L and U read as BIOES's E and S; ("O", None) for `O`."""
    if tag == OUTSIDE:
        return OUTSIDE, None
    prefix, dash, label_type = tag.partition("-")
    if not (dash and label_type and len(prefix) == 1 and prefix in _SCHEME_PREFIXES[scheme]):
        prefixes = "/".join(_SCHEME_PREFIXES[scheme])
        raise ValueError(f"{where}: tag {tag!r} is not O or {prefixes}-TYPE (tag scheme {scheme.upper()})")
    return {"L": "E", "U": "S"}.get(prefix, prefix), label_type


def _scheme_error(scheme: str, prefix: str, label_type: str | None, current: str | None) -> str | None:
    """Why a tag of `prefix`/`label_type` cannot come after an open entity of type `current` (None: none open)."""
    inside = current is not None and current == label_type
    closing = scheme in ("bioes", "bilou")
    if prefix in "IE" and not inside and not (scheme == "iob1" and prefix == "I"):
        return f"does not continue a {label_type} entity"
    if prefix == "B" and scheme == "iob1" and not inside:
        return f"does not follow a {label_type} entity (IOB1 starts entities with I-; B- separates two of a type)"
    if closing and current is not None and not (prefix in "IE" and inside):
        return f"comes before the {current} entity is closed (by E-/L-)"
    return None


def tags_to_spans(tags: list[str], scheme: str = "bio", where: list[str] | None = None) -> list[Span]:
    """(start, end, type) token spans of a tag sequence in `scheme` (`bio`, `iob1`, `bioes`, `bilou`).

    Tags that break the scheme (an `I-X` after `O` in BIO, an entity left open in BIOES, ...) are an error naming
    the tag's place, `where[i]` (default `tag i+1`).
    """
    where = where or [f"tag {i + 1}" for i in range(len(tags))]
    spans: list[Span] = []
    start, current = 0, None  # the entity being read: its first token and type
    for i, tag in enumerate(tags):
        prefix, label_type = _split_tag(tag, scheme, where[i])
        error = _scheme_error(scheme, prefix, label_type, current)
        if error:
            raise ValueError(f"{where[i]}: {tag!r} {error} (tag scheme {scheme.upper()})")
        if current is not None and (prefix in "OBS" or current != label_type):
            spans.append((start, i, current))
            current = None
        if prefix != OUTSIDE and current is None:
            start, current = i, label_type
        if prefix in "ES":
            spans.append((start, i + 1, current))
            current = None
    if current is not None:
        if scheme in ("bioes", "bilou"):
            raise ValueError(
                f"{where[-1]}: the {current} entity is not closed (by E-/L-) (tag scheme {scheme.upper()})"
            )
        spans.append((start, len(tags), current))
    return spans


def spans_to_tags(length: int, spans: Iterable[Span], scheme: str = "bio") -> list[str]:
    """The tags of `length` tokens with entities at the (start, end, type) token spans, in `scheme`."""
    tags = [OUTSIDE] * length
    last, single = {"bioes": ("E", "S"), "bilou": ("L", "U")}.get(scheme, ("I", "B"))
    previous_end, previous_type = None, None
    for start, end, label_type in sorted(spans):
        first = "B"
        if scheme == "iob1" and not (previous_end == start and previous_type == label_type):
            first = "I"
        tags[start:end] = [f"{first}-{label_type}"] + [f"I-{label_type}"] * (end - start - 1)
        if scheme in ("bioes", "bilou"):
            tags[end - 1] = f"{single if end - start == 1 else last}-{label_type}"
        previous_end, previous_type = end, label_type
    return tags


def detect_scheme(sequences: list[list[str]]) -> str:
    """The tag scheme of tag sequences (see the module docstring): `bioes`, `bilou`, `iob1` or `bio`."""
    prefixes = {tag.partition("-")[0] for tags in sequences for tag in tags if tag != OUTSIDE}
    if prefixes & {"E", "S"} and prefixes & {"L", "U"}:
        raise ValueError("the tags mix BIOES (E-, S-) and BILOU (L-, U-): give the tag scheme")
    if prefixes & {"E", "S"} or prefixes & {"L", "U"}:
        return "bioes" if prefixes & {"E", "S"} else "bilou"
    starts = set()  # the prefixes that begin an entity somewhere
    for tags in sequences:
        for previous, tag in zip([OUTSIDE, *tags], tags, strict=False):
            if tag != OUTSIDE and previous.partition("-")[2] != tag.partition("-")[2]:
                starts.add(tag.partition("-")[0])
    return "iob1" if starts == {"I"} else "bio"


# Readers


def detect_format(source: str | Path) -> str:
    """The data format of a file, folder or Hub name, for `data_format="auto"`: a folder, or a name that is no file
    and has no file extension, is `datasets`; `.jsonl` is `jsonl` (doccano's exports included); `.json` is
    `label-studio` when its first record has `data`, else `jsonl`; a file whose first line starts with `## ` is
    `klue`; `.conll`, `.txt`, `.tsv` and the other column extensions are `conll` (the token unit is detected)."""
    path = Path(source)
    if path.is_dir() or (not path.exists() and not path.suffix):
        return "datasets"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".jsonl":
        return "jsonl"
    if path.suffix == ".json":
        records = _load_json(path)
        return "label-studio" if records and isinstance(records[0], dict) and "data" in records[0] else "jsonl"
    if is_klue_tsv(path):
        return "klue"
    if path.suffix.lower() in _COLUMN_SUFFIXES:
        return "conll"
    raise ValueError(f"{path}: cannot tell the data format from the extension {path.suffix!r}: give data_format")


def read_examples(
    source: str | Path,
    data_format: str = "auto",
    *,
    tag_scheme: str = "auto",
    token_unit: str = "auto",
    text_column: str | None = None,
    config_name: str | None = None,
    split: str | None = None,
) -> list[dict]:
    """The examples of labelled data in any of the formats of the module docstring.

    Args:
        source: a file, a `datasets` folder or a Hub dataset name.
        data_format: one of `READ_FORMATS`; `"auto"`: [`detect_format`].
        tag_scheme: the tag scheme of `conll`, `conll-char` and `datasets` data (`TAG_SCHEMES`; `"auto"` detects it).
        token_unit: `"word"` or `"char"` tokens for `conll` and `datasets` (`"auto"` detects it; `conll-char` is
            `conll` with `"char"`).
        text_column, config_name, split: for `datasets` (the split may be left out when there is one).
    """
    for name, value, allowed in (
        ("data_format", data_format, READ_FORMATS),
        ("tag_scheme", tag_scheme, TAG_SCHEMES),
        ("token_unit", token_unit, TOKEN_UNITS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    data_format = detect_format(source) if data_format == "auto" else data_format
    if data_format == "datasets":
        return _read_datasets(str(source), config_name, split, text_column, token_unit, tag_scheme)
    if data_format in ("jsonl", "doccano"):
        return [_record_example(record, where, index) for index, (where, record) in enumerate(_records(source))]
    if data_format == "label-studio":
        return _read_label_studio(Path(source))
    if data_format == "klue":
        if tag_scheme not in ("auto", "bio"):
            raise ValueError(f"{source}: KLUE TSV is BIO, not {tag_scheme.upper()}")
        rows = read_klue_tsv(source, any_tags=True)
        return [
            make_example(row["guid"], row["sentence"], char_tags_to_spans(row["ner_tags"]), f"{source}: {row['guid']}")
            for row in rows
        ]
    unit = "char" if data_format == "conll-char" else token_unit
    return _read_columns(Path(source), unit, tag_scheme)


def _load_json(path: Path):
    with open(path, encoding="utf-8-sig") as file, utf8_required(path):
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def _records(source: str | Path) -> Iterator[tuple[str, object]]:
    """(place, record) of every record of a JSONL file (`path:line`) or of a `.json` list (`path: record n`)."""
    path = Path(source)
    if path.suffix == ".json":
        records = _load_json(path)
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON list of records, found a {type(records).__name__}")
        yield from ((f"{path}: record {n}", record) for n, record in enumerate(records, start=1))
        return
    with open(path, encoding="utf-8-sig") as file, utf8_required(path):
        for number, line in enumerate(file, start=1):
            if line.strip():
                try:
                    yield f"{path}:{number}", json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not a JSON object ({error.msg}): {line[:100]!r}") from None


def _record_example(record, where: str, index: int) -> dict:
    """An example from a JSONL (our own, `predict`'s or doccano's) record."""
    keys = [key for key in ("entities", "label", "labels") if isinstance(record, dict) and key in record]
    if len(keys) != 1 or not isinstance(record[keys[0]], list):
        raise ValueError(
            f"{where}: expected an object with a text and one list of entities (`entities`, doccano's `label` or "
            f"`labels`), found {str(record)[:100]}"
        )
    spans = []
    for entity in record[keys[0]]:
        if isinstance(entity, dict):
            label = entity.get("label", entity.get("entity_group"))
            spans.append(
                (entity.get("start", entity.get("start_offset")), entity.get("end", entity.get("end_offset")), label)
            )
        elif isinstance(entity, list) and len(entity) == 3:
            spans.append(tuple(entity))
        else:
            raise ValueError(f"{where}: entity {entity!r} is not [start, end, TYPE] or {{start, end, label}}")
    return make_example(record.get("id", index), record.get("text"), spans, where)


def _chosen(items: list) -> dict | None:
    """The annotation (or prediction) of a task that is read: not cancelled or skipped; a ground-truth one first,
    else the last created (`created_at`, then order in the list). None when there is none."""
    kept = [
        ((bool(item.get("ground_truth")), str(item.get("created_at") or ""), n), item)
        for n, item in enumerate(items)
        if isinstance(item, dict) and not (item.get("was_cancelled") or item.get("skipped"))
    ]
    return max(kept, key=lambda pair: pair[0])[1] if kept else None


def _read_label_studio(path: Path) -> list[dict]:
    tasks = _load_json(path)
    if not isinstance(tasks, list):
        raise ValueError(f"{path}: expected a JSON list of Label Studio tasks, found a {type(tasks).__name__}")
    examples, from_predictions, skipped = [], 0, 0
    for n, task in enumerate(tasks, start=1):
        where = f"{path}: task {n}" + (f" (id {task['id']})" if isinstance(task, dict) and "id" in task else "")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ValueError(f"{where}: expected a task object with `data`")
        annotations = task.get("annotations", task.get("completions")) or []
        chosen = _chosen(annotations)
        if chosen is None and not annotations:
            chosen = _chosen(task.get("predictions") or [])
            from_predictions += chosen is not None
        if chosen is None:
            skipped += 1
            continue
        examples.append(_task_example(task, chosen, where, n - 1))
    if from_predictions or skipped:
        warnings.warn(
            f"{path}: {from_predictions} tasks without annotations were read from their predictions "
            f"(pre-annotations); {skipped} tasks without a usable annotation or prediction were skipped",
            stacklevel=3,
        )
    return examples


def _task_example(task: dict, chosen: dict, where: str, index: int) -> dict:
    text = task["data"].get("text")
    spans = []
    for region in chosen.get("result") or []:
        value = region.get("value") if isinstance(region, dict) else None
        if not isinstance(value, dict) or "labels" not in value:
            continue  # not a span (a relation, a choice, ...)
        labels, start, end = value["labels"], value.get("start"), value.get("end")
        if not (isinstance(labels, list) and len(labels) == 1):
            raise ValueError(f"{where}: region {region.get('id')!r} has the labels {labels!r}: one per entity")
        in_text = isinstance(text, str) and isinstance(start, int) and isinstance(end, int) and 0 <= start < end
        if in_text and "text" in value and text[start:end] != value["text"]:
            raise ValueError(
                f"{where}: region {region.get('id')!r} ({start}, {end}) is {text[start:end]!r} in the text but "
                f"{value['text']!r} in the region (offsets not in characters?)"
            )
        spans.append((start, end, labels[0]))
    return make_example(task.get("id", index), text, spans, where)


def _column_sentences(path: Path) -> Iterator[dict]:
    """The sentences of a column file: `tokens`, `tags`, `places` (`path:line` of each token), `comments`."""
    sentence = {"tokens": [], "tags": [], "places": [], "comments": {}}
    with open(path, encoding="utf-8-sig") as file, utf8_required(path):
        for number, line in enumerate(file, start=1):
            line = line.rstrip("\n")
            fields = line.split("\t") if "\t" in line else line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if sentence["tokens"] or "text" in sentence["comments"]:
                    yield sentence
                sentence = {"tokens": [], "tags": [], "places": [], "comments": {}}
                continue
            comment = None if "\t" in line else _COMMENT.fullmatch(line)
            if comment:
                if sentence["tokens"]:
                    raise ValueError(f"{path}:{number}: a comment line inside a sentence (put a blank line before it)")
                sentence["comments"][comment[1]] = comment[2]
                continue
            if len(fields) < 2 or not fields[0] or not fields[-1].strip():
                raise ValueError(f"{path}:{number}: expected a token and its tag (tab or space separated): {line!r}")
            sentence["tokens"].append(fields[0])
            sentence["tags"].append(fields[-1].strip())
            sentence["places"].append(f"{path}:{number}")
    if sentence["tokens"] or "text" in sentence["comments"]:
        yield sentence


def _read_columns(path: Path, token_unit: str, tag_scheme: str) -> list[dict]:
    sentences = list(_column_sentences(path))
    if tag_scheme == "auto":
        tag_scheme = detect_scheme([sentence["tags"] for sentence in sentences])
    if token_unit == "auto":
        token_unit = _detect_unit([s["tokens"] for s in sentences if "text" not in s["comments"]], str(path))
    return [
        _tokens_example(
            sentence["comments"].get("sent_id", index),
            sentence["tokens"],
            sentence["tags"],
            sentence["comments"].get("text"),
            token_unit,
            tag_scheme,
            sentence["places"],
            f"{path}: sentence {index + 1}",
        )
        for index, sentence in enumerate(sentences)
    ]


def _detect_unit(token_lists: list[list[str]], where: str) -> str:
    """`word` or `char` for tokens joined without an original text (see the module docstring)."""
    tokens = [token for tokens in token_lists for token in tokens]
    if not tokens or any(len(token) > 1 for token in tokens):
        return "word"
    if any(token.isspace() for token in tokens):
        return "char"
    raise ValueError(
        f"{where}: every token is one character and none is a space: give the token unit (char: joined as they are, "
        "e.g. data_format='conll-char'; word: joined with spaces)"
    )


def _tokens_example(
    example_id,
    tokens: list[str],
    tags: list,
    text: str | None,
    token_unit: str,
    tag_scheme: str,
    places: list[str],
    where: str,
) -> dict:
    """An example from tokens and their tags, the tokens aligned in order to `text`, or joined when it is None."""
    if not all(isinstance(tag, str) for tag in tags) or len(tags) != len(tokens):
        raise ValueError(f"{where}: expected one tag name per token, got {len(tags)} tags for {len(tokens)} tokens")
    if text is None:
        separator = "" if token_unit == "char" else " "
        text = separator.join(tokens)
    offsets, position = [], 0
    for token, place in zip(tokens, places, strict=True):
        if not text.startswith(token, position):
            position = len(text) - len(text[position:].lstrip())  # only whitespace may come between tokens
            if not token or not text.startswith(token, position):
                raise ValueError(f"{place}: token {token!r} is not the text's next word: {text[position:][:40]!r}")
        offsets.append((position, position + len(token)))
        position += len(token)
    if text[position:].strip():
        raise ValueError(f"{where}: the text goes on after the last token: {text[position:][:40]!r}")
    spans = tags_to_spans(tags, tag_scheme, places)
    entities = [(offsets[start][0], offsets[end - 1][1], label_type) for start, end, label_type in spans]
    return make_example(example_id, text, entities, where)


def _read_datasets(
    source: str, config_name: str | None, split: str | None, text_column: str | None, token_unit: str, tag_scheme: str
) -> list[dict]:
    data = load_from_disk(source) if Path(source).is_dir() else load_dataset(source, config_name, split=split)
    if isinstance(data, DatasetDict):
        if split is None and len(data) != 1 or split is not None and split not in data:
            raise ValueError(f"{source}: name a split (split=...): it has {', '.join(data)}")
        split = split or next(iter(data))
        data = data[split]
    where = f"{source}" + (f" [{split}]" if split else "")
    text_column = text_column or ("text" if "text" in data.column_names else None)
    id_column = next((name for name in ("id", "guid") if name in data.column_names), None)
    missing = {"tokens", "ner_tags", text_column} - set(data.column_names) - {None}
    if missing:
        raise ValueError(f"{where}: no column {', '.join(sorted(missing))} (it has {', '.join(data.column_names)})")
    tag_feature = getattr(data.features["ner_tags"], "feature", None)
    names = tag_feature.names if isinstance(tag_feature, ClassLabel) else None
    rows = data.to_list()
    tag_lists = [[names[i] for i in row["ner_tags"]] if names else row["ner_tags"] for row in rows]
    if not all(isinstance(tag, str) for tags in tag_lists for tag in tags):
        raise ValueError(f"{where}: ner_tags are neither ClassLabel ids nor tag names (e.g. 'B-PS')")
    if tag_scheme == "auto":
        tag_scheme = detect_scheme(tag_lists)
    if token_unit == "auto":
        token_unit = _detect_unit([row["tokens"] for row in rows] if text_column is None else [], where)
    return [
        _tokens_example(
            row[id_column] if id_column else index,
            row["tokens"],
            tags,
            row[text_column] if text_column else None,
            token_unit,
            tag_scheme,
            [f"{where} row {index}, token {k + 1}" for k in range(len(row["tokens"]))],
            f"{where} row {index}",
        )
        for index, (row, tags) in enumerate(zip(rows, tag_lists, strict=True))
    ]


# Writers


def _line_safe(example: dict, where: str) -> None:
    """Refuse what a line-based file (column, KLUE TSV) cannot hold: a tab or line break in the id, text or types."""
    for what, value in (
        ("id", example["id"]),
        ("text", example["text"]),
        *(("type", e[2]) for e in example["entities"]),
    ):
        if _LINE_BREAKING.search(value):
            raise ValueError(f"{where}: the {what} {value[:60]!r} holds a tab or line break, which this format cannot")


def _word_offsets(text: str, entities: list[Span], where: str) -> list[tuple[int, int]]:
    """The words of a text (its whitespace-separated pieces, cut where an entity starts or ends)."""
    cuts = sorted({offset for start, end, _ in entities for offset in (start, end)})
    offsets = []
    for match in re.finditer(r"\S+", text):
        inner = [cut for cut in cuts if match.start() < cut < match.end()]
        bounds = [match.start(), *inner, match.end()]
        offsets += list(zip(bounds, bounds[1:], strict=False))
    if any(text[start:end] == "-DOCSTART-" for start, end in offsets):
        raise ValueError(f"{where}: the word -DOCSTART- would read as a document separator")
    return offsets


def _column_lines(examples: list[dict], token_unit: str, tag_scheme: str) -> Iterator[str]:
    for n, example in enumerate(examples, start=1):
        where = f"example {n} (id {example['id']!r})"
        text, entities = example["text"], example["entities"]
        _line_safe(example, where)
        if token_unit == "char":
            offsets = [(i, i + 1) for i in range(len(text))]
        else:
            offsets = _word_offsets(text, entities, where)
        starts = {start: i for i, (start, _) in enumerate(offsets)}
        ends = {end: i + 1 for i, (_, end) in enumerate(offsets)}
        for start, end, label_type in entities:
            if start not in starts or end not in ends:
                raise ValueError(
                    f"{where}: entity {(start, end, label_type)!r} {text[start:end]!r} starts or ends with whitespace, "
                    "which no word holds: use conll-char"
                )
        tags = spans_to_tags(len(offsets), [(starts[s], ends[e], t) for s, e, t in entities], tag_scheme)
        yield f"# sent_id = {example['id']}\n# text = {text}\n"
        yield from (f"{text[start:end]}\t{tag}\n" for (start, end), tag in zip(offsets, tags, strict=True))
        yield "\n"


def _klue_lines(examples: list[dict], tag_scheme: str) -> Iterator[str]:
    if tag_scheme != "bio":
        raise ValueError(f"KLUE TSV is BIO, not {tag_scheme.upper()}")
    for n, example in enumerate(examples, start=1):
        where = f"example {n} (id {example['id']!r})"
        text, entities = example["text"], example["entities"]
        _line_safe(example, where)
        marked = mark_entities(text, entities)
        types = (*ENTITY_TYPES, *sorted({label_type for _, _, label_type in entities} - set(ENTITY_TYPES)))
        if not text or strip_entity_marks(marked, types)[0] != text:
            raise ValueError(f"{where}: KLUE TSV cannot hold this text (empty, or with '<' '>' read as a mark)")
        yield f"## {example['id']}\t{marked}\n"
        tags = spans_to_char_tags(len(text), entities)
        yield from (f"{char}\t{tag}\n" for char, tag in zip(text, tags, strict=True))
        yield "\n"


def _regions(text: str, entities: list[Span], scores: list[float] | None = None) -> list[dict]:
    """Label Studio result regions of entities (for the default NER template: `label` on `text`)."""
    regions = []
    for k, (start, end, label_type) in enumerate(entities):
        value = {"start": start, "end": end, "text": text[start:end], "labels": [label_type]}
        if scores is not None:
            value["score"] = scores[k]
        regions.append({"id": f"e{k}", "from_name": "label", "to_name": "text", "type": "labels", "value": value})
    return regions


def _jsonl_lines(examples: list[dict], tag_scheme: str) -> Iterator[str]:
    for example in examples:
        entities = [{"start": start, "end": end, "label": label_type} for start, end, label_type in example["entities"]]
        yield (
            json.dumps({"id": example["id"], "text": example["text"], "entities": entities}, ensure_ascii=False) + "\n"
        )


def _doccano_lines(examples: list[dict], tag_scheme: str) -> Iterator[str]:
    for example in examples:
        spans = [list(span) for span in example["entities"]]
        yield json.dumps({"id": example["id"], "text": example["text"], "label": spans}, ensure_ascii=False) + "\n"


def _label_studio_json(
    examples: list[dict], scores: list[list[float]] | None = None, model_version: str | None = None
) -> str:
    """Label Studio tasks: the entities as `annotations`, or with `scores` as `predictions` (pre-annotations)."""
    tasks = []
    for n, example in enumerate(examples):
        task = {"id": example["id"], "data": {"text": example["text"]}}
        if scores is None:
            task["annotations"] = [{"result": _regions(example["text"], example["entities"])}]
        else:
            result = _regions(example["text"], example["entities"], scores[n])
            score = {"score": min(scores[n])} if scores[n] else {}
            task["predictions"] = [{"model_version": model_version, "result": result, **score}]
        tasks.append(task)
    return json.dumps(tasks, ensure_ascii=False, indent=1) + "\n"


_WRITERS: dict[str, Callable[[list[dict], str], Iterable[str]]] = {
    "jsonl": _jsonl_lines,
    "doccano": _doccano_lines,
    "label-studio": lambda examples, tag_scheme: [_label_studio_json(examples)],
    "conll": lambda examples, tag_scheme: _column_lines(examples, "word", tag_scheme),
    "conll-char": lambda examples, tag_scheme: _column_lines(examples, "char", tag_scheme),
    "klue": _klue_lines,
}


def output_format_of(path: str | Path) -> str:
    """The format `output_format="auto"` writes: by the extension (`.jsonl`: jsonl, `.json`: label-studio, `.conll`:
    conll, `.tsv`: klue); doccano and conll-char are named."""
    suffix = Path(path).suffix.lower()
    if suffix not in _OUTPUT_BY_SUFFIX:
        raise ValueError(f"{path}: cannot tell the output format from {suffix!r}: give one of {WRITE_FORMATS}")
    return _OUTPUT_BY_SUFFIX[suffix]


def write_examples(
    examples: Iterable[dict], path: str | Path, data_format: str = "auto", tag_scheme: str = "bio"
) -> int:
    """Write examples (checked again by [`make_example`]) as `data_format` (`WRITE_FORMATS`; `"auto"`: by the
    extension, [`output_format_of`]) with the tags of column files in `tag_scheme`. Returns how many were written."""
    data_format = output_format_of(path) if data_format == "auto" else data_format
    if data_format not in WRITE_FORMATS:
        raise ValueError(f"cannot write {data_format!r}: the formats written are {WRITE_FORMATS}")
    if tag_scheme not in TAG_SCHEMES[1:]:
        raise ValueError(f"tag_scheme must be one of {TAG_SCHEMES[1:]}, got {tag_scheme!r}")
    examples = [
        make_example(example["id"], example["text"], example["entities"], f"example {n}")
        for n, example in enumerate(examples, start=1)
    ]
    _write(path, list(_WRITERS[data_format](examples, tag_scheme)))  # every check passes before the file is touched
    return len(examples)


def _write(path: str | Path, chunks: Iterable[str]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(chunks)


def convert(
    input_path: str | Path,
    output_path: str | Path,
    input_format: str = "auto",
    output_format: str = "auto",
    output_tag_scheme: str = "bio",
    keep_types: Iterable[str] | None = None,
    **read_options,
) -> int:
    """Read labelled data ([`read_examples`], `read_options` such as `tag_scheme`, `split`) and write it as
    `output_format` ([`write_examples`]), with only the entities of `keep_types` when given ([`only_types`]);
    returns the number of examples."""
    if Path(input_path).exists():
        refuse_input_as_output(input_path, Path(output_path))
    examples = read_examples(input_path, input_format, **read_options)
    if keep_types is not None:
        examples = only_types(examples, keep_types)
    return write_examples(examples, output_path, output_format, output_tag_scheme)


def only_types(examples: list[dict], types: Iterable[str]) -> list[dict]:
    """The examples with the entities of `types` only, the characters of the others outside any entity: data for a
    model of fewer types (to which the others may be added later with a few examples). A type the examples do not
    have is refused (`ValueError`): it is more likely a typo than a wish."""
    types, present = list(types), entity_types(examples)
    missing = [label_type for label_type in types if label_type not in present]
    if missing:
        raise ValueError(f"no entity of type {', '.join(missing)} in the data (its types: {present})")
    return [{**example, "entities": [e for e in example["entities"] if e[2] in types]} for example in examples]


def write_predictions(
    texts: Iterable[str],
    results: Iterable[list[dict]],
    path: str | Path,
    output_format: str = "auto",
    tag_scheme: str = "bio",
    model_version: str = "koelectra-crf",
    ids: Iterable[str | int] | None = None,
) -> int:
    """Write the pipeline's entities of texts (`aggregation_strategy="simple"`: `entity_group`, `start`, `end`,
    `word`, `score`) as data a tool or the training reads back: `jsonl` (`predict`'s lines, scores included),
    `label-studio` (tasks with `predictions` to correct: each region's `value.score`, and as the prediction's
    `score` its least probable entity's, to sort tasks by), or any other of `WRITE_FORMATS` (no scores). Each
    example's id is the text's of `ids` (such as the input records' ids), its index without them.
    Returns the number of texts."""
    texts, results = list(texts), list(results)
    ids = range(len(texts)) if ids is None else list(ids)
    if not len(texts) == len(results) == len(ids):
        raise ValueError(f"{len(texts)} texts, {len(results)} results and {len(ids)} ids: give one of each per text")
    output_format = output_format_of(path) if output_format == "auto" else output_format
    if output_format == "jsonl":
        _write(path, map(output_line, ids, texts, results))
        return len(texts)
    examples, scores = [], []
    for n, (example_id, text, entities) in enumerate(zip(ids, texts, results, strict=True)):
        if any("entity_group" not in entity for entity in entities):
            raise ValueError(f"text {n + 1}: results need entity_group (the pipeline's aggregation_strategy='simple')")
        pairs = sorted(((e["start"], e["end"], e["entity_group"]), e["score"]) for e in entities)
        examples.append(make_example(example_id, text, [span for span, _ in pairs], f"text {n + 1}"))
        scores.append([score for _, score in pairs])
    if output_format != "label-studio":
        return write_examples(examples, path, output_format, tag_scheme)
    _write(path, [_label_studio_json(examples, scores, model_version)])
    return len(examples)
