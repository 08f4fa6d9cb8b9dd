"""KLUE NER metrics (KLUE-baseline's entity and character macro F1) as an `evaluate` module.

Load it offline with `evaluate.load(str(koelectra_crf.metrics.EVALUATE_MODULE_PATH))`. It only wraps
`koelectra_crf.metrics.klue_ner_metrics`, so both give the same numbers; see that function for what each
number is and which published table it is comparable with.
"""

import datasets
import evaluate

from koelectra_crf.metrics import klue_ner_metrics

_DESCRIPTION = """KLUE NER metrics computed exactly as KLUE-baseline computes them: entity-level macro F1 \
(seqeval, strict IOB2) and character-level macro F1 over the 13 tags, from character-level tag names."""

_CITATION = """@inproceedings{park2021klue,
  title={KLUE: Korean Language Understanding Evaluation},
  author={Park, Sungjoon and others},
  booktitle={NeurIPS Datasets and Benchmarks},
  year={2021}
}"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted tags, one list of tag names per sentence, one tag per character (spaces included).
    references: gold tags, same shape.
    tokens (optional): the characters of each sentence; given, spaces are dropped as KLUE-baseline does.
Returns:
    entity_f1, char_f1, char_f1_without_o, entity_precision, entity_recall, entity_micro_f1, and per entity
    type (PS, LC, OG, DT, TI, QT) its precision, recall, f1 and support; all scores x 100.
Example:
    >>> metric = evaluate.load(path)
    >>> metric.compute(predictions=[["B-PS", "I-PS", "O"]], references=[["B-PS", "I-PS", "O"]])["entity_f1"]
    100.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KlueNerMetric(evaluate.Metric):
    """KLUE NER entity and character metrics."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/KLUE-benchmark/KLUE-baseline"],
        )

    def _compute(self, predictions, references, tokens=None) -> dict[str, float]:
        return klue_ner_metrics(references, predictions, tokens=tokens)
