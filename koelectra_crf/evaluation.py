"""The one evaluation path: the CRF pipeline over a KLUE split, its entities as character tags, KLUE's metrics.

`evaluate_dataset` is what `NerTrainer.evaluate`, `koelectra-crf evaluate` (and through training, the model card)
measure, so that what is reported is what users of the pipeline get. The other analyses start from its
`SentencePrediction`s.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from koelectra_crf.alignment import OUTSIDE, char_tags_to_spans, entity_type, spans_to_char_tags
from koelectra_crf.data import example_tag_names, label_names
from koelectra_crf.inputs import TextRecord, tagged_records
from koelectra_crf.metrics import klue_ner_metrics, label_types
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.spacing import DEFAULT_INSERT_RATE, DEFAULT_REMOVE_RATE, condition_rates, perturb_dataset
from koelectra_crf.usage import UsageError

RAW_COLUMNS = ("guid", "sentence", "tokens", "ner_tags")
"""The columns of a KLUE split as `data.load_klue_ner` returns it: what evaluation reads."""

Span = tuple[int, int, str]
"""(start, end, type): an entity's character offsets (end exclusive) and type."""


@dataclass
class SentencePrediction:
    """One sentence of the data with the pipeline's entities.

    Attributes:
        guid, text: from the data.
        tokens: the characters of `text` (spaces included), as the metrics want them.
        gold_tags: gold BIO tag of every character.
        entities: the pipeline's output with `aggregation_strategy="simple"` (`entity_group`, `score`, `word`,
            `start`, `end`).
    """

    guid: str
    text: str
    tokens: list[str]
    gold_tags: list[str]
    entities: list[dict]

    @property
    def gold_spans(self) -> list[Span]:
        return char_tags_to_spans(self.gold_tags)

    @property
    def predicted_spans(self) -> list[Span]:
        return [(entity["start"], entity["end"], entity["entity_group"]) for entity in self.entities]

    @property
    def predicted_tags(self) -> list[str]:
        return spans_to_char_tags(len(self.text), self.predicted_spans)


def predict_dataset(
    ner: KoElectraCrfTokenClassificationPipeline, dataset: Dataset, batch_size: int = 8
) -> list[SentencePrediction]:
    """Tag every sentence of a KLUE split (see `data.load_klue_ner`) and pair it with its gold tags. Data with an
    entity type the model lacks is refused ([`check_types`])."""
    check_types(dataset, model_labels(ner.model))
    names = label_names(dataset)
    records = map(TextRecord, dataset["guid"], dataset["sentence"])
    tagged = tagged_records(ner, records, batch_size, aggregation_strategy="simple")
    entities = [result for _, result in tqdm(tagged, total=len(dataset), desc="tagging", unit="sentence")]
    return [
        SentencePrediction(
            example["guid"],
            example["sentence"],
            example["tokens"],
            example_tag_names(example, names),
            sentence_entities,
        )
        for example, sentence_entities in zip(dataset, entities, strict=True)
    ]


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in evaluation mode (no dropout) inside the block, back in its previous mode after it. Pipelines
    do not switch modes themselves, and a model mid-training or just trained is in training mode."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_labels(model) -> list[str]:
    """The BIO labels of a model (PyTorch or ONNX), in id order: what it can predict and is scored on."""
    return [model.config.id2label[i] for i in range(len(model.config.id2label))]


def check_types(dataset: Dataset, labels: list[str]) -> None:
    """Refuse (`UsageError`) data with an entity type that a model of `labels` lacks: it could never be found, and
    KLUE's metrics score the model's types only."""
    model_types = label_types(labels)
    names = label_names(dataset)
    used = {names[i] for tags in dataset["ner_tags"] for i in tags}
    missing = sorted({entity_type(name) for name in used if name != OUTSIDE} - set(model_types))
    if missing:
        raise UsageError(
            f"the data has entity types {missing} that the model lacks (its types: {model_types}); relabel them, or "
            "train a model on them (--model_name_or_path continues from this one)"
        )


def prediction_metrics(predictions: list[SentencePrediction], labels: list[str]) -> dict[str, float]:
    """`metrics.klue_ner_metrics` of the predictions over a model's `labels`, spaces dropped as KLUE does."""
    return klue_ner_metrics(
        [p.gold_tags for p in predictions],
        [p.predicted_tags for p in predictions],
        [p.tokens for p in predictions],
        labels,
    )


def evaluate_dataset(
    ner: KoElectraCrfTokenClassificationPipeline, dataset: Dataset, batch_size: int = 8
) -> tuple[dict[str, float], list[SentencePrediction]]:
    """KLUE metrics of the pipeline on a KLUE split, and its predictions.

    The model runs in evaluation mode (and goes back to its previous mode after). `dataset` must hold the raw KLUE
    columns ([`RAW_COLUMNS`], as `data.load_klue_ner` gives them), not tokenized windows.
    """
    missing = [column for column in RAW_COLUMNS if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"evaluation tags raw KLUE sentences: the dataset lacks the columns {missing} (it has "
            f"{dataset.column_names}). Pass a split of `koelectra_crf.data.load_klue_ner(...)`, not the output of "
            "`tokenize_and_align`."
        )
    with evaluation_mode(ner.model):
        predictions = predict_dataset(ner, dataset, batch_size)
    return prediction_metrics(predictions, model_labels(ner.model)), predictions


def evaluate_spacing(
    ner: KoElectraCrfTokenClassificationPipeline,
    dataset: Dataset,
    conditions: Sequence[str],
    remove_rate: float = DEFAULT_REMOVE_RATE,
    insert_rate: float = DEFAULT_INSERT_RATE,
    seed: int = 0,
    batch_size: int = 8,
) -> dict[str, tuple[dict[str, float], list[SentencePrediction]]]:
    """[`evaluate_dataset`] of a KLUE split under each spacing condition (`options.SPACING_CONDITIONS`: `as-is`, `noisy`
    with `remove_rate` and `insert_rate`, `none`), its sentences perturbed by `spacing.perturb_dataset` with `seed`.
    KLUE's metrics drop the spaces, so every condition scores the same gold tags: the scores differ by the model's
    output alone."""
    return {
        condition: evaluate_dataset(
            ner, perturb_dataset(dataset, *condition_rates(condition, remove_rate, insert_rate), seed), batch_size
        )
        for condition in dict.fromkeys(conditions)
    }
