"""`koelectra-crf errors`: every gold/predicted entity pair sorted into an error category.

A gold and a predicted entity form a pair when their character spans overlap. A pair is

- `correct`: same span, same type;
- `type`: same span, another type (type confusion);
- `boundary`: overlapping spans that differ, same type;
- `boundary+type`: overlapping spans that differ, another type.

A predicted entity that overlaps no gold entity is `spurious` (paired with nothing), a gold entity that no
prediction overlaps is `missed`. Counts are over pairs: an entity split in two is two pairs (each a boundary
error), and so are two entities merged into one.
"""

import json
from collections import Counter
from pathlib import Path

from koelectra_crf.alignment import OUTSIDE
from koelectra_crf.configuration_koelectra_crf import ENTITY_TYPES
from koelectra_crf.data import mark_entities
from koelectra_crf.evaluation import SentencePrediction, Span

CATEGORIES = ("correct", "boundary", "type", "boundary+type", "spurious", "missed")


def _overlap(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _pair_category(gold: Span, predicted: Span) -> str:
    same_span = gold[:2] == predicted[:2]
    same_type = gold[2] == predicted[2]
    if same_span:
        return "correct" if same_type else "type"
    return "boundary" if same_type else "boundary+type"


def classify_entities(gold: list[Span], predicted: list[Span]) -> list[tuple[str, Span | None, Span | None]]:
    """(category, gold entity or None, predicted entity or None) for every pair of one sentence, by position."""
    pairs = []
    for p in predicted:
        overlapping = [g for g in gold if _overlap(g, p)]
        pairs += [(_pair_category(g, p), g, p) for g in overlapping] or [("spurious", None, p)]
    pairs += [("missed", g, None) for g in gold if not any(_overlap(g, p) for p in predicted)]
    return sorted(pairs, key=lambda pair: min(span[0] for span in pair[1:] if span is not None))


def _describe(text: str, span: Span | None) -> str | None:
    return None if span is None else f"{text[span[0] : span[1]]} ({span[2]})"


def error_analysis(predictions: list[SentencePrediction], examples_per_category: int = 5) -> dict:
    """Counts and percentages of the categories, the entity type-confusion matrix and examples.

    The matrix counts every pair by (gold type, predicted type), `O` standing for the missing side of a missed or
    spurious entity. Examples are the first `examples_per_category` pairs of each category in data order.
    """
    counts = Counter()
    # KLUE's types always (the published model's table), then any other type of the data or the model.
    seen = {span[2] for p in predictions for span in (*p.gold_spans, *p.predicted_spans)}
    types = [*ENTITY_TYPES, *sorted(seen - set(ENTITY_TYPES)), OUTSIDE]
    confusion = {gold: dict.fromkeys(types, 0) for gold in types}
    examples = {category: [] for category in CATEGORIES}
    for sentence in predictions:
        gold_spans, predicted_spans = sentence.gold_spans, sentence.predicted_spans
        for category, gold, predicted in classify_entities(gold_spans, predicted_spans):
            counts[category] += 1
            confusion[gold[2] if gold else OUTSIDE][predicted[2] if predicted else OUTSIDE] += 1
            if len(examples[category]) < examples_per_category:
                examples[category].append(
                    {
                        "guid": sentence.guid,
                        "gold": _describe(sentence.text, gold),
                        "predicted": _describe(sentence.text, predicted),
                        "gold_marks": mark_entities(sentence.text, gold_spans),
                        "predicted_marks": mark_entities(sentence.text, predicted_spans),
                    }
                )
    total = sum(counts.values())
    return {
        "pairs": total,
        "counts": {category: counts[category] for category in CATEGORIES},
        "percentages": {category: 100 * counts[category] / total if total else 0.0 for category in CATEGORIES},
        "type_confusion": confusion,
        "examples": examples,
    }


def errors_markdown(report: dict) -> str:
    """The error analysis as a Markdown document."""
    lines = [
        "# Error analysis",
        "",
        f"{report['pairs']} gold/predicted entity pairs (overlapping spans pair up; an entity split in two or two "
        "entities merged into one count as two pairs).",
        "",
        "| category | pairs | % |",
        "|---|---:|---:|",
    ]
    lines += [f"| {c} | {report['counts'][c]} | {report['percentages'][c]:.2f} |" for c in CATEGORIES]
    types = list(report["type_confusion"])
    lines += [
        "",
        "## Type confusion (rows gold, columns predicted; O = no entity)",
        "",
        "| gold \\ predicted | " + " | ".join(types) + " |",
        "|---|" + "---:|" * len(types),
    ]
    lines += [
        f"| {gold} | " + " | ".join(str(row[t]) for t in types) + " |" for gold, row in report["type_confusion"].items()
    ]
    # Marked sentences go in code spans: Markdown would read `<text:TYPE>` as an HTML tag.
    for category, examples in report["examples"].items():
        lines += ["", f"## {category}", ""]
        for example in examples:
            lines += [
                f"- `{example['guid']}`: gold {example['gold'] or '—'}, predicted {example['predicted'] or '—'}",
                f"  - gold: `{example['gold_marks']}`",
                f"  - pred: `{example['predicted_marks']}`",
            ]
        if not examples:
            lines.append("(none)")
    return "\n".join(lines) + "\n"


def comparison_markdown(reports: dict[str, dict]) -> str:
    """Side-by-side category counts (and percentages) of several models' analyses of the same data."""
    names = list(reports)
    lines = [
        "# Error analysis, side by side",
        "",
        "Gold/predicted entity pairs per category (percentage of each model's pairs in parentheses).",
        "",
        "| category | " + " | ".join(f"`{name}`" for name in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for category in CATEGORIES:
        cells = [f"{r['counts'][category]} ({r['percentages'][category]:.1f}%)" for r in reports.values()]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines.append("| pairs | " + " | ".join(str(r["pairs"]) for r in reports.values()) + " |")
    return "\n".join(lines) + "\n"


def write_error_analysis(predictions: list[SentencePrediction], output_dir: Path, examples_per_category: int) -> dict:
    """Write `errors.json` and `errors.md`; return the analysis."""
    output_dir.mkdir(parents=True, exist_ok=True)
    report = error_analysis(predictions, examples_per_category)
    (output_dir / "errors.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    (output_dir / "errors.md").write_text(errors_markdown(report), encoding="utf-8")
    return report
