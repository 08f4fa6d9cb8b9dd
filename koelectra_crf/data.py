"""KLUE NER data: the official v1.1 TSV files or the Hub dataset, as one `DatasetDict` schema.

Every split has the features `guid`, `sentence` (plain text), `tokens` (one per character, spaces included)
and `ner_tags` (`Sequence(ClassLabel)`). Labels travel by name: the label list is read from the data's
features ([`label_names`]) and mapped onto a model's ids by one function ([`tags_to_ids`]), so two
different label orders (KLUE-baseline's in the TSV path, the Hub's alphabetical one) can never be mixed up.
"""

import re
import unicodedata
import urllib.error
import urllib.request
import warnings
from collections.abc import Container
from pathlib import Path

import datasets
from datasets import ClassLabel, Dataset, DatasetDict, Features, Sequence, Value, load_dataset
from huggingface_hub import constants

from koelectra_crf.alignment import OUTSIDE, encode_texts, entity_type, nfc_with_offsets, unit_labels
from koelectra_crf.configuration_koelectra_crf import ENTITY_TYPES, KLUE_LABELS
from koelectra_crf.inputs import KLUE_HEADER_PREFIX, utf8_required
from koelectra_crf.usage import UsageError

HUB_DATASET = ("klue", "ner")
"""The Hub dataset used when no file is given (KLUE v1; `klue` is an alias of `klue/klue`)."""

# `<text:TAG>`: the entity text may hold spaces, digits and `:` (e.g. `<12:30:TI>`), never `<` or `>`.
# Forbidding `<`/`>` keeps stray brackets literal: `<<레이:PS>>` is `<` + mark + `>`, and a broken mark such
# as `<일:;LC>` is plain text in the official files (its characters are all tagged `O` there).
_MARK = re.compile(rf"<([^<>]+):({'|'.join(ENTITY_TYPES)})>")


class KlueFormatError(UsageError):
    """A KLUE NER TSV file that does not follow the v1.1 format; the message starts with `path:line:`."""


def klue_features(names: list[str]) -> Features:
    """The features of every split, with `ner_tags` a `ClassLabel` over `names` in their given order."""
    return Features(
        {
            "guid": Value("string"),
            "sentence": Value("string"),
            "tokens": Sequence(Value("string")),
            "ner_tags": Sequence(ClassLabel(names=names)),
        }
    )


def strip_entity_marks(
    marked_sentence: str, types: tuple[str, ...] = ENTITY_TYPES
) -> tuple[str, list[tuple[int, int, str]]]:
    """Remove the `<text:TAG>` marks of a KLUE sentence (marks of `types`: KLUE's six unless given).

    Returns the plain text and the entities as `(start, end, type)` character offsets into it (end exclusive).
    """
    mark = _MARK if tuple(types) == ENTITY_TYPES else re.compile(rf"<([^<>]+):({'|'.join(map(re.escape, types))})>")
    plain = []
    entities = []
    length = 0  # characters of plain text so far
    last = 0  # end of the previous mark in `marked_sentence`
    for match in mark.finditer(marked_sentence):
        before = marked_sentence[last : match.start()]
        text, entity_type = match.group(1), match.group(2)
        plain += [before, text]
        length += len(before)
        entities.append((length, length + len(text), entity_type))
        length += len(text)
        last = match.end()
    plain.append(marked_sentence[last:])
    return "".join(plain), entities


def mark_entities(text: str, spans: list[tuple[int, int, str]]) -> str:
    """`text` with KLUE's `<text:TYPE>` marks around the entities (the inverse of `data.strip_entity_marks`)."""
    pieces, position = [], 0
    for start, end, label_type in sorted(spans):
        pieces += [text[position:start], f"<{text[start:end]}:{label_type}>"]
        position = end
    return "".join(pieces) + text[position:]


def _count_ill_formed(tags: list[str]) -> int:
    """Number of `I-X` tags that follow neither `B-X` nor `I-X` (ill-formed but parseable BIO)."""
    previous = [OUTSIDE] + tags[:-1]
    return sum(
        1
        for prev, tag in zip(previous, tags, strict=True)
        if tag.startswith("I-") and entity_type(prev) != entity_type(tag)
    )


class _AnyTags:
    """The tags `read_klue_tsv(any_tags=True)` accepts: `O` and `B-X`/`I-X` of any type X."""

    def __contains__(self, tag: str) -> bool:
        return tag == OUTSIDE or re.fullmatch(r"[BI]-.+", tag) is not None


