"""`koelectra-crf calibration`: how far the CRF marginals can be read as probabilities of being right.

- Token level: a tagged token's confidence is the CRF marginal of its Viterbi tag (the pipeline's `score` with
  `aggregation_strategy="none"`); it is right when that tag is the gold tag of the token's first character (the
  tag the token is trained on).
- Entity level, two confidences of the same predicted entities, each right when gold has an entity with the same
  span and type: `entity`, the CRF's exact probability of that entity (the pipeline's group score with
  `aggregation_strategy="simple"`), and `entity_token_mean`, the mean marginal of its units (the group score this
  project used before, and the built-in pipeline's kind of score).

Expected calibration error over `num_bins` equal-width bins of confidence:
ECE = sum over bins of (n_b / N) * |accuracy_b - mean confidence_b|.

Temperature scaling divides the emissions by one scalar T before the CRF, T chosen on validation data to minimise
the negative log marginal of the gold tags (searched from 2^-8 to 2^8; a T at either end is reported as such: the
likelihood may go on rising beyond it). The transitions are not scaled, so the Viterbi tags (and the accuracy) can
change as well as the confidences. The fitted T is kept only if it raises the validation ECE at no level; otherwise
T = 1 stays, and the report says so. With a kept T the test data is reported before and after.
"""

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm

from koelectra_crf.alignment import NerDataCollator, pad_inputs
from koelectra_crf.crf import IGNORE_INDEX
from koelectra_crf.data import tokenize_and_align
from koelectra_crf.evaluation import SentencePrediction, predict_dataset
from koelectra_crf.inputs import TextRecord, tagged_records
from koelectra_crf.modeling_koelectra_crf import KoElectraCrfForTokenClassification
from koelectra_crf.options import CALIBRATION_BINS
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.tagger import EmissionTagger

from . import plots

SEARCH_OCTAVES = 8
"""Temperatures are searched from 2^-8 to 2^8."""
STEPS_PER_OCTAVE = 12
"""The search's resolution: steps of 2^(1/12) (about 6%)."""


def reliability_bins(
    confidences: Sequence[float], correct: Sequence[bool], num_bins: int = CALIBRATION_BINS
) -> list[dict]:
    """Per equal-width bin [lower, upper) of confidence (1.0 in the last): count, mean confidence, accuracy.

    Mean confidence and accuracy are None for an empty bin.
    """
    confidences = np.asarray(confidences, dtype=float)
    correct = np.asarray(correct, dtype=float)
    index = np.minimum((confidences * num_bins).astype(int), num_bins - 1)
    bins = []
    for b in range(num_bins):
        in_bin = index == b
        count = int(in_bin.sum())
        bins.append(
            {
                "lower": b / num_bins,
                "upper": (b + 1) / num_bins,
                "count": count,
                "confidence": float(confidences[in_bin].mean()) if count else None,
                "accuracy": float(correct[in_bin].mean()) if count else None,
            }
        )
    return bins


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], num_bins: int = CALIBRATION_BINS
) -> float:
    """ECE over `num_bins` equal-width bins (see the module docstring); NaN without any prediction."""
    bins = reliability_bins(confidences, correct, num_bins)
    total = sum(b["count"] for b in bins)
    if not total:
        return float("nan")
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])


def calibration_summary(
    confidences: Sequence[float], correct: Sequence[bool], num_bins: int = CALIBRATION_BINS
) -> dict:
    """Count, accuracy, mean confidence, ECE and the reliability bins of one set of predictions."""
    return {
        "count": len(confidences),
        "accuracy": float(np.mean(correct)) if len(correct) else float("nan"),
        "mean_confidence": float(np.mean(confidences)) if len(confidences) else float("nan"),
        "ece": expected_calibration_error(confidences, correct, num_bins),
        "bins": reliability_bins(confidences, correct, num_bins),
    }


def token_confidences(
    predictions: list[SentencePrediction], token_outputs: list[list[dict]]
) -> tuple[list[float], list[bool]]:
    """Confidence and correctness of every tagged token of the sentences (`O` tokens included), from the pipeline's
    output with `aggregation_strategy="none", ignore_labels=[]`."""
    confidences, correct = [], []
    for sentence, tokens in zip(predictions, token_outputs, strict=True):
        for token in tokens:
            confidences.append(token["score"])
            correct.append(token["entity"] == sentence.gold_tags[token["start"]])
    return confidences, correct


