"""Run the CRF pipeline over KLUE data: the predictions every analysis starts from."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForTokenClassification, AutoTokenizer

from koelectra_crf.alignment import char_tags_to_spans, spans_to_char_tags
from koelectra_crf.data import example_tag_names, label_names, load_klue_ner
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline

Span = tuple[int, int, str]
"""(start, end, type): an entity's character offsets (end exclusive) and type."""


def default_device() -> str:
    """The GPU when there is one, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(model: str, device: str | None = None) -> KoElectraCrfTokenClassificationPipeline:
    """The CRF pipeline of a model folder or Hub id, on `device` (default: the GPU when there is one)."""
    return KoElectraCrfTokenClassificationPipeline(
        model=AutoModelForTokenClassification.from_pretrained(model).eval(),
        tokenizer=AutoTokenizer.from_pretrained(model),
        device=device or default_device(),
    )


def load_klue_split(file: str | None = None, max_sentences: int | None = None) -> Dataset:
    """A KLUE NER TSV file, or the Hub `klue` validation split when no file is given; optionally its first
    `max_sentences` sentences."""
    dataset = load_klue_ner(test_file=file)["test"] if file else load_klue_ner()["validation"]
    if max_sentences is not None:
        dataset = dataset.select(range(min(max_sentences, len(dataset))))
    return dataset


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


def run_pipeline(
    ner: KoElectraCrfTokenClassificationPipeline, texts: Sequence[str], batch_size: int = 8, **pipeline_kwargs
) -> list[list[dict]]:
    """The pipeline's output for every text, with a progress bar."""
    # A generator makes the pipeline stream its results (a list would come back only once all are done).
    outputs = ner((text for text in texts), batch_size=batch_size, **pipeline_kwargs)
    return list(tqdm(outputs, total=len(texts), desc="tagging", unit="sentence"))


def predict_dataset(
    ner: KoElectraCrfTokenClassificationPipeline, dataset: Dataset, batch_size: int = 8
) -> list[SentencePrediction]:
    """Tag every sentence of a KLUE split (see `data.load_klue_ner`) and pair it with its gold tags."""
    names = label_names(dataset)
    entities = run_pipeline(ner, dataset["sentence"], batch_size, aggregation_strategy="simple")
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
