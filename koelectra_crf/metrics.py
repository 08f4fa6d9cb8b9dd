"""KLUE NER metrics, computed exactly as KLUE-baseline computes them, from character-level tag names.

KLUE-baseline (`klue_baseline/models/named_entity_recognition.py`, `validation_epoch_end`, and
`klue_baseline/metrics/functional.py`) drops the space characters, wraps each sentence as
`["O"] + tags + ["O"]` (the [CLS] and [SEP] positions), concatenates all sentences into one sequence and
scores that one sequence twice: seqeval's strict IOB2 macro F1 over entity types, and sklearn's macro F1 over
all 13 tags (O included, zero division counted as 1). The same definitions apply unchanged to any label set (`labels`:
a model's BIO labels, e.g. `formats.bio_labels(["PS", "PRD"])`): the types and tags scored are then its own.
"""

from pathlib import Path

from seqeval.metrics.v1 import classification_report
from seqeval.scheme import IOB2
from sklearn.metrics import f1_score

from koelectra_crf.configuration_koelectra_crf import KLUE_LABELS

EVALUATE_MODULE_PATH = Path(__file__).resolve().parent / "klue_ner_metric" / "klue_ner_metric.py"
"""The `evaluate` module that wraps [`klue_ner_metrics`]: `evaluate.load(str(EVALUATE_MODULE_PATH))`."""


def label_types(labels: list[str]) -> list[str]:
    """The entity types of a BIO label list, in the order of their `B-` labels."""
    return [label[2:] for label in labels if label.startswith("B-")]


def metric_types(metrics: dict[str, float]) -> list[str]:
    """The entity types scored in a [`klue_ner_metrics`] result (its `TYPE_support` keys), in its order."""
    return [key[: -len("_support")] for key in metrics if key.endswith("_support")]


def _klue_sequence(
    tag_sequences: list[list[str]], tokens: list[list[str]] | None, name: str, labels: list[str]
) -> list[str]:
    """KLUE-baseline's evaluation sequence: spaces dropped, each sentence wrapped in O, all concatenated."""
    sequence = []
    for i, tags in enumerate(tag_sequences):
        if tokens is not None:
            if len(tokens[i]) != len(tags):
                raise ValueError(f"sentence {i}: {len(tokens[i])} tokens but {len(tags)} {name} tags")
            # KLUE-baseline skips the characters that are exactly " " (not other whitespace).
            tags = [tag for char, tag in zip(tokens[i], tags, strict=True) if char != " "]
        unknown = set(tags) - set(labels)
        if unknown:
            raise ValueError(f"sentence {i}: {name} tags {sorted(unknown)} are not among the labels {labels}")
        # The O before and after keep entities from running across sentence boundaries.
        sequence += ["O"] + list(tags) + ["O"]
    return sequence


def klue_ner_metrics(
    references: list[list[str]],
    predictions: list[list[str]],
    tokens: list[list[str]] | None = None,
    labels: list[str] = KLUE_LABELS,
) -> dict[str, float]:
    """KLUE NER entity and character metrics (× 100) of character-level tag names.

    Args:
        references: gold tags, one list per sentence, one tag name per character (spaces included).
        predictions: predicted tags, same shape as `references` (a length mismatch raises `ValueError`).
        tokens: the characters of each sentence (the dataset's `tokens`). Given, the space characters are
            dropped before scoring, as KLUE-baseline does; that is needed for numbers comparable with KLUE.
            `None` scores every position: only right for sequences that already exclude the spaces.
        labels: the BIO labels scored (a model's `config.label_names`; default KLUE's 13). "KLUE's 13 tags" and
            "PS ... QT" below read as these labels and their types.

    Returns:
        - `entity_f1`: KLUE-baseline's entity metric, seqeval `f1_score(average="macro", mode="strict",
          scheme=IOB2)` on the one concatenated sequence. Comparable with the "entity F1" of the KLUE paper and
          the KLUE-baseline README (KoELECTRA-base: 86.11).
        - `char_f1`: KLUE-baseline's character metric, sklearn macro F1 over all 13 tags **including O**
          (zero division = 1) on the same sequence, wrapping O's included. That is what their code computes
          although its docstring says "except O"; it is the number comparable with their "char F1"
          (KoELECTRA-base: 92.56).
        - `char_f1_without_o`: the same over the 12 B-/I- tags only, the metric the docstring describes; no
          published table reports it.
        - `entity_precision`, `entity_recall`: macro averages over types, like `entity_f1` (so `entity_f1` is
          not their harmonic mean); `entity_micro_f1`: F1 over all entities pooled.
        - per type `PS_precision`, `PS_recall`, `PS_f1`, `PS_support` (gold entities), likewise LC, OG, DT,
          TI, QT; a type absent from both gold and prediction scores 0 with support 0.
        The entity macro scores are `nan` when neither side has any entity (so are KLUE-baseline's).

    Not identical to KLUE-baseline in one respect: their evaluation drops the characters past the model's
    maximum length (128 tokens); here every character is scored.
    """
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} reference sentences but {len(predictions)} predicted")
    if tokens is not None and len(tokens) != len(references):
        raise ValueError(f"{len(references)} reference sentences but {len(tokens)} token lists")
    for i, (reference, prediction) in enumerate(zip(references, predictions, strict=True)):
        # Never truncate: a shorter prediction means a broken alignment upstream.
        if len(reference) != len(prediction):
            raise ValueError(f"sentence {i}: {len(reference)} reference tags but {len(prediction)} predicted")
    y_true = _klue_sequence(references, tokens, "reference", labels)
    y_pred = _klue_sequence(predictions, tokens, "predicted", labels)
    entity_labels = [label for label in labels if label != "O"]

    # zero_division=0 is seqeval's default ("warn") without the warnings.
    report = classification_report([y_true], [y_pred], output_dict=True, scheme=IOB2, zero_division=0)
    results = {
        "entity_f1": report["macro avg"]["f1-score"] * 100,
        "entity_precision": report["macro avg"]["precision"] * 100,
        "entity_recall": report["macro avg"]["recall"] * 100,
        "entity_micro_f1": report["micro avg"]["f1-score"] * 100,
        "char_f1": f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=1) * 100,
        "char_f1_without_o": f1_score(y_true, y_pred, labels=entity_labels, average="macro", zero_division=1) * 100,
    }
    for entity_type in label_types(labels):
        scores = report.get(entity_type, {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
        results[f"{entity_type}_precision"] = scores["precision"] * 100
        results[f"{entity_type}_recall"] = scores["recall"] * 100
        results[f"{entity_type}_f1"] = scores["f1-score"] * 100
        results[f"{entity_type}_support"] = scores["support"]
    return {key: float(value) for key, value in results.items()}
