"""Characters <-> tokens: the one alignment shared by training (`data.tokenize_and_align`) and the pipeline.

KLUE NER is labelled per character (spaces included). The model tags tokens. This module decides, once, which
token carries the tag of which character, and how token tags become character tags again.

What the encoder reads (`config.encoder_tokenization`):

- ``"subword"``: the encoder's fast tokenizer over the running text. A token covers the characters of its offset
  span (leading whitespace stripped, as SentencePiece's ``▁`` can include it). It is labelled with the tag of its
  first character (KLUE-baseline's convention). When several tokens start at the same character (SentencePiece
  emits a bare ``▁`` before a piece such as ``<unk>``), only the last of them is tagged.
- ``"char"``: every non-space character is one word, fed with ``is_split_into_words=True`` (the original
  `korean_ner` approach, meant for character vocabularies such as KoCharELECTRA's). If a tokenizer splits a
  character into several tokens, only the last is tagged.

Spaces are never tokens. What carries a tag is a *unit* (`config.tag_unit`):

- ``"token"``: each tagged token. Going back to characters (`unit_tags_to_char_tags`), the first character of a
  tagged token gets the token's tag, its other characters the ``I-`` of the same type (or ``O``), so an entity
  boundary inside a token (a name glued to its particle: ``원의`` in ``최정원의``) cannot be represented.
- ``"character"``: each non-space character that a tagged token covers, with that token behind it (the model
  builds its features from that token's state). Every such character gets its own tag: no boundary is rounded.

Either way, a character that is no unit (a space, or a character the tokenizer drops) continues an entity only
when the entity goes on right after it (KLUE labels a space inside an entity ``I-``); otherwise it is ``O``.

Long texts are cut into overlapping windows of `max_length` tokens (special tokens included) sharing `stride`
tokens, so every character is tagged and none is dropped.

With `config.morpheme_features` each character also carries a morpheme code (`morpheme_codes`: Kiwi's analysis of the
whole text, before it is windowed), so that every window of a text, in training and at inference, reads the same one.
"""

import difflib
import re
import unicodedata
from bisect import bisect_left
from dataclasses import dataclass
from functools import cache, cached_property

import torch

from .crf import IGNORE_INDEX

OUTSIDE = "O"