def entity_confidences(predictions: list[SentencePrediction]) -> tuple[list[float], list[bool]]:
    """Confidence (the pipeline's entity score) and correctness (same span and type in gold) of every predicted
    entity."""
    confidences, correct = [], []
    for sentence in predictions:
        gold = set(sentence.gold_spans)
        for entity, span in zip(sentence.entities, sentence.predicted_spans, strict=True):
            confidences.append(entity["score"])
            correct.append(span in gold)
    return confidences, correct


def entity_token_mean_confidences(
    predictions: list[SentencePrediction], token_outputs: list[list[dict]]
) -> tuple[list[float], list[bool]]:
    """`entity_confidences` with the mean marginal of the entity's units as its confidence."""
    confidences, correct = [], []
    for sentence, tokens in zip(predictions, token_outputs, strict=True):
        gold = set(sentence.gold_spans)
        for start, end, label_type in sentence.predicted_spans:
            scores = [token["score"] for token in tokens if start <= token["start"] < end]
            confidences.append(sum(scores) / len(scores))
            correct.append((start, end, label_type) in gold)
    return confidences, correct


def calibrate(
    ner: KoElectraCrfTokenClassificationPipeline,
    dataset: Dataset,
    num_bins: int = CALIBRATION_BINS,
    batch_size: int = 8,
) -> dict[str, dict]:
    """Token- and entity-level `calibration_summary` of the pipeline on a KLUE split (`entity`: the exact entity
    probability, `entity_token_mean`: the mean marginal of the entity's units)."""
    predictions = predict_dataset(ner, dataset, batch_size)
    records = [TextRecord(p.guid, p.text) for p in predictions]
    tagged = tagged_records(ner, records, batch_size, aggregation_strategy="none", ignore_labels=[])
    token_outputs = [result for _, result in tqdm(tagged, total=len(records), desc="tagging", unit="sentence")]
    return {
        "token": calibration_summary(*token_confidences(predictions, token_outputs), num_bins),
        "entity": calibration_summary(*entity_confidences(predictions), num_bins),
        "entity_token_mean": calibration_summary(*entity_token_mean_confidences(predictions, token_outputs), num_bins),
    }


