"""`koelectra-crf pseudo-label`: tag raw text with a trained model, as KLUE NER TSV, for self-training.

The input, read by `inputs.read_records` (its format told by extension and content), is sentence lines,
`<id>\\t<sentence>` lines (the raw KLUE file `klue-ner-train-sentences.tsv`), JSONL with a `text` field, or a labelled
KLUE TSV file, whose sentences are tagged afresh; each sentence's id is its guid in the output. The output is a KLUE
v1.1 TSV file (`data.read_klue_tsv` and `load_klue_ner` read it) of the predicted entities, and beside it
`<output>.confidence.jsonl`: one line per sentence with its `guid`, the CRF's probability of the whole predicted
tag sequence (`sequence_probability`) and of its least likely entity (`min_entity_probability`, 1 without
entities). Self-training (`--pseudo_label_file` in `koelectra_crf.train`) keeps the sentences above a threshold
of one of them. The output may replace an earlier pseudo-labelled file, never the input or any other file.

How good the kept pseudo-labels are, before training on them: pseudo-label a labelled file (the validation split)
the same way and [`kept_quality`] scores, for each threshold, the sentences kept against their gold tags
(`koelectra-crf pseudo-label ... --thresholds 0.5 0.9`).

Streaming: raw input is read line by line and each result is written as it comes, so memory does not grow with
the file (a labelled KLUE TSV input, read and checked by `data.read_klue_tsv`, is held whole). A sentence the TSV
format cannot hold (a tab or a `<text:TYPE>`-like mark in it, or a tab or line break in its id) is skipped and
counted.
"""

import json
from collections.abc import Iterator
from pathlib import Path

from datasets import Dataset
from tqdm.auto import tqdm

from koelectra_crf.alignment import spans_to_char_tags
from koelectra_crf.data import load_klue_ner, mark_entities, read_klue_tsv, strip_entity_marks
from koelectra_crf.inputs import TextRecord, read_records, refuse_input_as_output, tagged_records
from koelectra_crf.metrics import klue_ner_metrics
from koelectra_crf.options import CONFIDENCE_SUFFIX, CONFIDENCES
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline
from koelectra_crf.usage import UsageError

HEADER = "## pseudo-labelled by koelectra-crf pseudo-label\n"
"""The first line of every pseudo-labelled file: what a new run may write over."""


def confidence_path(output: Path) -> Path:
    """Where the confidences of the pseudo-labelled file `output` are written."""
    return output.with_name(output.name + CONFIDENCE_SUFFIX)


def klue_block(guid: str, text: str, spans: list[tuple[int, int, str]]) -> str:
    """One sentence in the KLUE v1.1 TSV format: `## guid<TAB>marked sentence`, a `CHAR<TAB>TAG` line per character,
    a blank line."""
    tags = spans_to_char_tags(len(text), spans)
    return (
        f"## {guid}\t{mark_entities(text, spans)}\n"
        + "".join(f"{c}\t{t}\n" for c, t in zip(text, tags, strict=True))
        + "\n"
    )


def _representable(record: TextRecord) -> bool:
    """Whether the TSV format round-trips the record: no tab or line break in its id or text, and no `<text:TYPE>`
    mark in its text."""
    return (
        not any(char in f"{record.id}{record.text}" for char in "\t\n\r")
        and strip_entity_marks(record.text)[0] == record.text
    )


def check_output(input_path: Path, output: Path) -> None:
    """Refuse to write over the input or over a file that is not an earlier pseudo-labelled file (a labelled KLUE
    file, say): replacing it would lose it."""
    refuse_input_as_output(input_path, output)
    if output.exists():
        with open(output, encoding="utf-8", errors="replace") as file:
            if file.readline() != HEADER:
                raise UsageError(f"--output {output} exists and is not a pseudo-labelled file: choose another --output")