@dataclass
class EncodedText:
    """A whole text tokenized once, without special tokens or truncation.

    Attributes:
        text: the text.
        token_ids: ids of the N content tokens.
        char_spans: (start, end) character span of each content token in the text; (start, start) when the
            token covers no visible character.
        tagged: whether each token carries a tag (at most one token per character does).
        prefix_ids, suffix_ids: the special tokens the tokenizer puts around a sequence (e.g. [CLS] / [SEP]).
        type_id: token type id of a single sequence; None when the model takes no token type ids.
        morphemes: the morpheme code of each character of the text (`morpheme_codes`) when the model reads them
            (`config.morpheme_features`); None otherwise.
    """

    text: str
    token_ids: list[int]
    char_spans: list[tuple[int, int]]
    tagged: list[bool]
    prefix_ids: list[int]
    suffix_ids: list[int]
    type_id: int | None = 0
    morphemes: list[int] | None = None

    def windows(self, max_length: int, stride: int) -> list[tuple[int, int]]:
        """Content-token ranges [start, end) of overlapping windows that together cover every token."""
        capacity = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if not 0 <= stride < capacity:
            raise ValueError(f"stride ({stride}) must be smaller than the tokens a window holds ({capacity})")
        num_tokens = len(self.token_ids)
        ranges = [(0, min(capacity, num_tokens))]
        while ranges[-1][1] < num_tokens:
            start = ranges[-1][1] - stride
            ranges.append((start, min(start + capacity, num_tokens)))
        return ranges

    def unit_tokens(self, tag_unit: str) -> list[int]:
        """The content token behind each tagged unit, in text order (see the module docstring)."""
        return [token for _, token in self._units(tag_unit)]

    def unit_spans(self, tag_unit: str) -> list[tuple[int, int]]:
        """The character span of each tagged unit, in text order: a tagged token's span, or one character."""
        return [span for span, _ in self._units(tag_unit)]

    def _units(self, tag_unit: str) -> list[tuple[tuple[int, int], int]]:
        if tag_unit == "token":
            return self._token_units
        if tag_unit == "character":
            return self._character_units
        raise ValueError(f"tag_unit must be 'token' or 'character', got {tag_unit!r}")

    @cached_property
    def _token_units(self) -> list[tuple[tuple[int, int], int]]:
        return [
            (span, k) for k, (span, is_tagged) in enumerate(zip(self.char_spans, self.tagged, strict=True)) if is_tagged
        ]

    @cached_property
    def _character_units(self) -> list[tuple[tuple[int, int], int]]:
        return [
            ((i, i + 1), k)
            for (start, end), k in self._token_units
            for i in range(start, end)
            if not self.text[i].isspace()
        ]

    def window(self, start: int, end: int, tag_unit: str = "token", labels: list[int] | None = None) -> dict[str, list]:
        """Model inputs of the window of content tokens [start, end), special tokens around it, as lists:

        - `input_ids`, `attention_mask` and (when the model takes them) `token_type_ids`, of length L;
        - `tag_mask`: which positions of the tagged sequence are units. With `tag_unit="token"` the tagged sequence
          is the L tokens (True at tagged content tokens); with `"character"` it is the U units whose token is in
          the window (all True), described by `char_token_index` (position of the unit's token among the L),
          `char_position_ids` (the character's offset inside its token) and `char_codes` (its code point);
        - given `labels` (one tag id per unit of the whole text), `labels`: the window's part, aligned with
          `tag_mask` (`IGNORE_INDEX` where it is False).

        The one place where windows are assembled, for training (`data.tokenize_and_align`) and inference (the
        pipeline) alike.
        """
        input_ids = self.prefix_ids + self.token_ids[start:end] + self.suffix_ids
        inputs = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids)}
        if self.type_id is not None:
            inputs["token_type_ids"] = [self.type_id] * len(input_ids)
        all_units = self._units(tag_unit)  # in token order: the window's units are one slice of them
        first = bisect_left(all_units, start, key=lambda unit: unit[1])
        last = bisect_left(all_units, end, key=lambda unit: unit[1])
        units = [(u, *all_units[u]) for u in range(first, last)]
        offset = len(self.prefix_ids) - start  # content token k sits at position k + offset of the window
        if tag_unit == "token":
            inputs["tag_mask"] = [False] * len(input_ids)
            for _, _, k in units:
                inputs["tag_mask"][k + offset] = True
        else:
            inputs["tag_mask"] = [True] * len(units)
            inputs["char_token_index"] = [k + offset for _, _, k in units]
            inputs["char_position_ids"] = [i - self.char_spans[k][0] for _, (i, _), k in units]
            inputs["char_codes"] = [ord(self.text[i]) for _, (i, _), _ in units]
            if self.morphemes is not None:
                inputs["char_morphemes"] = [self.morphemes[i] for _, (i, _), _ in units]
        if labels is not None:
            if tag_unit == "token":
                inputs["labels"] = [IGNORE_INDEX] * len(input_ids)
                for u, _, k in units:
                    inputs["labels"][k + offset] = labels[u]
            else:
                inputs["labels"] = [labels[u] for u, _, _ in units]
        return inputs


def encode_texts(
    texts: list[str], tokenizer, encoder_tokenization: str, morpheme_features: bool = False
) -> list[EncodedText]:
    """Tokenize whole texts (one batched tokenizer call) and align their tokens with characters; with
    `morpheme_features`, also analyse them (one batched Kiwi call, `morpheme_codes`)."""
    if not tokenizer.is_fast:
        raise ValueError("koelectra-crf needs a fast tokenizer (character offsets); got a slow one")
    if encoder_tokenization == "subword":
        batch = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True, return_token_type_ids=True)
        positions = [None] * len(texts)
    elif encoder_tokenization == "char":
        positions = [[i for i, char in enumerate(text) if not char.isspace()] for text in texts]
        words = [[texts[k][i] for i in chars] for k, chars in enumerate(positions)]
        batch = tokenizer(
            words, is_split_into_words=True, add_special_tokens=True, return_offsets_mapping=True,
            return_token_type_ids=True,
        )  # fmt: skip
    else:
        raise ValueError(f"unknown encoder_tokenization {encoder_tokenization!r}: use 'subword' or 'char'")
    uses_token_types = "token_type_ids" in tokenizer.model_input_names
    morphemes = morpheme_codes(texts) if morpheme_features else [None] * len(texts)
    return [_align(texts[k], batch, k, positions[k], uses_token_types, morphemes[k]) for k in range(len(texts))]


