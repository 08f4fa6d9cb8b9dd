"""Token-classification pipeline that decodes with the CRF (shipped to the Hub as remote code).

Differences from transformers' built-in `TokenClassificationPipeline`, same output format:

- tags are the Viterbi path of the CRF (constrained to valid BIO), not the argmax of the logits; a token's `score`
  is the CRF marginal probability of its tag;
- `start`/`end` are character offsets into the input string and `word == text[start:end]`; the model reads the
  text in Unicode NFC (decomposed Hangul composed, `alignment.nfc_with_offsets`), the offsets stay the input's;
- texts longer than `config.max_length` tokens are tagged whole, through overlapping windows (nothing is cut);
- entity spans always follow the character tags: a Korean particle glued to a name (서울시**에서**) stays outside
  the entity, so the word-based strategies cannot widen an entity to the whole space-separated word; but they never
  cut a grapheme cluster (a flag, an emoji with its skin tone or ZWJ sequence, a letter with its combining marks):
  an entity widens to the whole cluster (`alignment.snap_to_graphemes`), and with `aggregation_strategy="none"` the
  units of one cluster are one entry;
- an entity's `score` (every aggregating strategy: `simple`, `first`, `average`, `max` give the same spans and
  scores) is the probability the CRF puts on exactly that entity: B-X at its first unit, I-X through its last, no
  I-X right after it (`LinearChainCRF.entity_probabilities`), not a mean of per-token scores;
- `respace=True` re-spaces each text with Kiwi (`pip install kiwipiepy`) before the model reads it (only its spaces
  change, `alignment.respaced_with_offsets`), for text written without spaces or with wrong ones; offsets stay the
  caller's;
- `return_sequence_probability=True` makes each text's result `{"entities": [...], "sequence_probability": p}`,
  p = P(decoded tags | text) (`LinearChainCRF.sequence_probability`), e.g. to keep only confident pseudo-labels;
- `top_k=k` returns the k most probable analyses of each text, best first, each `{"entities": [...],
  "probability": P(tags | text)}` (exact k-best Viterbi, `LinearChainCRF.k_best`); fewer where the text has fewer;
- `constraints=[{"start": 0, "end": 4, "label": "OG"}, ...]` (character offsets of one text) re-tags the text under
  them: `label` a type (the span is exactly one entity of that type), `"ANY"` (exactly one entity, of any type) or
  `"O"` (no entity starts, ends or lies there). Decoding is exact Viterbi over the constrained lattice, and every
  probability and score is conditioned on the constraints (each analysis lists them under `"conditioned_on"`);
  contradictory or out-of-range constraints are a ValueError;
- `lexicon={"삼성전자": "OG", ...}` (or a file: JSON mapping, or lines `surface<TAB>type`) marks the longest matches in
  each text (left to right, whole grapheme clusters): `lexicon_mode="hard"` (the default) makes each match a
  constraint, `"soft"` adds `LEXICON_BONUS` to the emission scores of its tags, which the CRF may overrule;
- with `batch_size` > 1, texts are batched in order of their number of tokens (a list whole, an iterator
  `batch_size` × `SORTED_BATCHES` texts at a time), so that a batch pads its windows little; results come back in
  the caller's order, an iterator's still streaming.
"""

import json
import logging
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import torch
from transformers.pipelines.base import ChunkPipeline
from transformers.pipelines.token_classification import AggregationStrategy

from .alignment import (
    EncodedText,
    char_tags_to_spans,
    encode_texts,
    is_grapheme_boundary,
    kiwi_space,
    nfc_with_offsets,
    original_span,
    respaced_with_offsets,
    snap_to_graphemes,
    unit_tags_to_char_tags,
)
from .crf import IGNORE_INDEX

