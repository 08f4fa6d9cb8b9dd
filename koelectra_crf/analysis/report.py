"""The report of `koelectra-crf evaluate`: KLUE metrics, a classification report, charts, per-sentence predictions."""

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from koelectra_crf.configuration_koelectra_crf import KLUE_LABELS
from koelectra_crf.evaluation import SentencePrediction
from koelectra_crf.formats import bio_labels
from koelectra_crf.metrics import metric_types

from . import plots


def char_confusion_matrix(predictions: list[SentencePrediction], labels: list[str] = KLUE_LABELS) -> np.ndarray:
    """Counts of (gold tag, predicted tag) over the characters, rows and columns in `labels` order.

    KLUE's tokens are characters; spaces are left out, as the metrics leave them out.
    """
    gold, predicted = [], []
    for p in predictions:
        predicted_tags = p.predicted_tags
        kept = [i for i, char in enumerate(p.tokens) if char != " "]
        gold += [p.gold_tags[i] for i in kept]
        predicted += [predicted_tags[i] for i in kept]
    return confusion_matrix(gold, predicted, labels=labels)


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the share of a gold tag's characters given each tag); empty rows stay 0."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)


def _report_row(name: str, precision: float, recall: float, f1: float, support: float) -> str:
    return f"{name:<10}{precision:>10.2f}{recall:>10.2f}{f1:>10.2f}{support:>10.0f}"


def classification_report(metrics: dict[str, float]) -> str:
    """Per-type precision, recall, F1 and support (entity level, strict IOB2), then the overall scores."""
    lines = [f"{'type':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    lines += [
        _report_row(t, metrics[f"{t}_precision"], metrics[f"{t}_recall"], metrics[f"{t}_f1"], metrics[f"{t}_support"])
        for t in metric_types(metrics)
    ]
    support = sum(metrics[f"{t}_support"] for t in metric_types(metrics))
    lines += [
        _report_row("macro avg", metrics["entity_precision"], metrics["entity_recall"], metrics["entity_f1"], support),
        "",
        f"entity F1 (macro, KLUE): {metrics['entity_f1']:.2f}   entity F1 (micro): {metrics['entity_micro_f1']:.2f}",
        f"char F1 (KLUE, O included): {metrics['char_f1']:.2f}   char F1 without O: {metrics['char_f1_without_o']:.2f}",
    ]
    return "\n".join(lines) + "\n"


def write_evaluation(metrics: dict[str, float], predictions: list[SentencePrediction], output_dir: Path) -> None:
    """Write `metrics.json`, `classification_report.txt`, `entity_f1.png`, `confusion_matrix.{json,png}` and
    `predictions.jsonl` (one line per sentence: guid, text, gold and predicted entities) of an evaluation
    (`evaluation.evaluate_dataset`)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    types = metric_types(metrics)
    labels = bio_labels(types)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (output_dir / "classification_report.txt").write_text(classification_report(metrics))
    plots.bar_chart(
        output_dir / "entity_f1.png",
        types,
        {"F1": [metrics[f"{t}_f1"] for t in types]},
        title=f"Entity F1 per type (macro {metrics['entity_f1']:.2f})",
        ylabel="F1",
    )
    counts = char_confusion_matrix(predictions, labels)
    (output_dir / "confusion_matrix.json").write_text(
        json.dumps({"labels": labels, "rows": "gold", "columns": "predicted", "counts": counts.tolist()}) + "\n"
    )
    plots.heatmap(
        output_dir / "confusion_matrix.png",
        row_normalised(counts),
        labels,
        labels,
        title="Character tags, each gold row normalised (spaces excluded)",
        xlabel="predicted",
        ylabel="gold",
    )
    with open(output_dir / "predictions.jsonl", "w", encoding="utf-8") as f:
        for p in predictions:
            gold = [
                {"entity_group": label_type, "word": p.text[start:end], "start": start, "end": end}
                for start, end, label_type in p.gold_spans
            ]
            record = {"guid": p.guid, "text": p.text, "gold": gold, "predicted": p.entities}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def robustness_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown table of the KLUE metrics under each spacing condition (`evaluation.evaluate_spacing`): entity F1,
    character F1 and each type's entity F1."""
    types = metric_types(next(iter(results.values())))
    lines = [
        "| spacing | entity F1 | char F1 | " + " | ".join(types) + " |",
        "|---|" + "---:|" * (2 + len(types)),
    ]
    for condition, metrics in results.items():
        scores = [metrics["entity_f1"], metrics["char_f1"], *(metrics[f"{t}_f1"] for t in types)]
        lines.append(f"| {condition} | " + " | ".join(f"{score:.2f}" for score in scores) + " |")
    return "\n".join(lines) + "\n"


def write_robustness(results: dict[str, dict[str, float]], settings: dict, output_dir: Path) -> str:
    """Write `robustness.json` (the settings, e.g. rates and seed, and each condition's metrics) and `robustness.md`
    (the [`robustness_table`], which is returned) of an evaluation under spacing noise."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "robustness.json").write_text(json.dumps({**settings, "conditions": results}, indent=2) + "\n")
    table = robustness_table(results)
    (output_dir / "robustness.md").write_text(table)
    return table