def model_inputs(
    texts: list[str], tokenizer, config, entities: list | None = None, stride: int | None = None
) -> list[dict]:
    """Model input rows of `texts` (one per window, unpadded lists; `pad_inputs` pads them): what
    `KoElectraCrfForTokenClassification.prepare_inputs` returns, and what the pipeline reads.

    Each text is read in NFC (`nfc_with_offsets`), tokenized once and windowed by `config` (`encoder_tokenization`,
    `max_length`, `stride` unless given, `tag_unit`). Besides `EncodedText.window`'s inputs a row holds
    `offset_mapping`, the [start, end) span in the caller's text of each position of the tagged sequence ((0, 0)
    where `tag_mask` is False), and `overflow_to_sample_mapping`, the index of its text. With `entities` (per text,
    (start, end, type) spans of the caller's text, or {"start", "end", "label"} mappings) a row holds `labels` too:
    each unit's tag from its first character, as in training.
    """
    if entities is not None and len(entities) != len(texts):
        raise ValueError(f"entities holds {len(entities)} lists for {len(texts)} texts: give one list per text")
    for index, original in enumerate(texts):
        if not isinstance(original, str):
            raise ValueError(f"text {index} is a {type(original).__name__}, not a string")
    normalized = [nfc_with_offsets(original) for original in texts]
    encoded_texts = (
        encode_texts([text for text, _ in normalized], tokenizer, config.encoder_tokenization, config.morpheme_features)
        if texts
        else []
    )
    rows = []
    for index, ((text, char_spans), encoded) in enumerate(zip(normalized, encoded_texts, strict=True)):
        label_ids = None
        if entities is not None:
            spans = _model_spans(entities[index], char_spans, config.label2id, index)
            tags = unit_labels(encoded, spans_to_char_tags(len(text), spans), config.tag_unit)
            label_ids = [config.label2id[tag] for tag in tags]
        unit_tokens = encoded.unit_tokens(config.tag_unit)
        unit_offsets = [original_span(char_spans, *span) for span in encoded.unit_spans(config.tag_unit)]
        for start, end in encoded.windows(config.max_length, config.stride if stride is None else stride):
            row = encoded.window(start, end, config.tag_unit, label_ids)
            units = iter(unit_offsets[bisect_left(unit_tokens, start) :])
            row["offset_mapping"] = [next(units) if tagged else (0, 0) for tagged in row["tag_mask"]]
            row["overflow_to_sample_mapping"] = index
            rows.append(row)
    return rows


def _model_spans(spans, char_spans: list[tuple[int, int]], label2id: dict, index: int) -> list[tuple[int, int, str]]:
    """(start, end, type) spans of a caller's text -> spans of its NFC text (`char_spans` from `nfc_with_offsets`),
    checked: inside the text, non-empty, not overlapping, of a type the model has, on character boundaries."""
    starts = {start: i for i, (start, _) in enumerate(char_spans)}
    ends = {end: i + 1 for i, (_, end) in enumerate(char_spans)}
    spans = [(span["start"], span["end"], span["label"]) if isinstance(span, dict) else tuple(span) for span in spans]
    result, previous_end = [], 0
    for start, end, label_type in sorted(spans, key=lambda span: (span[0], span[1])):
        where = f"text {index}, entity ({start}, {end}, {label_type!r})"
        if f"B-{label_type}" not in label2id:
            known = sorted(label[2:] for label in label2id if label.startswith("B-"))
            raise ValueError(f"{where}: the model has no type {label_type!r} (its types: {', '.join(known)})")
        if not 0 <= start < end <= (char_spans[-1][1] if char_spans else 0):
            raise ValueError(f"{where}: not a non-empty span inside the text")
        if start < previous_end:
            raise ValueError(f"{where}: overlaps the entity before it")
        if start not in starts or end not in ends:
            raise ValueError(f"{where}: cuts a character that Unicode NFC composes (e.g. decomposed Hangul)")
        result.append((starts[start], ends[end], label_type))
        previous_end = end
    return result