logger = logging.getLogger(__name__)
TASK = "token-classification"
# Batches an iterator's texts are sorted among: more pad less, fewer keep its results streaming sooner.
SORTED_BATCHES = 16
# Added by `lexicon_mode="soft"` to the emission scores of a lexicon match's tags (B-X, then I-X): the CRF keeps them
# unless the rest of the evidence outweighs it.
LEXICON_BONUS = 4.0
# Constraint labels beside the entity types: exactly one entity of any type; no entity.
ANY_ENTITY, NO_ENTITY = "ANY", ("O", "NONE")


class _Text(NamedTuple):
    """A caller's text as the model reads it (`KoElectraCrfTokenClassificationPipeline._read`): `encoded`, the tokens
    of its NFC form, and `original_spans`, the span of `sentence` each character of that form comes from (None where
    NFC left the text as it was)."""

    sentence: str
    encoded: EncodedText
    original_spans: list[tuple[int, int]] | None


class KoElectraCrfTokenClassificationPipeline(ChunkPipeline):
    """Named-entity recognition with a [`KoElectraCrfForTokenClassification`] model: Viterbi tags, CRF-marginal
    scores, character offsets, whole texts through windows (see the module docstring).

    Built like any pipeline: `KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)`, or
    `pipeline("token-classification", model=folder, trust_remote_code=True)` for a folder written by the model's
    `save_pretrained` (which this pipeline's `save_pretrained` and `push_to_hub` call). A `ChunkPipeline`: one text
    becomes one model input per window, and the windows of a text come back together to `postprocess`. It takes the
    arguments and returns the output format of the built-in `TokenClassificationPipeline` (`aggregation_strategy`,
    `ignore_labels`, and `stride`: tokens shared by consecutive windows, the config's `stride` by default), but none
    of its hooks.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def _sanitize_parameters(
        self,
        ignore_labels=None,
        aggregation_strategy=None,
        stride=None,
        return_sequence_probability=None,
        respace=None,
        top_k=None,
        constraints=None,
        lexicon=None,
        lexicon_mode=None,
        **unsupported,
    ):
        # Offsets come from the tokenizer, windows from the model's config (`stride` overrides its stride).
        if unsupported:
            raise ValueError(
                f"{sorted(unsupported)} not supported: pass plain strings; long texts are windowed with the "
                f"model's max_length={self.model.config.max_length} and stride={self.model.config.stride} "
                "(`stride=` sets another)"
            )
        preprocess_params = {}
        if stride is not None:
            # The upper bound (the tokens a window holds) depends on the tokenizer: `EncodedText.windows` checks it.
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
                raise ValueError(f"stride must be a non-negative int (tokens shared by windows), got {stride!r}")
            preprocess_params["stride"] = stride
        if respace is not None:
            if respace:
                kiwi_space("")  # loads Kiwi now: a missing kiwipiepy fails here with its install command
            preprocess_params["respace"] = bool(respace)
        postprocess_params, forward_params = {}, {}
        if aggregation_strategy is not None:
            if isinstance(aggregation_strategy, str):
                valid = [strategy.value for strategy in AggregationStrategy]
                if aggregation_strategy.lower() not in valid:
                    raise ValueError(f"unknown aggregation_strategy {aggregation_strategy!r}: use one of {valid}")
                aggregation_strategy = AggregationStrategy(aggregation_strategy.lower())
            postprocess_params["aggregation_strategy"] = aggregation_strategy
            # Token scores (CRF marginals, a forward-backward pass per batch) only where they are output: the other
            # strategies score each entity by its own probability.
            forward_params["with_scores"] = aggregation_strategy == AggregationStrategy.NONE
        if ignore_labels is not None:
            postprocess_params["ignore_labels"] = ignore_labels
        if return_sequence_probability is not None:
            postprocess_params["return_sequence_probability"] = bool(return_sequence_probability)
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive int (the number of analyses), got {top_k!r}")
            postprocess_params["top_k"] = top_k
        if constraints is not None:
            postprocess_params["constraints"] = [self._checked_constraint(c) for c in constraints]
        if lexicon is not None:
            postprocess_params["lexicon"] = self._read_lexicon(lexicon)
        if lexicon_mode is not None:
            if lexicon_mode not in ("hard", "soft"):
                raise ValueError(f"lexicon_mode must be 'hard' or 'soft', got {lexicon_mode!r}")
            postprocess_params["lexicon_mode"] = lexicon_mode
        if _controls(top_k, postprocess_params.get("constraints"), postprocess_params.get("lexicon")):
            forward_params["decode"] = False  # `postprocess` decodes under the call's controls, once
        return preprocess_params, forward_params, postprocess_params

    def _checked_constraint(self, constraint) -> tuple[int, int, str]:
        """`(start, end, label)` of a constraint `{"start": int, "end": int, "label": type | "ANY" | "O"}`."""
        types = {label[2:] for label in self.model.config.label_names if label != "O"}
        if not isinstance(constraint, dict) or set(constraint) != {"start", "end", "label"}:
            raise ValueError(f'a constraint is {{"start": int, "end": int, "label": str}}, got {constraint!r}')
        start, end, label = constraint["start"], constraint["end"], constraint["label"]
        if any(isinstance(x, bool) or not isinstance(x, int) for x in (start, end)) or not 0 <= start < end:
            raise ValueError(f"a constraint needs character offsets 0 <= start < end, got {constraint!r}")
        if label not in types and label != ANY_ENTITY and label not in NO_ENTITY:
            choices = sorted(types) + [ANY_ENTITY, *NO_ENTITY]
            raise ValueError(f"a constraint's label must be one of {choices}, got {label!r}")
        return start, end, label

    def _read_lexicon(self, lexicon) -> dict[str, str]:
        """The lexicon `{surface form: type}`, from a mapping or a file (JSON mapping, or `surface<TAB>type` lines)."""
        if isinstance(lexicon, str | Path):
            path, lexicon = Path(lexicon), {}
            content = path.read_text(encoding="utf-8")
            if path.suffix == ".json":
                lexicon = json.loads(content)
            for number, line in enumerate([] if path.suffix == ".json" else content.splitlines(), 1):
                if line.strip():
                    surface, tab, label = line.rpartition("\t")
                    if not tab or not surface.strip():
                        raise ValueError(f"{path}: line {number} is not 'surface<TAB>type': {line!r}")
                    lexicon[surface.strip()] = label.strip()
        if not isinstance(lexicon, dict):
            raise ValueError(f"lexicon must be a mapping of surface forms to types or a file, got {type(lexicon)}")
        types = {label[2:] for label in self.model.config.label_names if label != "O"}
        unknown = sorted({label for label in lexicon.values() if label not in types})
        if unknown:
            raise ValueError(f"the lexicon's types {unknown} are not the model's ({sorted(types)})")
        return {surface: label for surface, label in lexicon.items() if surface.strip()}

    def preprocess(self, sentence: str | _Text, stride: int | None = None, respace: bool = False, **_):
        # A list's texts come read already (`__call__` reads them to sort them); any other text is read here.
        text = sentence if isinstance(sentence, _Text) else self._read([sentence], respace)[0]
        config, encoded = self.model.config, text.encoded
        windows = encoded.windows(config.max_length, config.stride if stride is None else stride)
        for n, (start, end) in enumerate(windows):
            yield {
                **{
                    # An explicit dtype: a text without characters to tag gives empty lists, which torch makes float.
                    name: torch.tensor([values], dtype=torch.bool if name == "tag_mask" else torch.long)
                    for name, values in encoded.window(start, end, config.tag_unit).items()
                },
                # Whether this window is the whole text: only then is it decoded on its own (`_forward`).
                "whole_text": len(windows) == 1,
                "window": (start, end),
                "encoded": encoded if n == 0 else None,
                "sentence": text.sentence if n == 0 else None,
                "original_spans": text.original_spans if n == 0 else None,
                "is_last": n == len(windows) - 1,
            }

    def _read(self, sentences: list[str], respace: bool = False) -> list[_Text]:
        """Each text as the model reads it, tokenized in one batched call: its NFC form (decomposed Hangul would be
        unknown jamo to the model), re-spaced by Kiwi with `respace`, whose offsets `postprocess` maps back into the
        caller's string; with `config.morpheme_features` analysed by Kiwi too, as it is read (re-spaced, if so)."""
        for sentence in sentences:
            if not isinstance(sentence, str):
                raise ValueError(f"expected a string, got {type(sentence).__name__}")
        normalized = [nfc_with_offsets(sentence) for sentence in sentences]
        if respace:
            normalized = [respaced_with_offsets(text, kiwi_space(text), spans) for text, spans in normalized]
        config = self.model.config
        encoded = encode_texts(
            [text for text, _ in normalized], self.tokenizer, config.encoder_tokenization, config.morpheme_features
        )
        return [
            # No spans when the text is NFC already (offsets unchanged): a list of a span per character is walked
            # item by item each time the pipeline moves a batch between devices.
            _Text(sentence, encoded_text, spans if text != sentence else None)
            for sentence, (text, spans), encoded_text in zip(sentences, normalized, encoded, strict=True)
        ]

    def _forward(self, model_inputs, with_scores: bool = True, decode: bool = True):
        """Emissions of a batch of windows and, `decode`, the tags and scores of the rows that hold a whole text
        (`_tags_and_scores`); a call with top_k, constraints or a lexicon decodes in `postprocess` only."""
        passed_on = {
            key: model_inputs.pop(key) for key in ("window", "encoded", "sentence", "original_spans", "is_last")
        }
        whole_text = model_inputs.pop("whole_text")  # one per row: a list, or a bare value with batch_size=1
        tag_mask = model_inputs["tag_mask"].bool()
        rows = torch.tensor(whole_text if isinstance(whole_text, list) else [whole_text], device=tag_mask.device)
        outputs = self.model(**model_inputs, return_predictions=False)
        decoded = self._tags_and_scores(outputs.logits, tag_mask, rows, with_scores) if decode else {}
        return {"emissions": outputs.logits, **decoded, "tag_mask": tag_mask, **passed_on}

    def _tags_and_scores(self, emissions, tag_mask, rows, with_scores: bool = True) -> dict:
        """Viterbi tags (B, T) and, `with_scores`, each tag's marginal probability (B, T), for the `rows` (B,) bool
        that hold a whole text; the windows of a longer text are decoded and scored only once stitched
        (`_unit_predictions`), and their rows here hold no tags (-100) and scores of 0."""
        tagger = self.model.tagger
        predictions = torch.full(tag_mask.shape, IGNORE_INDEX, dtype=torch.long, device=emissions.device)
        if rows.any():
            predictions[rows] = tagger.decode(emissions[rows], tag_mask[rows])
        if not with_scores:
            return {"predictions": predictions, "scores": None}
        scores = torch.zeros(tag_mask.shape, device=emissions.device)
        if rows.any():
            probabilities = tagger.tag_probabilities(emissions[rows], tag_mask[rows])
            scores[rows] = probabilities.gather(-1, predictions[rows].clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return {"predictions": predictions, "scores": scores}

    def postprocess(
        self,
        all_outputs,
        aggregation_strategy=AggregationStrategy.NONE,
        ignore_labels=None,
        return_sequence_probability: bool = False,
        top_k: int | None = None,
        constraints: list[tuple[int, int, str]] | None = None,
        lexicon: dict[str, str] | None = None,
        lexicon_mode: str = "hard",
    ):
        sentence, encoded, char_spans = (all_outputs[0][key] for key in ("sentence", "encoded", "original_spans"))
        tag_unit = self.model.config.tag_unit
        with_scores = aggregation_strategy == AggregationStrategy.NONE  # entities are scored by their own probability
        if not _controls(top_k, constraints, lexicon):
            emissions, tag_ids, scores = self._unit_predictions(all_outputs, encoded, tag_unit, with_scores)
            entities = self._entities(encoded, char_spans, sentence, emissions, tag_ids, scores, aggregation_strategy,
                                      ignore_labels)  # fmt: skip
            if not return_sequence_probability:
                return entities
            tag_mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
            decoded = torch.tensor([tag_ids], device=emissions.device)
            probability = self.model.tagger.sequence_probability(emissions, decoded, tag_mask)[0].item()
            return {"entities": entities, "sequence_probability": probability}

        emissions = self._unit_emissions(all_outputs, encoded, tag_unit)
        # Units as spans of the caller's string (`char_spans`, if any, lead from the NFC text back to `sentence`).
        unit_spans = [original_span(char_spans, *span) for span in encoded.unit_spans(tag_unit)]
        constraints = list(constraints or [])
        if lexicon:
            matches = lexicon_matches(sentence, lexicon)
            if lexicon_mode == "soft":
                emissions = emissions + self._lexicon_bonus(emissions, unit_spans, matches)
            else:  # a match whose edges cut a unit (a token glued to a particle) cannot be an entity: left out
                starts = [start for start, _ in unit_spans]
                aligned = [match for match in matches if _aligned(unit_spans, starts, match)]
                if len(aligned) < len(matches):
                    cut = [sentence[match[0] : match[1]] for match in matches if match not in aligned]
                    logger.warning("lexicon: %s cut a token of the model (tag_unit='token'): left out", cut)
                constraints += aligned
        allowed_tags = self._allowed_tags(emissions, unit_spans, constraints, len(sentence))
        tagger, tag_mask = self.model.tagger, torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        tags, probabilities = tagger.k_best(emissions, tag_mask, top_k or 1, allowed_tags)
        marginals = tagger.tag_probabilities(emissions, tag_mask, allowed_tags)[0] if with_scores else None
        conditioned_on = [{"start": start, "end": end, "label": label} for start, end, label in constraints]
        analyses = []
        for tag_ids, probability in zip(tags[0].tolist(), probabilities[0].tolist(), strict=True):
            if analyses and all(tag == IGNORE_INDEX for tag in tag_ids):  # the text has fewer analyses than top_k
                break
            scores = marginals[torch.arange(len(tag_ids)), tag_ids].tolist() if with_scores else None
            entities = self._entities(encoded, char_spans, sentence, emissions, tag_ids, scores, aggregation_strategy,
                                      ignore_labels, allowed_tags)  # fmt: skip
            analysis = {"entities": entities, "probability": probability}
            analyses.append({**analysis, "conditioned_on": conditioned_on} if conditioned_on else analysis)
        if top_k is not None:
            return analyses
        if return_sequence_probability:
            best = analyses[0]
            return {"entities": best["entities"], "sequence_probability": best["probability"],
                    **({"conditioned_on": conditioned_on} if conditioned_on else {})}  # fmt: skip
        return analyses[0]["entities"]

    def _entities(
        self,
        encoded: EncodedText,
        char_spans: list[tuple[int, int]] | None,
        sentence: str,
        emissions: torch.Tensor,
        tag_ids: list[int],
        scores: list[float] | None,
        aggregation_strategy=AggregationStrategy.NONE,
        ignore_labels=None,
        allowed_tags: torch.Tensor | None = None,
    ) -> list[dict]:
        """The output entries of one analysis (tag ids of the text's units, with `scores` for the strategy "none")
        of the text `encoded` (its NFC form; `char_spans`, if any, lead back to `sentence`)."""
        ignore_labels = ["O"] if ignore_labels is None else ignore_labels
        text = encoded.text

        def original(start: int, end: int) -> dict:
            """`word`, `start`, `end` in `sentence` of the characters [start, end) of `text`."""
            start, end = original_span(char_spans, start, end)
            return {"word": sentence[start:end], "start": start, "end": end}

        tag_unit = self.model.config.tag_unit
        id2label = self.model.config.id2label  # (once: a config attribute read goes through transformers' hooks)
        tags = [id2label[t] for t in tag_ids]
        unit_spans = encoded.unit_spans(tag_unit)

        if aggregation_strategy == AggregationStrategy.NONE:
            # One entry per unit (token or character); `index` is the position of its token in the model's input.
            # The units of one grapheme cluster (a flag's two code points, say) are one entry: the first one's.
            positions = [len(encoded.prefix_ids) + k for k in encoded.unit_tokens(tag_unit)]
            units = snap_to_graphemes(text, [(start, end, u) for u, (start, end) in enumerate(unit_spans)])
            return [
                {"entity": tags[u], "score": scores[u], "index": positions[u], **original(start, end)}
                for start, end, u in units
                if tags[u] not in ignore_labels
            ]
        spans = char_tags_to_spans(unit_tags_to_char_tags(text, unit_spans, tags))
        spans = snap_to_graphemes(text, spans)  # no entity boundary inside a grapheme cluster
        spans = [span for span in spans if span[2] not in ignore_labels]
        probabilities = self._entity_probabilities(emissions, unit_spans, spans, allowed_tags)
        return [
            {"entity_group": label_type, "score": probability, **original(start, end)}
            for (start, end, label_type), probability in zip(spans, probabilities, strict=True)
        ]

    def _allowed_tags(
        self,
        emissions: torch.Tensor,
        unit_spans: list[tuple[int, int]],
        constraints: list[tuple[int, int, str]],
        length: int,
    ) -> torch.Tensor | None:
        """The tags each unit may take (1, U, K) under `constraints` (start, end, label) in offsets of the caller's
        text of `length` characters, whose units span `unit_spans`; None without constraints.

        A constrained entity covers the units that start inside its span, which must begin at its start and end at its
        end: B-X at the first (any B- for "ANY"), I-X through the last (any I-), and no I- right after it (BIO allows
        no other type's I- there, so this is "no I-X"). "O" leaves only O to every unit that overlaps the span.
        """
        if not constraints:
            return None
        label_names = self.model.config.label_names
        allowed = torch.ones(len(unit_spans), len(label_names), dtype=torch.bool)
        starts, ends = [start for start, _ in unit_spans], [end for _, end in unit_spans]
        is_begin, is_inside = (torch.tensor([name.startswith(prefix) for name in label_names]) for prefix in "BI")
        is_outside = ~(is_begin | is_inside)

        for start, end, label in constraints:
            constraint = {"start": start, "end": end, "label": label}
            if end > length:
                raise ValueError(f"constraint {constraint} is out of range: the text has {length} characters")
            if label in NO_ENTITY:
                # The units overlapping [start, end): sorted and disjoint, their ends are sorted too.
                allowed[bisect_right(ends, start) : bisect_left(starts, end)] &= is_outside
            else:
                if not _aligned(unit_spans, starts, (start, end)):
                    raise ValueError(
                        f"constraint {constraint} does not start and end at the edges of the model's units (a "
                        f"{self.model.config.tag_unit} unit of the text): an entity there cannot be represented"
                    )
                first, stop = bisect_left(starts, start), bisect_left(starts, end)
                of_type = ~is_outside if label == ANY_ENTITY else torch.tensor([n[2:] == label for n in label_names])
                allowed[first] &= is_begin & of_type
                allowed[first + 1 : stop] &= is_inside & of_type
                if stop < len(unit_spans):
                    allowed[stop] &= ~(is_inside & of_type)
            if not allowed.any(-1).all():
                raise ValueError(f"constraint {constraint} contradicts the constraints before it")
        return allowed.unsqueeze(0).to(emissions.device)

    def _lexicon_bonus(
        self, emissions: torch.Tensor, unit_spans: list[tuple[int, int]], matches: list[tuple[int, int, str]]
    ) -> torch.Tensor:
        """`LEXICON_BONUS` (1, U, K) on the tags of the lexicon `matches` (B-X at a match's first unit, I-X on the
        others), for the units that start inside each match."""
        bonus = torch.zeros_like(emissions)
        starts, label2id = [start for start, _ in unit_spans], self.model.config.label2id
        for start, end, label in matches:
            first, stop = bisect_left(starts, start), bisect_left(starts, end)
            if first < stop:
                bonus[0, first, label2id[f"B-{label}"]] += LEXICON_BONUS
                bonus[0, first + 1 : stop, label2id[f"I-{label}"]] += LEXICON_BONUS
        return bonus

    def _entity_probabilities(
        self,
        emissions: torch.Tensor,
        unit_spans: list[tuple[int, int]],
        spans: list[tuple[int, int, str]],
        allowed_tags: torch.Tensor | None = None,
    ) -> list[float]:
        """The model's probability of each entity (character span and type), from the emissions (1, U, K) of the
        text's units, conditioned on `allowed_tags` (1, U, K) if given: an entity covers the units that start inside
        its span."""
        unit_starts = [start for start, _ in unit_spans]
        label2id = self.model.config.label2id
        rows = [
            (0, bisect_left(unit_starts, start), bisect_left(unit_starts, end), label2id[f"B-{t}"], label2id[f"I-{t}"])
            for start, end, t in spans
        ]
        if not rows:
            return []
        tag_mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        unit_rows = torch.tensor(rows, device=emissions.device)
        return self.model.tagger.entity_probabilities(emissions, tag_mask, unit_rows, allowed_tags).tolist()

    def _unit_emissions(self, all_outputs, encoded: EncodedText, tag_unit: str) -> torch.Tensor:
        """Emissions (1, U, K) of the U units of the text (`EncodedText.unit_spans`).

        A window's units are the True positions of its `tag_mask`, in text order. Of several windows, each unit's
        emissions come from the window where the unit's token has the most context on both sides; the CRF then
        decodes the whole text at once, so window seams cannot break an entity.
        """
        if len(all_outputs) == 1:
            output = all_outputs[0]
            return output["emissions"][0][output["tag_mask"][0]].unsqueeze(0)

        unit_tokens = encoded.unit_tokens(tag_unit)  # non-decreasing: a window's units are one slice of them
        windows = [output["window"] for output in all_outputs]  # (start, end) content tokens, starts increasing
        starts = [start for start, _ in windows]
        # All windows' unit emissions in one tensor; window i's units begin at row offsets[i] and at unit first[i].
        rows = torch.cat([output["emissions"][0][output["tag_mask"][0]] for output in all_outputs])
        offsets, first, total = [], [], 0
        for start, end in windows:
            offsets.append(total)
            first.append(bisect_left(unit_tokens, start))
            total += bisect_left(unit_tokens, end) - first[-1]
        index = []
        for u, k in enumerate(unit_tokens):
            # The windows holding token k end just after it: the last one starting at or before k, and its
            # predecessors while they reach k. The one with the most context on both sides wins (the first on ties).
            last = bisect_right(starts, k) - 1
            earliest = last
            while earliest > 0 and windows[earliest - 1][1] > k:
                earliest -= 1
            best = max(range(earliest, last + 1), key=lambda i, k=k: min(k - windows[i][0], windows[i][1] - 1 - k))
            index.append(offsets[best] + u - first[best])
        return rows[torch.tensor(index, dtype=torch.long)].unsqueeze(0).to(self.model.device)

    def _unit_predictions(
        self, all_outputs, encoded: EncodedText, tag_unit: str, with_scores: bool = True
    ) -> tuple[torch.Tensor, list[int], list[float] | None]:
        """Emissions (1, U, K) of the text's units (`_unit_emissions`), their Viterbi tag ids and (`with_scores`,
        else None) scores: those `_forward` found for a text of one window, else decoded here."""
        emissions = self._unit_emissions(all_outputs, encoded, tag_unit)
        if len(all_outputs) == 1:
            output = all_outputs[0]
            mask = output["tag_mask"][0]
            scores = output["scores"][0][mask].tolist() if with_scores else None
            return emissions, output["predictions"][0][mask].tolist(), scores
        tag_mask = torch.ones(emissions.shape[:2], dtype=torch.bool, device=emissions.device)
        whole = torch.ones(1, dtype=torch.bool, device=emissions.device)
        result = self._tags_and_scores(emissions, tag_mask, whole, with_scores=with_scores)
        scores = result["scores"][0].tolist() if with_scores else None
        return emissions, result["predictions"][0].tolist(), scores

    def __call__(self, inputs: str | list[str] | Iterator[str], **kwargs):
        """Tag one text (a list of entity dicts), a list of texts (one list per text) or an iterator of texts (an
        iterator of lists, in order); see the module docstring for how this differs from the built-in pipeline."""
        if isinstance(inputs, list) and not inputs:
            raise ValueError("At least one input is required: got an empty list of texts")
        if kwargs.get("constraints") is not None and not isinstance(inputs, str):
            raise ValueError("constraints are character offsets of one text: pass them with a single string")
        batch_size = kwargs.get("batch_size") or self._batch_size or 1
        if isinstance(inputs, Iterator):
            if batch_size == 1:  # (transformers streams generators, not other iterators)
                return super().__call__((text for text in inputs), **kwargs)
            return self._stream_sorted(inputs, batch_size * SORTED_BATCHES, kwargs)
        if batch_size == 1 or not isinstance(inputs, list):
            return super().__call__(inputs, **kwargs)
        # A batch is padded to its longest window: texts of as many tokens together waste least. The batch a text
        # lands in changes at most the last float digits of its scores (each row is masked on its own). Each text is
        # tokenized once, here, and `preprocess` takes it as read.
        texts = self._read(inputs, kwargs.get("respace", self._preprocess_params.get("respace", False)))
        order = sorted(range(len(texts)), key=self._token_counts(texts).__getitem__)
        results = [None] * len(texts)
        for position, result in zip(order, super().__call__([texts[i] for i in order], **kwargs), strict=True):
            results[position] = result
        return results

    def _token_counts(self, texts: list[_Text]) -> list[int]:
        """How many tokens the model reads of each text: the order batches are filled in. Sorted by characters
        instead, batches of 32 KLUE sentences use 80% of their padded positions, not 96% (characters per token vary),
        and tag 6-17% slower; the tokens cost nothing more, as every text is tokenized once, before it is sorted."""
        return [len(text.encoded.token_ids) for text in texts]

    def _stream_sorted(self, texts: Iterator[str], chunk_size: int, kwargs: dict) -> Iterator:
        """The results of `texts` in order, tagging `chunk_size` of them at a time as a list (sorted by tokens)."""
        while chunk := list(islice(texts, chunk_size)):
            yield from self(chunk, **kwargs)


def _controls(top_k: int | None, constraints: list | None, lexicon: dict | None) -> bool:
    """Whether a call asks for more than the Viterbi path (k best analyses, constraints, a lexicon's matches)."""
    return top_k is not None or bool(constraints) or bool(lexicon)


def _aligned(unit_spans: list[tuple[int, int]], starts: list[int], span: tuple) -> bool:
    """Whether the units (`unit_spans`, sorted, `starts` their first offsets) that start inside `span` (start, end, ...)
    begin at its start and end at its end: whether an entity can be exactly there."""
    first, stop = bisect_left(starts, span[0]), bisect_left(starts, span[1])
    return first < stop and unit_spans[first][0] == span[0] and unit_spans[stop - 1][1] == span[1]


def lexicon_matches(text: str, lexicon: dict[str, str]) -> list[tuple[int, int, str]]:
    """The lexicon's matches (start, end, type) in `text`, left to right, the longest at each offset, not overlapping,
    each beginning and ending at a grapheme cluster boundary (so a match never cuts a flag or a syllable's marks)."""
    lengths = sorted({len(surface) for surface in lexicon}, reverse=True)
    matches, i = [], 0
    while i < len(text):
        for length in (length for length in lengths if i + length <= len(text)):
            surface = text[i : i + length]
            if surface in lexicon and is_grapheme_boundary(text, i) and is_grapheme_boundary(text, i + length):
                matches.append((i, i + length, lexicon[surface]))
                i += length
                break
        else:
            i += 1
    return matches