def pseudo_label(
    ner: KoElectraCrfTokenClassificationPipeline, input_path: Path, output: Path, batch_size: int = 8
) -> dict[str, int]:
    """Write the pseudo-labelled TSV `output` and its confidences (`confidence_path(output)`); return how many
    sentences were written and skipped."""
    check_output(Path(input_path), Path(output))
    counts = {"written": 0, "skipped": 0}

    def representable() -> Iterator[TextRecord]:
        for record in read_records(input_path):
            if _representable(record):
                yield record
            else:
                counts["skipped"] += 1

    tagged = tagged_records(ner, representable(), batch_size, aggregation_strategy="simple",
                            return_sequence_probability=True)  # fmt: skip
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as tsv, open(confidence_path(output), "w", encoding="utf-8") as scores:
        tsv.write(HEADER)
        for (record_id, text), result in tqdm(tagged, desc="pseudo-labelling", unit="sentence"):
            guid = str(record_id)  # a JSONL input's id may be an integer; guids read back as strings
            entities = result["entities"]
            tsv.write(klue_block(guid, text, [(e["start"], e["end"], e["entity_group"]) for e in entities]))
            record = {
                "guid": guid,
                "sequence_probability": result["sequence_probability"],
                "min_entity_probability": min((e["score"] for e in entities), default=1.0),
            }
            scores.write(json.dumps(record) + "\n")
            counts["written"] += 1
    return counts


def read_confidences(path: str | Path, confidence: str = "sequence_probability") -> dict[str, float]:
    """Each sentence's `confidence` (a key of the `.confidence.jsonl` beside the pseudo-labelled file `path`), by
    guid."""
    if confidence not in CONFIDENCES:
        raise UsageError(f"confidence must be one of {CONFIDENCES}, got {confidence!r}")
    with open(confidence_path(Path(path)), encoding="utf-8") as file:
        return {record["guid"]: record[confidence] for record in map(json.loads, file)}


def load_pseudo_labelled(path: str | Path, threshold: float, confidence: str = "sequence_probability") -> Dataset:
    """The sentences of a pseudo-labelled file whose `confidence` (a key of its `.confidence.jsonl`) is at least
    `threshold`, as a KLUE split (`data.load_klue_ner`'s features, `KLUE_LABELS` order)."""
    confidences = read_confidences(path, confidence)
    kept = {guid for guid, value in confidences.items() if value >= threshold}
    split = load_klue_ner(train_file=path)["train"]
    return split.filter(lambda example: example["guid"] in kept, desc="Keeping confident pseudo-labels")


def kept_quality(
    pseudo_labelled: str | Path,
    gold_file: str | Path,
    thresholds: list[float],
    confidence: str = "sequence_probability",
) -> list[dict]:
    """For each threshold, how many sentences of the pseudo-labelled file `pseudo_labelled` self-training would keep
    (`confidence` at least the threshold, as [`load_pseudo_labelled`]) and how right their pseudo-labels are:
    KLUE metrics (`metrics.klue_ner_metrics`, spaces dropped) of the kept sentences against the tags of the same
    sentences (by guid) in `gold_file`, a labelled KLUE TSV file. Threshold 0 keeps every sentence."""
    confidences = read_confidences(pseudo_labelled, confidence)
    gold = {sentence["guid"]: sentence for sentence in read_klue_tsv(gold_file)}
    predicted = read_klue_tsv(pseudo_labelled)
    missing = [sentence["guid"] for sentence in predicted if sentence["guid"] not in gold]
    if missing:
        raise UsageError(f"{len(missing)} pseudo-labelled sentences are not in {gold_file} (first: {missing[0]!r})")
    rows = []
    for threshold in thresholds:
        kept = [sentence for sentence in predicted if confidences[sentence["guid"]] >= threshold]
        row = {"threshold": threshold, "kept": len(kept), "kept_share": len(kept) / len(predicted)}
        if kept:
            metrics = klue_ner_metrics(
                [gold[sentence["guid"]]["ner_tags"] for sentence in kept],
                [sentence["ner_tags"] for sentence in kept],
                [sentence["tokens"] for sentence in kept],
            )
            row.update({name: metrics[name] for name in ("entity_f1", "entity_precision", "entity_recall", "char_f1")})
        rows.append(row)
    return rows
