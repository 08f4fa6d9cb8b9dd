"""Token-classification pipeline that decodes with the CRF (shipped to the Hub as remote code).

Differences from transformers' built-in `TokenClassificationPipeline`, same output format:

- tags are the Viterbi path of the CRF (constrained to valid BIO), not the argmax of the logits; a token's `score`
  is the CRF marginal probability of its tag;
- `start`/`end` are character offsets into the input string and `word == text[start:end]`; the model reads the
  text in Unicode NFC (decomposed Hangul composed, `alignment.nfc_with_offsets`), the offsets stay the input's;
- texts longer than `config.max_length` tokens are tagged whole, through overlapping windows (nothing is cut);
- entity spans always follow the character tags: a Korean particle glued to a name (서울시**에서**) stays outside
  the entity, so the word-based strategies cannot widen an entity to the whole space-separated word. The
  `aggregation_strategy` chooses the group score: `simple`/`average` the mean of its tokens' scores, `first`
  the first token's, `max` the highest.
"""

import os

import torch
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines.base import ChunkPipeline
from transformers.pipelines.token_classification import AggregationStrategy

from .alignment import EncodedText, char_tags_to_spans, encode_texts, nfc_with_offsets, token_tags_to_char_tags

TASK = "token-classification"


class KoElectraCrfTokenClassificationPipeline(ChunkPipeline):
    """Named-entity recognition with a [`KoElectraCrfForTokenClassification`] model: Viterbi tags, CRF-marginal
    scores, character offsets, whole texts through windows (see the module docstring).

    Built like any pipeline: `KoElectraCrfTokenClassificationPipeline(model=model, tokenizer=tokenizer)`, or
    `pipeline("token-classification", model=folder, trust_remote_code=True)` for a folder written by
    [`save_pretrained`]. A `ChunkPipeline`: one text becomes one model input per window, and the windows of a
    text come back together to `postprocess`. It takes the arguments and returns the output format of the
    built-in `TokenClassificationPipeline` (`aggregation_strategy`, `ignore_labels`), but none of its hooks.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write a model folder for the Hub: weights, config, tokenizer and the remote code, with this pipeline
        named in config.json (`custom_pipelines`) and the model in `auto_map`, so that
        `pipeline("token-classification", model=folder, trust_remote_code=True)` builds this pipeline in any
        process, and the Auto classes load the model there."""
        self.add_to_folder(self.model, save_directory)
        super().save_pretrained(save_directory, **kwargs)

    @classmethod
    def add_to_folder(cls, model, folder: str | os.PathLike) -> None:
        """Name this pipeline and the model's classes in `model.config` and copy the remote-code files (the model's,
        the config's and this pipeline's modules with their relative imports) into `folder`.

        Call it before the model's `save_pretrained` writes config.json into `folder`: [`save_pretrained`] does,
        and so does the trainer for every folder it writes.
        """
        os.makedirs(folder, exist_ok=True)
        config = model.config
        config.custom_pipelines = {
            TASK: {"impl": _qualified_name(cls), "pt": ["AutoModelForTokenClassification"], "type": "text"}
        }
        model_name = _qualified_name(type(model))
        config.auto_map = {
            "AutoConfig": _qualified_name(type(config)),
            "AutoModel": model_name,
            "AutoModelForTokenClassification": model_name,
        }
        for code in (cls, type(model), type(config)):
            custom_object_save(code, folder)

    def _sanitize_parameters(self, ignore_labels=None, aggregation_strategy=None, **unsupported):
        # Windows come from the model's config instead of `stride`, offsets from the tokenizer.
        if unsupported:
            raise ValueError(
                f"{sorted(unsupported)} not supported: pass plain strings; long texts are windowed with the "
                f"model's max_length={self.model.config.max_length} and stride={self.model.config.stride}"
            )
        postprocess_params = {}
        if aggregation_strategy is not None:
            if isinstance(aggregation_strategy, str):
                valid = [strategy.value for strategy in AggregationStrategy]
                if aggregation_strategy.lower() not in valid:
                    raise ValueError(f"unknown aggregation_strategy {aggregation_strategy!r}: use one of {valid}")
                aggregation_strategy = AggregationStrategy(aggregation_strategy.lower())
            postprocess_params["aggregation_strategy"] = aggregation_strategy
        if ignore_labels is not None:
            postprocess_params["ignore_labels"] = ignore_labels
        return {}, {}, postprocess_params

    def preprocess(self, sentence: str, **_):
        if not isinstance(sentence, str):
            raise ValueError(f"expected a string, got {type(sentence).__name__}")
        config = self.model.config
        # The model reads the NFC text (decomposed Hangul would be unknown jamo to it); `postprocess` maps its
        # offsets back into `sentence`, the caller's string, which is what travels on.
        text, _ = nfc_with_offsets(sentence)
        encoded = encode_texts([text], self.tokenizer, config.tokenization)[0]
        windows = encoded.windows(config.max_length, config.stride)
        for n, (start, end) in enumerate(windows):
            yield {
                **{name: torch.tensor([values]) for name, values in encoded.window(start, end).items()},
                "window": (start, end),
                "encoded": encoded if n == 0 else None,
                "sentence": sentence if n == 0 else None,
                "is_last": n == len(windows) - 1,
            }

    def _forward(self, model_inputs):
        passed_on = {key: model_inputs.pop(key) for key in ("window", "encoded", "sentence", "is_last")}
        tag_mask = model_inputs["tag_mask"].bool()
        outputs = self.model(**model_inputs)
        return {
            "emissions": outputs.logits,
            **self._tags_and_scores(outputs.logits, tag_mask, outputs.predictions),
            "attention_mask": model_inputs["attention_mask"],
            **passed_on,
        }

    def _tags_and_scores(self, emissions, tag_mask, predictions=None) -> dict[str, torch.Tensor]:
        if predictions is None:
            predictions = self.model.decode(emissions, tag_mask)
        probabilities = self.model.tag_probabilities(emissions, tag_mask)
        scores = probabilities.gather(-1, predictions.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return {"predictions": predictions, "scores": scores}

    def postprocess(self, all_outputs, aggregation_strategy=AggregationStrategy.NONE, ignore_labels=None):
        ignore_labels = ["O"] if ignore_labels is None else ignore_labels
        sentence, encoded = all_outputs[0]["sentence"], all_outputs[0]["encoded"]
        text, char_spans = nfc_with_offsets(sentence)  # as in `preprocess`: `encoded` is aligned with `text`

        def original(start: int, end: int) -> dict:
            """`word`, `start`, `end` in `sentence` of the characters [start, end) of `text`."""
            start, end = char_spans[start][0], char_spans[end - 1][1]
            return {"word": sentence[start:end], "start": start, "end": end}

        tag_ids, scores = self._token_predictions(all_outputs, encoded)
        id2label = self.model.config.id2label
        tags = [id2label[t] if tagged else None for t, tagged in zip(tag_ids, encoded.tagged, strict=True)]
        prefix = len(encoded.prefix_ids)

        if aggregation_strategy == AggregationStrategy.NONE:
            return [
                {"entity": tag, "score": scores[k], "index": prefix + k, **original(start, end)}
                for k, (tag, (start, end)) in enumerate(zip(tags, encoded.char_spans, strict=True))
                if tag is not None and tag not in ignore_labels
            ]  # fmt: skip

        token_starting_at = {start: k for k, (start, _) in enumerate(encoded.char_spans) if encoded.tagged[k]}
        group_score = {
            AggregationStrategy.SIMPLE: lambda s: sum(s) / len(s),
            AggregationStrategy.AVERAGE: lambda s: sum(s) / len(s),
            AggregationStrategy.FIRST: lambda s: s[0],
            AggregationStrategy.MAX: max,
        }[aggregation_strategy]
        entities = []
        for start, end, label_type in char_tags_to_spans(token_tags_to_char_tags(text, encoded, tags)):
            token_scores = [scores[token_starting_at[i]] for i in range(start, end) if i in token_starting_at]
            if label_type not in ignore_labels:
                entities.append(
                    {"entity_group": label_type, "score": group_score(token_scores), **original(start, end)}
                )  # fmt: skip
        return entities

    def _token_predictions(self, all_outputs, encoded: EncodedText) -> tuple[list[int], list[float]]:
        """Tag id and score of every content token of the text.

        One window: its Viterbi path. Several: each token's emissions come from the window where it has the most
        context on both sides, and the CRF decodes the whole text at once, so window seams cannot break an entity.
        """
        prefix = len(encoded.prefix_ids)
        rows = []
        for output in all_outputs:
            start, end = output["window"]
            first = prefix + int(output["attention_mask"][0].argmax())  # first content position (any padding side)
            rows.append((start, end, first, output))
        if len(rows) == 1:
            start, end, first, output = rows[0]
            span = slice(first, first + end - start)
            return output["predictions"][0, span].tolist(), output["scores"][0, span].tolist()

        def context(k: int, row) -> int:
            start, end = row[0], row[1]
            return min(k - start, end - 1 - k) if start <= k < end else -1

        emissions = []
        for k in range(len(encoded.token_ids)):
            start, _, first, output = max(rows, key=lambda row: context(k, row))
            emissions.append(output["emissions"][0, first + k - start])
        device = self.model.device
        emissions = torch.stack(emissions).unsqueeze(0).to(device)
        tag_mask = torch.tensor([encoded.tagged], device=device)
        result = self._tags_and_scores(emissions, tag_mask)
        return result["predictions"][0].tolist(), result["scores"][0].tolist()

    def __call__(self, inputs: str | list[str], **kwargs):
        """Tag one text (a list of entity dicts) or a list of texts (one list per text); see the module docstring
        for how this differs from the built-in pipeline."""
        if isinstance(inputs, list) and not inputs:
            raise ValueError("At least one input is required: got an empty list of texts")
        return super().__call__(inputs, **kwargs)


def _qualified_name(code: type) -> str:
    """`module.Class` as `auto_map` and `custom_pipelines` name remote code (the module without its package)."""
    return f"{code.__module__.rsplit('.', 1)[-1]}.{code.__name__}"