def read_klue_tsv(path: str | Path, any_tags: bool = False) -> list[dict]:
    """Parse a KLUE NER file in the official v1.1 TSV format.

    The file starts with `## ` comment lines; then per sentence a header `## <guid>\\t<sentence with
    <text:TAG> marks>`, one `CHAR\\tTAG` line per character (spaces are characters) and a blank line.

    Returns one dict per sentence with `guid`, `sentence` (marks removed), `tokens` (the characters) and
    `ner_tags` (tag names). Raises [`KlueFormatError`] naming the file (and line) for a file that is not UTF-8
    (a UTF-8 byte order mark is fine), holds no sentence, or has a character line that is not two tab-separated
    columns, has an empty character or more than one, or a tag outside the 13 KLUE tags, or characters that do not
    join to the header's text. Ill-formed BIO (an `I-X` after `O`) is kept as is and counted in a warning.

    Sentences come back in Unicode NFC, the form the pipeline gives the model: a file in decomposed Hangul
    (NFD: one line per jamo) is composed, each composed character taking the tag of its first character (an
    entity boundary inside a syllable moves to the syllable's start; a resulting ill-formed `I-X` is counted as
    above), with a warning that counts the sentences composed.

    `any_tags=True` accepts any `B-X`/`I-X` tag besides `O` (headers' marks of the sentence's types are removed).
    """
    label_set = _AnyTags() if any_tags else set(KLUE_LABELS)
    sentences = []
    header = None  # (line number, guid, marked sentence) of the sentence being read
    tokens: list[str] = []
    tags: list[str] = []
    with open(path, encoding="utf-8-sig") as f, utf8_required(path, KlueFormatError):
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\n")  # only the newline: a trailing space may be a character or text
            if line == "" or line.startswith(KLUE_HEADER_PREFIX):
                if tokens:
                    sentences.append(_klue_sentence(path, header, tokens, tags, any_tags))
                elif header is not None and sentences:
                    raise KlueFormatError(f"{path}:{header[0]}: sentence header without characters")
                header, tokens, tags = None, [], []
                if line:
                    guid, tab, marked = line[len(KLUE_HEADER_PREFIX) :].partition("\t")
                    # Before the first sentence, `## ` lines are the file's comments (the last one before
                    # the characters is the first header); after it every `## ` line is a sentence header.
                    if tab:
                        header = (line_no, guid, marked)
                    elif sentences:
                        raise KlueFormatError(f"{path}:{line_no}: sentence header without a tab: {line!r}")
                continue
            char, tag = _klue_character_line(path, line_no, line, header is not None, label_set)
            tokens.append(char)
            tags.append(tag)
    if tokens:  # the last sentence need not end with a blank line
        sentences.append(_klue_sentence(path, header, tokens, tags, any_tags))
    elif header is not None and sentences:
        raise KlueFormatError(f"{path}:{header[0]}: sentence header without characters")
    if not sentences:
        raise KlueFormatError(f"{path}: no sentences (the file is empty or holds only `## ` comment lines)")
    _warn_of_repairs(path, sentences)
    return [{key: value for key, value in sentence.items() if key != "composed"} for sentence in sentences]


def _klue_character_line(
    path: str | Path, line_no: int, line: str, in_sentence: bool, label_set: Container[str]
) -> tuple[str, str]:
    """(character, tag) of a `CHAR\tTAG` line of a KLUE TSV file, or a [`KlueFormatError`] saying what is wrong."""
    columns = line.split("\t")
    if len(columns) != 2:
        raise KlueFormatError(
            f"{path}:{line_no}: expected 2 tab-separated columns 'CHAR<tab>TAG', found {len(columns)}: {line!r}"
        )
    char, tag = columns
    if not in_sentence:
        raise KlueFormatError(f"{path}:{line_no}: character line outside a sentence: {line!r}")
    if not char:
        raise KlueFormatError(f"{path}:{line_no}: empty character before the tab (a space is written as ' '): {line!r}")
    if len(char) != 1:
        raise KlueFormatError(f"{path}:{line_no}: expected one character before the tab, found {char!r}")
    if tag not in label_set:
        raise KlueFormatError(f"{path}:{line_no}: unknown tag {tag!r}: the tags are {', '.join(KLUE_LABELS)}")
    return char, tag


def _klue_sentence(
    path: str | Path, header: tuple[int, str, str], tokens: list[str], tags: list[str], any_tags: bool
) -> dict:
    """One sentence of a KLUE TSV file from its header and character lines, in NFC (`composed`: whether it was not),
    checked against the header's text."""
    line_no, guid, marked = header
    extra = sorted({tag[2:] for tag in tags if tag != OUTSIDE} - set(ENTITY_TYPES)) if any_tags else []
    plain, _ = strip_entity_marks(marked, (*ENTITY_TYPES, *extra))
    joined = "".join(tokens)
    if unicodedata.normalize("NFC", joined) != unicodedata.normalize("NFC", plain):
        raise KlueFormatError(
            f"{path}:{line_no}: the characters below this header join to {joined!r}, "
            f"but the header's text without marks is {plain!r}"
        )
    text, spans = nfc_with_offsets(joined)
    sentence_tags = [tags[start] for start, _ in spans]
    return {"guid": guid, "sentence": text, "tokens": list(text), "ner_tags": sentence_tags, "composed": text != joined}