def pad_inputs(rows: list[dict], pad_token_id: int | None, pad_to_multiple_of: int | None = None) -> dict:
    """Model input rows (`model_inputs`, `EncodedText.window`) as a batch of tensors, padded on the right, each key
    to its own longest length (rounded up to `pad_to_multiple_of`): `input_ids` with `pad_token_id`, `labels` with
    -100, `offset_mapping` with (0, 0), every other key with 0 (False for the boolean `tag_mask`); a key with one
    value per row (`overflow_to_sample_mapping`) gives a tensor of shape (rows,). The per-character keys (`char_*`,
    and `labels`, `tag_mask` with `tag_unit="character"`) are as long as the characters, not the tokens. A key whose
    values are tensors (a window's emissions, (length, tags), say) is padded along their first dimension, in their
    dtype."""
    pad_values = {"input_ids": pad_token_id or 0, "labels": IGNORE_INDEX, "offset_mapping": (0, 0)}
    batch = {}
    for key in rows[0]:
        values = [row[key] for row in rows]
        if isinstance(values[0], (list, tuple, torch.Tensor)):
            length = max(len(value) for value in values)
            if pad_to_multiple_of:
                length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
            pad = pad_values.get(key, 0)
            if isinstance(values[0], torch.Tensor):
                batch[key] = values[0].new_full((len(values), length, *values[0].shape[1:]), pad)
                for padded, value in zip(batch[key], values, strict=True):
                    padded[: len(value)] = value
                continue
            values = [list(value) + [pad] * (length - len(value)) for value in values]
        # Explicit dtypes: rows without characters to tag give empty lists, which torch would make float.
        tensor = torch.tensor(values, dtype=torch.bool if key == "tag_mask" else torch.long)
        batch[key] = tensor.reshape(len(rows), -1, 2) if key == "offset_mapping" else tensor
    return batch


@dataclass
class NerDataCollator:
    """The `data_collator` of a `Trainer` over model input rows (`model_inputs`, `data.tokenize_and_align`): pads
    them into a batch of tensors ([`pad_inputs`]).

    transformers' `DataCollatorForTokenClassification` pads `labels` to the token length, which is wrong for
    character labels; for token labels the two give the same batches (right padding).
    """

    pad_token_id: int | None
    pad_to_multiple_of: int | None = 8

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        return pad_inputs(features, self.pad_token_id, self.pad_to_multiple_of)


def _align(
    text: str, batch, index: int, char_positions: list[int] | None, uses_token_types: bool, morphemes: list[int] | None
) -> EncodedText:
    ids = batch["input_ids"][index]
    sequence_ids = batch.sequence_ids(index)
    content = [i for i, sequence_id in enumerate(sequence_ids) if sequence_id is not None]
    first = content[0] if content else len(ids)
    last = content[-1] + 1 if content else len(ids)
    if char_positions is None:
        spans = [_strip_space(text, *batch["offset_mapping"][index][i]) for i in content]
    else:
        word_ids = batch.word_ids(index)
        spans = [(char_positions[word_ids[i]], char_positions[word_ids[i]] + 1) for i in content]
    tagged = [start < end and (k + 1 == len(spans) or spans[k + 1][0] != start) for k, (start, end) in enumerate(spans)]
    return EncodedText(
        text=text,
        token_ids=[ids[i] for i in content],
        char_spans=spans,
        tagged=tagged,
        prefix_ids=list(ids[:first]),
        suffix_ids=list(ids[last:]) if content else [],
        type_id=(batch["token_type_ids"][index][first] if content else 0) if uses_token_types else None,
        morphemes=morphemes,
    )