def gold_windows(
    model: KoElectraCrfForTokenClassification, tokenizer, dataset: Dataset, batch_size: int = 8
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(emissions (n, K), gold tag ids (n,)) of the n tagged units of every window of every sentence.

    The windows and labels are the training ones (`data.tokenize_and_align`), the same alignment the pipeline uses.
    """
    rows = tokenize_and_align(dataset, tokenizer, model.config)
    collate = NerDataCollator(tokenizer.pad_token_id)
    windows = []
    for i in tqdm(range(0, len(rows), batch_size), desc="validation emissions", unit="batch"):
        batch = collate(rows.select(range(i, min(i + batch_size, len(rows)))).to_list())
        labels = batch.pop("labels")
        inputs = {name: value.to(model.device) for name, value in batch.items()}
        with torch.no_grad():
            emissions = model(**inputs, tag_mask=(labels != IGNORE_INDEX).to(model.device)).logits.float().cpu()
        for window_emissions, gold in zip(emissions, labels, strict=True):
            tagged = gold != IGNORE_INDEX
            if tagged.any():
                windows.append((window_emissions[tagged], gold[tagged]))
    return windows


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Padded emissions (B, T, K), gold tag ids (B, T) and mask (B, T) of some windows."""


def padded_batches(windows: list[tuple[torch.Tensor, torch.Tensor]], device, size: int = 256) -> list[Batch]:
    """The windows of `gold_windows` padded into batches of `size` (small enough for the CRF's buffers)."""
    batches = []
    for i in range(0, len(windows), size):
        batch = pad_inputs([{"emissions": e, "labels": g} for e, g in windows[i : i + size]], pad_token_id=None)
        gold = batch["labels"].to(device)
        batches.append((batch["emissions"].to(device), gold, gold != IGNORE_INDEX))
    return batches


def gold_nll(model: KoElectraCrfForTokenClassification, batches: list[Batch], temperature: float) -> float:
    """Mean negative log marginal probability of the gold tags with the emissions divided by `temperature`."""
    total, count = 0.0, 0
    for emissions, gold, mask in batches:
        with torch.no_grad():
            probabilities = EmissionTagger(model.crf, temperature).tag_probabilities(emissions, mask)
        gold_probabilities = probabilities.gather(-1, gold.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask]
        total -= gold_probabilities.clamp_min(1e-12).log().sum().item()
        count += int(mask.sum())
    return total / count


def fit_temperature(
    model: KoElectraCrfForTokenClassification, windows: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, bool]:
    """The temperature with the lowest `gold_nll` on the windows, and whether it is at a bound of the search (2^-8 or
    2^8: the NLL may go on falling beyond it).

    A grid (one scalar, no optimiser to tune) in two passes: half octaves over the whole range, then steps of 2^(1/12)
    within half an octave of the best of them.
    """
    batches = padded_batches(windows, model.device)
    bound = SEARCH_OCTAVES * STEPS_PER_OCTAVE  # temperatures are 2 ** (k / STEPS_PER_OCTAVE) for k in [-bound, bound]
    half_octave = STEPS_PER_OCTAVE // 2
    nll = {}

    def best(exponents: range) -> int:
        for k in tqdm(exponents, desc="fitting temperature", leave=False):
            if k not in nll:
                nll[k] = gold_nll(model, batches, 2.0 ** (k / STEPS_PER_OCTAVE))
        return min(exponents, key=nll.__getitem__)

    coarse = best(range(-bound, bound + 1, half_octave))
    fine = best(range(max(coarse - half_octave + 1, -bound), min(coarse + half_octave, bound + 1)))
    return 2.0 ** (fine / STEPS_PER_OCTAVE), abs(fine) == bound


@contextmanager
def at_temperature(ner: KoElectraCrfTokenClassificationPipeline, temperature: float) -> Iterator[None]:
    """Within the block, the pipeline's model tags with its emissions divided by `temperature` (its tagger's
    temperature; the model's weights are not touched)."""
    tagger = ner.model.tagger
    previous, tagger.temperature = tagger.temperature, temperature
    try:
        yield
    finally:
        tagger.temperature = previous


def write_calibration(
    ner: KoElectraCrfTokenClassificationPipeline,
    dataset: Dataset,
    output_dir: Path,
    num_bins: int = CALIBRATION_BINS,
    batch_size: int = 8,
    validation: Dataset | None = None,
) -> dict:
    """Write `calibration.json` and `reliability_diagram.png`; with `validation`, also fit a temperature on it.

    The report holds `before` (the test data at T = 1) and, with `validation`: `fitted_temperature`,
    `temperature_at_search_bound`, `validation_ece` (each level's ECE on the validation data at T = 1 and at the
    fitted T), `raised_validation_ece` (the levels whose validation ECE the fitted T raises), `temperature` (the
    fitted T when it raises none, else 1.0: a T that calibrates the validation data worse is not applied) and, for a
    T other than 1, `after` (the test data with the scaled emissions).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "num_bins": num_bins,
        "binning": "equal width",
        "temperature": None,
        "before": calibrate(ner, dataset, num_bins, batch_size),
    }
    panels = {level: {"T = 1": summary["bins"]} for level, summary in report["before"].items()}
    if validation is not None:
        windows = gold_windows(ner.model, ner.tokenizer, validation, batch_size)
        fitted, at_bound = fit_temperature(ner.model, windows)
        validation_ece = {}
        for name, temperature in (("T = 1", 1.0), ("fitted", fitted)):
            with at_temperature(ner, temperature):
                summaries = calibrate(ner, validation, num_bins, batch_size)
            validation_ece[name] = {level: summary["ece"] for level, summary in summaries.items()}
        raised = [level for level, ece in validation_ece["fitted"].items() if ece > validation_ece["T = 1"][level]]
        report.update(
            fitted_temperature=fitted,
            temperature_at_search_bound=at_bound,
            validation_ece=validation_ece,
            raised_validation_ece=raised,
            temperature=1.0 if raised else fitted,
        )
        if report["temperature"] != 1.0:
            with at_temperature(ner, fitted):
                report["after"] = calibrate(ner, dataset, num_bins, batch_size)
            for level, summary in report["after"].items():
                panels[level][f"T = {fitted:.2f}"] = summary["bins"]
    (output_dir / "calibration.json").write_text(json.dumps(report, indent=2) + "\n")
    plots.reliability_diagram(output_dir / "reliability_diagram.png", panels, num_bins)
    return report