def _warn_of_repairs(path: str | Path, sentences: list[dict]) -> None:
    """Warn of the sentences of a KLUE TSV file that were composed to NFC, and of ill-formed BIO tags kept."""
    composed = sum(sentence["composed"] for sentence in sentences)
    if composed:
        warnings.warn(
            f"{path}: {composed} sentences not in Unicode NFC (decomposed Hangul?) were composed; a composed "
            "character takes the tag of its first character",
            stacklevel=3,
        )
    ill_formed = sum(_count_ill_formed(sentence["ner_tags"]) for sentence in sentences)
    if ill_formed:
        warnings.warn(
            f"{path}: {ill_formed} ill-formed BIO tags (I-X not after B-X or I-X), kept as they are",
            stacklevel=3,
        )


def tags_to_ids(tag_names: list[str], label2id: dict[str, int]) -> list[int]:
    """Map tag names to a model's ids: the one place where labels change from names to numbers."""
    try:
        return [label2id[tag] for tag in tag_names]
    except KeyError as error:
        raise ValueError(f"tag {error.args[0]!r} is not in the label set {sorted(label2id)}") from None


def label_names(dataset: Dataset | DatasetDict) -> list[str]:
    """The tag names of a dataset's `ner_tags`, in the order of their ids in that dataset."""
    if isinstance(dataset, DatasetDict):
        names = {split: label_names(part) for split, part in dataset.items()}
        if len({tuple(split_names) for split_names in names.values()}) > 1:
            raise ValueError(f"the splits have different label lists: {names}")
        return next(iter(names.values()))
    return list(dataset.features["ner_tags"].feature.names)


def with_label_names(dataset: Dataset, names: list[str]) -> Dataset:
    """`dataset` with its `ner_tags` as ids of `names` (matched by name): splits of different label orders (a TSV
    file's and the Hub's) can then be concatenated."""
    current = label_names(dataset)
    if current == list(names):
        return dataset
    label2id = {name: i for i, name in enumerate(names)}

    def relabel(example: dict) -> dict:
        return {"ner_tags": tags_to_ids([current[i] for i in example["ner_tags"]], label2id)}

    return dataset.map(relabel, features=klue_features(list(names)), desc="Relabelling by name")


def example_tag_names(example: dict, names: list[str]) -> list[str]:
    """The tag names of one example, from its `ner_tags` ids and the dataset's [`label_names`]."""
    return [names[i] for i in example["ner_tags"]]


def _tsv_split(path: str | Path) -> Dataset:
    """One split read from a TSV file, with `ner_tags` a `ClassLabel` in `KLUE_LABELS` order."""
    label2id = {label: i for i, label in enumerate(KLUE_LABELS)}
    records = read_klue_tsv(path)
    for record in records:
        record["ner_tags"] = tags_to_ids(record["ner_tags"], label2id)
    return Dataset.from_list(records, features=klue_features(KLUE_LABELS))


def normalize_hub_split(dataset: Dataset, split: str) -> Dataset:
    """Bring a split of the Hub's `klue`/`ner` (`sentence` with marks, `tokens`, `ner_tags`) to our schema.

    Adds `guid` (`klue-ner-{split}-{index}`, the Hub has none) and makes `sentence` plain text. The
    `ClassLabel` names stay in the Hub's (alphabetical) order: labels travel by name.
    """
    names = label_names(dataset)

    def to_schema(example: dict, index: int) -> dict:
        return {
            "guid": f"klue-ner-{split}-{index}",
            # The characters are the Hub's `sentence` without its marks, and are the text the tags belong to
            # even should a mark be broken (as some are in the v1.1 files): take the text from them.
            "sentence": "".join(example["tokens"]),
            "tokens": example["tokens"],
            "ner_tags": example["ner_tags"],
        }

    return dataset.map(to_schema, with_indices=True, remove_columns=dataset.column_names, features=klue_features(names))