def _strip_space(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    return start, end


def unit_labels(encoded: EncodedText, char_tags: list[str], tag_unit: str) -> list[str]:
    """Training targets: the tag of each unit's first character (for a token unit, KLUE-baseline's convention)."""
    return [char_tags[start] for start, _ in encoded.unit_spans(tag_unit)]


def entity_type(tag: str) -> str | None:
    """'B-PS' -> 'PS', 'I-PS' -> 'PS', 'O' -> None."""
    return tag[2:] if tag[:2] in ("B-", "I-") else None


def unit_tags_to_char_tags(text: str, unit_spans: list[tuple[int, int]], unit_tags: list[str]) -> list[str]:
    """The tag of every character of `text`, from the tags of its units (`EncodedText.unit_spans`)."""
    char_tags: list[str | None] = [None] * len(text)
    for (start, end), tag in zip(unit_spans, unit_tags, strict=True):
        label_type = entity_type(tag)
        char_tags[start] = tag
        char_tags[start + 1 : end] = [f"I-{label_type}" if label_type else OUTSIDE] * (end - start - 1)
    # A run of uncovered characters (spaces, characters the tokenizer dropped) continues the entity before it
    # only if that entity goes on right after the run.
    i = 0
    while i < len(text):
        if char_tags[i] is not None:
            i += 1
            continue
        run_end = i
        while run_end < len(text) and char_tags[run_end] is None:
            run_end += 1
        before = entity_type(char_tags[i - 1]) if i > 0 else None
        after = char_tags[run_end] if run_end < len(text) else OUTSIDE
        fill = after if before is not None and after == f"I-{before}" else OUTSIDE
        char_tags[i:run_end] = [fill] * (run_end - i)
        i = run_end
    return char_tags


def char_tags_to_spans(char_tags: list[str]) -> list[tuple[int, int, str]]:
    """BIO character tags -> (start, end, type) spans. An `I-X` that does not continue an `X` starts a new span."""
    spans: list[tuple[int, int, str]] = []
    for i, tag in enumerate(char_tags):
        label_type = entity_type(tag)
        if label_type is None:
            continue
        if tag.startswith("I-") and spans and spans[-1][1] == i and spans[-1][2] == label_type:
            spans[-1] = (spans[-1][0], i + 1, label_type)
        else:
            spans.append((i, i + 1, label_type))
    return spans


def spans_to_char_tags(length: int, spans) -> list[str]:
    """(start, end, type) spans -> BIO character tags of a text of `length` characters."""
    tags = [OUTSIDE] * length
    for start, end, label_type in spans:
        tags[start:end] = [f"B-{label_type}"] + [f"I-{label_type}"] * (end - start - 1)
    return tags


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def original_span(char_spans: list[tuple[int, int]] | None, start: int, end: int) -> tuple[int, int]:
    """The span of the caller's text that the characters [start, end) of the text the model reads come from, given
    the per-character spans of `nfc_with_offsets` (or `respaced_with_offsets`); None: the texts are the same."""
    return (start, end) if char_spans is None else (char_spans[start][0], char_spans[end - 1][1])


def nfc_with_offsets(text: str) -> tuple[str, list[tuple[int, int]]]:
    """`text` in Unicode NFC, and for each of its characters the span [start, end) of `text` it comes from.

    Vocabularies and KLUE hold composed Hangul: decomposed text (NFD, e.g. from macOS file names or some input
    methods) would be unknown jamo to a model, so it reads the NFC text, and the spans take every offset back into
    the caller's string. Only canonical composition: compatibility characters (full-width digits, ㈜) stay as they
    are. The spans are non-empty, consecutive and cover `text`; a composed character spans the characters it was
    composed from (김 from three jamo: one span of 3). The one departure from NFC: where NFC reorders combining
    marks so that a character cannot be traced to characters of its own, that run is kept as it was.

    A lone surrogate (U+D800 to U+DFFF: not a character, but a Python string can hold one, e.g. from a JSON
    `"\\ud800"` escape) becomes U+FFFD, the replacement character, one for one: tokenizers refuse surrogates, and the
    spans are unchanged.
    """
    text = LONE_SURROGATE.sub("\ufffd", text)
    if unicodedata.is_normalized("NFC", text):  # nearly every text: no work beyond this check
        return text, [(i, i + 1) for i in range(len(text))]
    pieces, spans = [], []
    for start, end in _composition_runs(text):
        run = text[start:end]
        composed = _nfc(run)
        # A composed character ends where the shortest prefix of the run that composes to it (and to the
        # characters before it) ends.
        ends = [
            next(p for p in range(1, len(run) + 1) if _nfc(run[:p]).startswith(composed[: k + 1]))
            for k in range(len(composed) - 1)
        ] + [len(run)]
        starts = [0, *ends[:-1]]
        if any(a >= b for a, b in zip(starts, ends, strict=True)):
            composed, starts, ends = run, range(len(run)), range(1, len(run) + 1)
        pieces.append(composed)
        spans += [(start + a, start + b) for a, b in zip(starts, ends, strict=True)]
    return "".join(pieces), spans


def respaced_with_offsets(
    text: str, spaced: str, spans: list[tuple[int, int]] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """`text` with the spacing of `spaced` (the same text re-spaced, e.g. by `kiwi_space`), and for each of its
    characters its span [start, end) in `text`, or, given `spans` (the span of each character of `text` in the
    caller's string, as `nfc_with_offsets` gives them), in the caller's string.

    Only the spacing comes from `spaced`: every other character is `text`'s own, so offsets stay exact even where the
    re-spacer changed a character (Kiwi writes some nouns in its own form). A gap between two characters of `text`
    that are not whitespace takes `spaced`'s spacing where `spaced` holds the two next to each other (matched by
    `difflib` where the two texts differ beyond whitespace): whitespace of `text` is kept where `spaced` has some
    there and removed where it has none; where `text` has none and `spaced` has some, one space is inserted, spanning
    nothing: (p, p), p where the next character's span starts. Other gaps, and whitespace before the first or after
    the last character, stay as they are. The spans are non-decreasing and do not overlap; a character kept has its
    own span.
    """
    spans = [(i, i + 1) for i in range(len(text))] if spans is None else spans
    kept = [i for i, char in enumerate(text) if not char.isspace()]
    others = [j for j, char in enumerate(spaced) if not char.isspace()]
    ours, theirs = [text[i] for i in kept], [spaced[j] for j in others]
    if ours == theirs:
        match = dict(enumerate(range(len(theirs))))
    else:
        blocks = difflib.SequenceMatcher(None, ours, theirs, autojunk=False).get_matching_blocks()
        match = {block.a + d: block.b + d for block in blocks for d in range(block.size)}
    characters, new_spans = [], []

    def keep(start: int, end: int) -> None:
        characters.extend(text[start:end])
        new_spans.extend(spans[start:end])

    keep(0, kept[0] if kept else len(text))
    for k, i in enumerate(kept):
        if k > 0:
            gap = (kept[k - 1] + 1, i)  # the whitespace of `text` between the two characters
            if k - 1 in match and match.get(k) == match[k - 1] + 1:
                spaced_gap = spaced[others[match[k - 1]] + 1 : others[match[k]]]
                if spaced_gap and gap[0] == gap[1]:
                    characters.append(" ")
                    new_spans.append((spans[i][0], spans[i][0]))
                elif spaced_gap:
                    keep(*gap)
            else:
                keep(*gap)
        keep(i, i + 1)
    if kept:
        keep(kept[-1] + 1, len(text))
    return "".join(characters), new_spans


KIWI_MISSING = (
    "{purpose} with Kiwi (kiwipiepy, a Korean morphological analyser), which is not installed: pip install kiwipiepy"
)


@cache
def _kiwi():
    """The process's Kiwi, None without kiwipiepy."""
    try:  # (an import inside try/except is one transformers does not require of remote code)
        from kiwipiepy import Kiwi
    except ImportError:
        return None
    return Kiwi(num_workers=1)  # `space` of one text runs on one thread whatever this is; -1 starts one per core


def _loaded_kiwi(purpose: str):
    """The process's Kiwi (kiwipiepy, LGPL-3.0: an optional dependency, imported and loaded on first use, once per
    process), or an ImportError saying that `purpose` needs it and how to install it."""
    kiwi = _kiwi()
    if kiwi is None:
        raise ImportError(KIWI_MISSING.format(purpose=purpose))
    return kiwi


def kiwi_space(text: str) -> str:
    """`text` re-spaced by Kiwi's `Kiwi.space` (ImportError with the install command when kiwipiepy is missing)."""
    return _loaded_kiwi("respace=True re-spaces texts").space(text)


MORPHEME_TAGS = (
    "NNG", "NNP", "NNB", "NR", "NP", "VV", "VA", "VX", "VCP", "VCN", "MM", "MAG", "MAJ", "IC",
    "JKS", "JKC", "JKG", "JKO", "JKB", "JKV", "JKQ", "JX", "JC", "EP", "EF", "EC", "ETN", "ETM",
    "XPN", "XSN", "XSV", "XSA", "XSM", "XR", "SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "SB", "SL", "SH", "SN",
    "UN", "W_URL", "W_EMAIL", "W_HASHTAG", "W_MENTION", "W_SERIAL", "W_EMOJI", "Z_CODA", "Z_SIOT",
)  # fmt: skip
"""Kiwi's part-of-speech tags (kiwipiepy's tag set, its user-dictionary tags USER0-4 aside), numbered by their place
here in the codes of `morpheme_codes`: append only, as a trained model's morpheme embedding has a row per code. Kiwi
marks a verb or adjective as regular or irregular (VV-R, VA-I, ...): that suffix is dropped. Any tag not here (a
newer Kiwi's) has one shared index, `len(MORPHEME_TAGS)`."""

MORPHEME_CODES = 1 + 4 * (len(MORPHEME_TAGS) + 1)
"""How many morpheme codes there are (`morpheme_codes`): 0, then four per tag and for the tags not in the list."""


def morpheme_codes(texts: list[str]) -> list[list[int]]:
    """For each character of each text, a code of the morphemes Kiwi finds there (one batched `Kiwi.tokenize` call):
    0 where no morpheme covers it (spaces), else 1 + 4 * tag + 2 * starts + ends, `tag` the index in `MORPHEME_TAGS`
    of the first morpheme covering the character, `starts` / `ends` whether any morpheme starts / ends there.

    Several morphemes can cover one character: 했 is 하/VV + 었/EP, so its code is VV's, starting and ending. A morpheme
    Kiwi restores without a character of its own (the 이/VCP of 영화다) covers none and marks nothing. Kiwi's offsets
    count the code points of the string it is given, so the codes line up with the text's characters. Needs kiwipiepy
    (ImportError with the install command when it is missing).
    """
    kiwi = _loaded_kiwi("morpheme_features=True (in the model's config) analyses each text")
    return [_morpheme_codes(text, tokens) for text, tokens in zip(texts, kiwi.tokenize(texts), strict=True)]


_TAG_INDEX = {tag: index for index, tag in enumerate(MORPHEME_TAGS)}


def _morpheme_codes(text: str, tokens) -> list[int]:
    """The codes of `text`'s characters (`morpheme_codes`) from Kiwi's tokens of it."""
    tags: list[int | None] = [None] * len(text)
    starts, ends = [False] * len(text), [False] * len(text)
    for token in tokens:
        if token.len == 0:
            continue
        first, last = token.start, token.start + token.len - 1
        starts[first] = ends[last] = True
        tag = _TAG_INDEX.get(token.tag.split("-")[0], len(MORPHEME_TAGS))
        for i in range(first, last + 1):
            if tags[i] is None:
                tags[i] = tag
    return [
        0 if tag is None else 1 + 4 * tag + 2 * start + end for tag, start, end in zip(tags, starts, ends, strict=True)
    ]


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _composition_runs(text: str):
    """[start, end) runs of `text` that NFC composes independently of each other: a run ends before a character
    whose decomposition begins with a starter (no mark after it can reach back over it) and that does not compose
    with the run (as a vowel jamo composes with the consonant before it)."""
    start = 0
    for i in range(1, len(text)):
        char = text[i]
        starter = unicodedata.combining(unicodedata.normalize("NFD", char)[0]) == 0
        if starter and _nfc(text[start : i + 1]) == _nfc(text[start:i]) + _nfc(char):
            yield start, i
            start = i
    if text:
        yield start, len(text)


# Extended grapheme clusters (Unicode UAX #29): what a reader sees as one character, e.g. a flag (two regional
# indicators), an emoji with a skin tone (a modifier), a family (emoji joined by U+200D ZERO WIDTH JOINER), a letter
# with combining marks, a Hangul syllable written in jamo (but see `_HANGUL_JOINS`). Entity offsets are snapped to
# them. The standard library has no Grapheme_Cluster_Break property, so the classes below come from the general
# category and a few ranges; they cover the rules GB3-GB9a, GB11 and GB12-GB13. Not covered: Prepend (GB9b: a few
# Arabic and Indic prepended marks) and Indic conjuncts (GB9c), where a boundary may remain inside such a cluster.
# Extended_Pictographic (GB11, which only decides whether a ZERO WIDTH JOINER joins two pictographs) is approximated
# by the category So (other symbol), the unassigned code points of the emoji planes' U+1F000-U+1FFFD, and four
# punctuation emoji (‼ ⁉ 〰 〽).
_ZWJ = "\u200d"
_EXTEND_EXTRA = {"\u200c", "\uff9e", "\uff9f"}  # ZERO WIDTH NON-JOINER, the halfwidth katakana sound marks
_PICTOGRAPHIC_PUNCTUATION = {"\u203c", "\u2049", "\u3030", "\u303d"}
_CONTROL_CATEGORIES = {"Cc", "Cf", "Zl", "Zp"}
# GB6-GB8: the Hangul jamo classes that continue a syllable of each class; but not after a precomposed syllable (LV,
# LVT), a departure from UAX #29: Korean text writes emoticons with conjoining vowel jamo right after a syllable
# (갓무스ᅮᅮ, "crying"), which the rule would join to it and so pull into a name; KLUE labels them apart. In NFC text, the
# text the model reads, a syllable and a jamo left side by side never make one letter (NFC would have composed them).
_HANGUL_JOINS = {"L": {"L", "V", "LV", "LVT"}, "V": {"V", "T"}, "T": {"T"}}


def _grapheme_class(char: str) -> str:
    """The Grapheme_Cluster_Break class of `char` as far as the rules above need it (spacing marks count as Extend)."""
    code = ord(char)
    if char in "\r\n":
        return char
    if char == _ZWJ:
        return "ZWJ"
    if 0x1F1E6 <= code <= 0x1F1FF:
        return "RI"
    category = unicodedata.category(char)
    modifier_or_tag = 0x1F3FB <= code <= 0x1F3FF or 0xE0020 <= code <= 0xE007F  # skin tones; subdivision flags' tags
    if category in ("Mn", "Me", "Mc") or char in _EXTEND_EXTRA or modifier_or_tag:
        return "Extend"
    if category in _CONTROL_CATEGORIES:
        return "Control"
    if 0x1100 <= code <= 0x115F or 0xA960 <= code <= 0xA97C:
        return "L"
    if 0x1160 <= code <= 0x11A7 or 0xD7B0 <= code <= 0xD7C6:
        return "V"
    if 0x11A8 <= code <= 0x11FF or 0xD7CB <= code <= 0xD7FB:
        return "T"
    if 0xAC00 <= code <= 0xD7A3:
        return "LV" if (code - 0xAC00) % 28 == 0 else "LVT"
    if category == "So" or char in _PICTOGRAPHIC_PUNCTUATION or (0x1F000 <= code <= 0x1FFFD and category == "Cn"):
        return "Pictographic"
    return "Other"


def is_grapheme_boundary(text: str, i: int) -> bool:
    """Whether an extended grapheme cluster of `text` starts at offset `i` (0 <= i <= len(text); both ends are)."""
    if i <= 0 or i >= len(text):
        return True
    before, after = _grapheme_class(text[i - 1]), _grapheme_class(text[i])
    if before == "\r" and after == "\n":  # GB3
        return False
    if before in ("\r", "\n", "Control") or after in ("\r", "\n", "Control"):  # GB4, GB5
        return True
    if after in _HANGUL_JOINS.get(before, ()) or after in ("Extend", "ZWJ"):  # GB6-GB9a
        return False
    if before == "ZWJ" and after == "Pictographic":  # GB11: pictograph Extend* ZWJ × pictograph
        k = i - 2
        while k >= 0 and _grapheme_class(text[k]) == "Extend":
            k -= 1
        return not (k >= 0 and _grapheme_class(text[k]) == "Pictographic")
    if before == after == "RI":  # GB12, GB13: flags pair regional indicators from the start of their run
        k = i - 1
        while k >= 0 and _grapheme_class(text[k]) == "RI":
            k -= 1
        return (i - 1 - k) % 2 == 0
    return True


def snap_to_graphemes(text: str, spans: list[tuple]) -> list[tuple]:
    """`spans` (`(start, end, ...)` into `text`, sorted and disjoint) widened to whole extended grapheme clusters: a
    start moves back and an end forward to the nearest cluster boundary, and spans that then share a cluster merge
    into the first of them (its other fields kept). So a flag, an emoji with its skin tone, a ZWJ sequence or a
    letter with its combining marks is never cut by an entity boundary."""
    snapped: list[tuple] = []
    for start, end, *rest in spans:
        while not is_grapheme_boundary(text, start):
            start -= 1
        while not is_grapheme_boundary(text, end):
            end += 1
        if snapped and start < snapped[-1][1]:
            snapped[-1] = (snapped[-1][0], max(end, snapped[-1][1]), *snapped[-1][2:])
        else:
            snapped.append((start, end, *rest))
    return snapped
