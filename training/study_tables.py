"""The tables of docs/results.md's studies, from the folders the study commands write: several seeds of each variant,
mean ± sample standard deviation, and each variant's difference from the first with its standard error,
sqrt(s1²/n1 + s2²/n2) (unpaired: variants that share a seed are not paired).

    python training/study_tables.py runs --seeds 0 1 2 \\
        --variant "as it is=outputs/char-e20-s{seed}" --variant "+ morpheme features=outputs/morph-s{seed}"
    python training/study_tables.py errors --seeds 0 1 2 --variant "as it is=outputs/errors/char-e20-s{seed}" ...
    python training/study_tables.py spacing --seeds 0 1 2 --variant "as it is=outputs/robust/char-e20-s{seed}" ...

Each variant is `NAME=FOLDER`, `{seed}` standing for each seed; a seed whose folder has no result yet (a study in
progress) is left out, and said on stderr. `runs` reads a training's output folder (the final
`eval_results.json`: the kept evaluation's scores; `trainer_state.json`: the epoch of that evaluation and of the
last; `config.json`: its entity types),
`errors` the folder of `koelectra-crf errors` (`errors.json`), `spacing` the folder of `koelectra-crf evaluate
--spacing as-is noisy none` (`robustness.json`). Prints Markdown.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

AGGREGATES = ("entity F1", "char F1")  # run scores over all of a model's entity types
ERROR_KINDS = ("boundary", "type", "boundary+type", "spurious", "missed")
CONDITIONS = ("as-is", "noisy", "none")


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:  # a run so far without its other seeds: no spread to show
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def difference(values: list[float], reference: list[float]) -> str:
    change = f"{statistics.mean(values) - statistics.mean(reference):+.2f}"
    if min(len(values), len(reference)) == 1:
        return f"{change} (one seed: no SE)"
    se = (statistics.variance(values) / len(values) + statistics.variance(reference) / len(reference)) ** 0.5
    return f"{change} (SE {se:.2f})"


def read_json(folder: str, name: str) -> dict:
    return json.loads((Path(folder) / name).read_text(encoding="utf-8"))


def run_scores(folder: str) -> dict[str, float]:
    scores = read_json(folder, "eval_results.json")
    evaluations = [
        entry for entry in read_json(folder, "trainer_state.json")["log_history"] if "eval_entity_f1" in entry
    ]
    best = max(range(len(evaluations)), key=lambda n: evaluations[n]["eval_entity_f1"])
    labels = read_json(folder, "config.json")["id2label"].values()
    types = dict.fromkeys(label[2:] for label in labels if label != "O")  # the model's order (KLUE's: PS, LC, OG...)
    # The epochs the log gives each evaluation: a run evaluated every N steps (the few-shot children) is not at its
    # n-th epoch at its n-th evaluation.
    return {"entity F1": scores["eval_entity_f1"], "char F1": scores["eval_char_f1"],
            "best epoch": evaluations[best]["epoch"], "epochs": evaluations[-1]["epoch"],
            **{t: scores[f"eval_{t}_f1"] for t in types}}  # fmt: skip


def error_scores(folder: str) -> dict[str, float]:
    counts = read_json(folder, "errors.json")["counts"]
    errors = sum(counts[kind] for kind in ERROR_KINDS)
    return {**{kind: counts[kind] for kind in ERROR_KINDS}, "errors": errors,
            "boundary share %": 100 * counts["boundary"] / errors}  # fmt: skip


def spacing_scores(folder: str) -> dict[str, float]:
    conditions = read_json(folder, "robustness.json")["conditions"]
    return {f"{metric} {condition}": conditions[condition][metric]
            for metric in ("entity_f1", "char_f1") for condition in CONDITIONS}  # fmt: skip


READERS = {"runs": run_scores, "errors": error_scores, "spacing": spacing_scores}
RESULT_FILES = {"runs": "eval_results.json", "errors": "errors.json", "spacing": "robustness.json"}


def table(kind: str, variants: list[str], seeds: list[int]) -> str:
    scores, counts = {}, {}
    for variant in variants:
        name, _, pattern = variant.partition("=")
        folders = [pattern.format(seed=seed) for seed in seeds]
        missing = [folder for folder in folders if not (Path(folder) / RESULT_FILES[kind]).is_file()]
        if missing == folders:
            raise SystemExit(f"study_tables.py: error: no {RESULT_FILES[kind]} for {name!r}: {', '.join(folders)}")
        if missing:  # a study in progress: the seeds done so far, and said so
            print(f"{name}: left out, no {RESULT_FILES[kind]} (yet): {', '.join(missing)}", file=sys.stderr)
        per_seed = [READERS[kind](folder) for folder in folders if folder not in missing]
        scores[name] = {column: [seed_scores[column] for seed_scores in per_seed] for column in per_seed[0]}
        counts[name] = len(per_seed)
    # Variants may differ in entity types (a parent of three types and its children of six): every variant's
    # columns, "—" where a variant has none, and differences over the columns both sides have. Entity and character
    # F1 of such variants average over different types, so only their per-type columns are compared.
    columns = list(dict.fromkeys(column for values in scores.values() for column in values))
    lines = ["| variant | seeds | " + " | ".join(columns) + " |", "|---|---:|" + "---:|" * len(columns)]
    lines += [f"| {name} | {counts[name]} | " + " | ".join(mean_sd(values[c]) if c in values else "—"
                                                         for c in columns) + " |"
              for name, values in scores.items()]  # fmt: skip
    reference_name, reference = next(iter(scores.items()))
    lines.append("")
    for name, values in list(scores.items())[1:]:
        same_types = values.keys() == reference.keys()
        left_out = {"best epoch", "epochs"} | (set() if same_types else set(AGGREGATES))
        shown = [c for c in columns if c in values and c in reference and c not in left_out]
        note = "" if same_types else " (entity and char F1 not compared: over different entity types)"
        lines.append(f"- {name} − {reference_name}: " + ", ".join(
            f"{c} {difference(values[c], reference[c])}" for c in shown) + note)  # fmt: skip
    if kind == "spacing":  # each variant's gaps: a noisy or space-less text against the same model's text as written
        for name, values in scores.items():
            gaps = [f"{c} − as written {difference(values[f'entity_f1 {c}'], values['entity_f1 as-is'])}"
                    for c in CONDITIONS[1:]]  # fmt: skip
            lines.append(f"- {name}, entity F1: " + ", ".join(gaps))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=READERS)
    parser.add_argument("--variant", action="append", required=True, help="NAME=FOLDER, {seed} for each seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="(a variant's {seed} values)")
    args = parser.parse_args(argv)
    print(table(args.kind, args.variant, args.seeds), end="")


if __name__ == "__main__":
    main()