def load_klue_ner(
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
    file_flags: str = "--train_file and --validation_file",
) -> DatasetDict:
    """Load KLUE NER as a `DatasetDict` with the features `guid`, `sentence`, `tokens`, `ner_tags`.

    With files: parse them ([`read_klue_tsv`]) into the splits `train`, `validation`, `test` (only those
    given); `ner_tags` then use `KLUE_LABELS` order. Without files: `load_dataset("klue", "ner")` from the
    Hub (KLUE v1), normalised by [`normalize_hub_split`]; its tags keep the Hub's alphabetical order. Read the
    order with [`label_names`] and convert with [`tags_to_ids`], never assume it. When the Hub cannot give it
    (offline, or unreachable), a `UsageError` says so at once and names `file_flags`, the command's flags for files.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {split: path for split, path in files.items() if path is not None}
    if files:
        return DatasetDict({split: _tsv_split(path) for split, path in files.items()})
    hub = _load_hub_dataset(file_flags)
    return DatasetDict({split: normalize_hub_split(part, split) for split, part in hub.items()})


def sentence_windows(sentences: list[list[str]], tags: list[list[str]], tokenizer, config) -> list[list[dict]]:
    """The model input rows of each sentence (its characters, and their tag names): one row per window, as
    [`tokenize_and_align`] makes them (see there). For the rows of a sentence changed on the fly, such as the training
    data's spacing augmentation (`spacing.SpacingAugmentation`)."""
    texts = ["".join(characters) for characters in sentences]
    encoded_texts = encode_texts(texts, tokenizer, config.encoder_tokenization, config.morpheme_features)
    rows = []
    for encoded, sentence_tags in zip(encoded_texts, tags, strict=True):
        label_ids = tags_to_ids(unit_labels(encoded, sentence_tags, config.tag_unit), config.label2id)
        windows = []
        for start, end in encoded.windows(config.max_length, config.stride):
            window = encoded.window(start, end, config.tag_unit, label_ids)
            del window["tag_mask"]  # the same as labels != -100; the data collator would not pad it
            windows.append(window)
        rows.append(windows)
    return rows


def _load_hub_dataset(file_flags: str) -> DatasetDict:
    """`load_dataset(*HUB_DATASET)`, or a `UsageError` naming `file_flags` when the Hub cannot give it."""
    name, instead = "/".join(HUB_DATASET), f"give the data as KLUE NER TSV files with {file_flags}"
    if not datasets.config.HF_HUB_OFFLINE:
        # One short request first: datasets would retry a dead connection for about 30 s before giving up.
        reason = hub_unreachable()
        if reason is not None:
            raise UsageError(
                f"the Hub ({constants.ENDPOINT}) cannot be reached to download {name} ({reason}): {instead}, or set "
                "HF_DATASETS_OFFLINE=1 to use a copy downloaded before"
            )
    try:
        return load_dataset(*HUB_DATASET)
    except ConnectionError as error:  # offline mode, and no copy in the cache
        offline = "the Hub is offline (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)"
        raise UsageError(f"{name} is not in the local cache and {offline}: {instead}") from error


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hub (`huggingface_hub.constants.ENDPOINT`) does not answer one request within `timeout` seconds (no
    route, no name, refused, too slow), or None when it answers: any HTTP status is an answer."""
    try:
        urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None
    except OSError as error:  # URLError (its reason: the socket's error) or a timeout
        return str(getattr(error, "reason", error))
    return None


def tokenize_and_align(dataset: Dataset, tokenizer, config) -> Dataset:
    """Model inputs for training: one row per window of every sentence (no character is dropped).

    Uses the alignment and the window builder the pipeline uses ([`koelectra_crf.alignment`]) in
    `config.encoder_tokenization` mode with `config.max_length`/`config.stride`, tagging `config.tag_unit`s.
    `labels` holds the model's ids (`config.label2id`, matched by name) on the units and -100 elsewhere (special and
    untagged tokens; the model derives the positions to tag from them). Padding is left to [`NerDataCollator`].
    """
    names = label_names(dataset)

    def window_rows(batch: dict) -> dict:
        rows = {}
        tags = [[names[i] for i in tag_ids] for tag_ids in batch["ner_tags"]]
        for sentence in sentence_windows(batch["tokens"], tags, tokenizer, config):
            for window in sentence:
                for key, values in window.items():
                    rows.setdefault(key, []).append(values)
        return rows

    return dataset.map(window_rows, batched=True, remove_columns=dataset.column_names, desc="Tokenizing")


def load_klue_split(file: str | Path | None = None, max_sentences: int | None = None) -> Dataset:
    """A KLUE NER TSV file, or the Hub `klue` validation split when no file is given; optionally its first
    `max_sentences` sentences."""
    dataset = load_klue_ner(test_file=file)["test"] if file else load_klue_ner(file_flags="--test_file")["validation"]
    if max_sentences is not None:
        dataset = dataset.select(range(min(max_sentences, len(dataset))))
    return dataset
