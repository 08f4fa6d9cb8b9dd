"""`koelectra-crf ablation`: the six variants of the original `korean_ner` project, over several seeds.

Each run is `python -m koelectra_crf.train --config PRESET --output_dir DIR/{variant}/seed-{seed} --seed SEED` with the
variant's flag overrides, launched as a subprocess (so that it works from an installed package, and any training
preset works). The runner is resumable: a run whose
folder holds `eval_results.json` is done and skipped; a run that was interrupted starts again from its latest
`checkpoint-N`. While a run trains, its folder holds `ablation.lock` with the runner's PID, so `--status` sees it as
running and other runners leave it alone: several runners may share one output folder (each claims a run by
creating its lock atomically), which is how one large GPU trains several small runs at once.
"""

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from koelectra_crf.analysis import plots
from koelectra_crf.configuration_koelectra_crf import ENTITY_TYPES
from koelectra_crf.metrics import metric_types
from koelectra_crf.train import (
    ADAPTED_ENCODER_FOLDER,
    RESUME_LAST,
    TRAIN_RESULTS_FILE,
    latest_checkpoint,
    parse_arguments,
)

TRAIN_MODULE = "koelectra_crf.train"
RESULTS_FILE = "eval_results.json"
LOCK_FILE = "ablation.lock"

_NO_TRICKS = ["--fgm_epsilon", "0", "--rdrop_alpha", "0"]
_TOKENS, _CHARACTERS = ["--tag_unit", "token"], ["--tag_unit", "character"]
VARIANTS: dict[str, list[str]] = {
    "baseline": ["--use_bilstm", "false", "--use_crf", "false", *_TOKENS, *_NO_TRICKS],
    "+crf": ["--use_bilstm", "false", "--use_crf", "true", *_TOKENS, *_NO_TRICKS],
    "+bilstm": ["--use_bilstm", "true", "--use_crf", "true", *_TOKENS, *_NO_TRICKS],
    "full_no_fgm": ["--use_bilstm", "true", "--use_crf", "true", *_TOKENS, "--fgm_epsilon", "0"],
    "full_no_rdrop": ["--use_bilstm", "true", "--use_crf", "true", *_TOKENS, "--rdrop_alpha", "0"],
    "full": ["--use_bilstm", "true", "--use_crf", "true", *_TOKENS],
    "character": ["--use_bilstm", "true", "--use_crf", "true", *_CHARACTERS, *_NO_TRICKS],
    "character_full": ["--use_bilstm", "true", "--use_crf", "true", *_CHARACTERS],
}
"""Flag overrides of each variant; the preset's own FGM and R-Drop settings (and its `--adapt_on`, which then adapts
the encoder in every run) hold where a variant sets none. Every variant names its tag unit: the original project's six
tag subword tokens, whatever the preset's default."""


@dataclass(frozen=True)
class Study:
    """The variants a study trains, and the (variant, reference) pairs whose entity F1 difference its report states."""

    variants: tuple[str, ...]
    comparisons: tuple[tuple[str, str], ...]


STUDIES = {
    # The six variants of the original project: each step of the ladder, and each training trick removed.
    "ablation": Study(
        ("baseline", "+crf", "+bilstm", "full_no_fgm", "full_no_rdrop", "full"),
        (
            ("+crf", "baseline"),
            ("+bilstm", "+crf"),
            ("full", "+bilstm"),
            ("full", "full_no_fgm"),
            ("full", "full_no_rdrop"),
        ),
    ),  # fmt: skip
    # Plain fine-tuning, the subword and the character head (BiLSTM + CRF), and the full recipe on each head.
    "heads": Study(
        ("baseline", "+bilstm", "character", "full", "character_full"),
        (
            ("character", "+bilstm"),
            ("+bilstm", "baseline"),
            ("character", "baseline"),
            ("full", "+bilstm"),
            ("character_full", "character"),
            ("character_full", "full"),
        ),
    ),  # fmt: skip
}
ABLATION = STUDIES["ablation"]

Launch = Callable[[list[str]], int]


def launch_subprocess(command: list[str]) -> int:
    """Run a command in the foreground (its output goes to this terminal); return its exit code."""
    return subprocess.run(command, check=False).returncode


def run_dir(output_dir: Path, variant: str, seed: int) -> Path:
    return output_dir / variant / f"seed-{seed}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def run_status(folder: Path) -> str:
    """`done` (results written), `running` (locked by a live runner) or `missing` (not started, or interrupted)."""
    if (folder / RESULTS_FILE).exists():
        return "done"
    try:
        pid = int((folder / LOCK_FILE).read_text())
    except FileNotFoundError:
        return "missing"
    except ValueError:  # a runner has just created the lock and not yet written its PID
        return "running"
    return "running" if _alive(pid) else "missing"


def claim(folder: Path) -> bool:
    """Create the run's lock with this process's PID, unless a live runner holds it; True if this process now owns
    the run. A lock left by a runner that died is replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one runner wins
        except FileExistsError:
            if run_status(folder) == "running":
                return False
            lock.unlink(missing_ok=True)  # stale: its runner died
            continue
        with os.fdopen(descriptor, "w") as file:
            file.write(str(os.getpid()))
        return True
    return False


def train_command(config: Path, folder: Path, seed: int, variant: str, extra: Iterable[str] = ()) -> list[str]:
    """The training command of one run, resuming from the run's latest checkpoint when it has one, starting afresh
    otherwise."""
    # `extra` comes before the variant's flags: with repeated flags the last wins, so a variant stays itself.
    command = [
        sys.executable,
        "-m",
        TRAIN_MODULE,
        "--config",
        str(config),
        "--output_dir",
        str(folder),
        "--seed",
        str(seed),
        *extra,
        *VARIANTS[variant],
    ]
    checkpoint = latest_checkpoint(folder)
    if checkpoint is not None:
        command += ["--resume_from_checkpoint", str(checkpoint)]
    elif (folder / ADAPTED_ENCODER_FOLDER).is_dir():  # stopped while adapting (`--adapt_on`): that resumes
        command += ["--resume_from_checkpoint", RESUME_LAST[0]]
    else:
        # The run's own folder, not done and without a checkpoint: it holds the lock and whatever an attempt killed
        # before its first checkpoint left, nothing to keep (the training refuses a non-empty folder otherwise).
        command += ["--overwrite_output_dir", "true"]
    return command


def run_ablation(
    config: Path,
    output_dir: Path,
    seeds: int = 3,
    extra: Iterable[str] = (),
    launch: Launch = launch_subprocess,
    study: Study = ABLATION,
) -> None:
    """Train every variant × seed (seeds 0..seeds-1, all variants of a seed before the next seed) that is neither
    done nor claimed by another runner. Stops at the first run that fails; running again resumes."""
    extra = list(extra)
    for seed in range(seeds):
        for variant in study.variants:
            folder = run_dir(output_dir, variant, seed)
            if run_status(folder) == "done" or not claim(folder):
                print(f"{variant} seed {seed}: {run_status(folder)}, skipped")
                continue
            try:
                command = train_command(config, folder, seed, variant, extra)
                print(f"{variant} seed {seed}: {' '.join(command)}")
                exit_code = launch(command)
            finally:
                (folder / LOCK_FILE).unlink()
            if exit_code != 0:
                raise RuntimeError(f"{variant} seed {seed} failed (exit code {exit_code}); run again to resume it")


def check_arguments(
    config: Path, output_dir: Path, seeds: int = 3, extra: Iterable[str] = (), study: Study = ABLATION
) -> list[list[str]]:
    """Parse the training arguments of every variant × seed as its run would (`train.parse_arguments`), training
    nothing; return the commands. A flag that the training does not know fails here, before any run starts."""
    commands = []
    for seed in range(seeds):
        for variant in study.variants:
            command = train_command(config, run_dir(output_dir, variant, seed), seed, variant, extra)
            parse_arguments(command[3:])
            commands.append(command)
    return commands


def status_table(output_dir: Path, seeds: int = 3, study: Study = ABLATION) -> str:
    """Markdown table of every variant × seed: status, latest checkpoint, entity F1 when done."""
    lines = ["| variant | seed | status | latest checkpoint | entity F1 |", "|---|---:|---|---|---:|"]
    for variant in study.variants:
        for seed in range(seeds):
            folder = run_dir(output_dir, variant, seed)
            status = run_status(folder)
            checkpoint = latest_checkpoint(folder)
            f1 = f"{read_run_results(folder)['entity_f1']:.2f}" if status == "done" else ""
            lines.append(f"| {variant} | {seed} | {status} | {checkpoint.name if checkpoint else ''} | {f1} |")
    return "\n".join(lines) + "\n"


def read_run_results(folder: Path) -> dict[str, float]:
    """A finished run's metrics, as `koelectra_crf.train` writes them: `eval_results.json` without the Trainer's `eval_`
    prefix (`entity_f1`, `char_f1`, `PS_f1`, ...), and from `train_results.json` `train_runtime` (seconds) and
    `epochs` (trained: fewer than asked for where early stopping ended the run)."""
    results = json.loads((folder / RESULTS_FILE).read_text())
    train_results = json.loads((folder / TRAIN_RESULTS_FILE).read_text())
    return {key.removeprefix("eval_"): value for key, value in results.items()} | {
        "train_runtime": train_results["train_runtime"],
        "epochs": train_results["epoch"],
    }


def collect_results(output_dir: Path, study: Study = ABLATION) -> dict[str, list[dict[str, float]]]:
    """`read_run_results` of every finished run under `output_dir`, per variant, in seed order."""
    results = {}
    for variant in study.variants:
        folders = sorted(
            (path.parent for path in (output_dir / variant).glob("seed-*/" + RESULTS_FILE)),
            key=lambda folder: int(folder.name.removeprefix("seed-")),
        )
        results[variant] = [read_run_results(folder) for folder in folders]
    return results


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 denominator; None for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def difference(values: list[float], reference: list[float]) -> tuple[float, float | None]:
    """Difference of means and its standard error sqrt(s1²/n1 + s2²/n2) (None with fewer than 2 runs a side)."""
    (mean, std), (reference_mean, reference_std) = mean_std(values), mean_std(reference)
    if std is None or reference_std is None:
        return mean - reference_mean, None
    return mean - reference_mean, (std**2 / len(values) + reference_std**2 / len(reference)) ** 0.5


def ablation_report(output_dir: Path, study: Study = ABLATION) -> str:
    """Markdown: mean ± std over seeds of entity F1, char F1, per-type F1, epochs trained and training time per
    epoch (a variant's cost, comparable where runs stopped early at different epochs) per variant, then the entity
    F1 differences of the study's comparisons with their standard errors."""
    results = collect_results(output_dir, study)
    # The types of the runs' data, as their metrics name them (KLUE's six where they name none).
    runs = [run for variant_runs in results.values() for run in variant_runs]
    types = (metric_types(runs[0]) if runs else []) or list(ENTITY_TYPES)
    metrics = ["entity_f1", "char_f1", *(f"{t}_f1" for t in types)]
    lines = [
        f"# Ablation ({output_dir})",
        "",
        "Mean ± sample standard deviation over seeds. F1 × 100; epochs trained (early stopping may end a run before "
        "its last); train time per epoch in minutes.",
        "",
        "| variant | runs | entity F1 | char F1 | "
        + " | ".join(f"{t} F1" for t in types)
        + " | epochs | min / epoch |",
        "|---|---:|" + "---:|" * (len(metrics) + 2),
    ]
    for variant, runs in results.items():
        cells = [_cell([run[m] for run in runs]) for m in metrics] + [
            _cell([run["epochs"] for run in runs]),
            _cell([run["train_runtime"] / 60 / run["epochs"] for run in runs]),
        ]
        lines.append(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Entity F1 differences",
        "",
        "Δ = difference of the mean entity F1; SE = its standard error over seeds, sqrt(s1²/n1 + s2²/n2). A |Δ| "
        "under 2 SE cannot be told apart from seed-to-seed variation; with a few seeds, one beyond 2 SE is an "
        "indication, not a significance test.",
        "",
        "| variant | reference | Δ entity F1 | SE | beyond 2 SE |",
        "|---|---|---:|---:|---|",
    ]
    for variant, reference in study.comparisons:
        if not results[variant] or not results[reference]:
            lines.append(f"| {variant} | {reference} | – | – | not enough runs |")
            continue
        delta, se = difference([r["entity_f1"] for r in results[variant]], [r["entity_f1"] for r in results[reference]])
        verdict = "no spread (one run)" if se is None else ("yes" if abs(delta) > 2 * se else "no")
        lines.append(f"| {variant} | {reference} | {delta:+.2f} | {'–' if se is None else f'{se:.2f}'} | {verdict} |")
    lines += ["", "A resumed run's time per epoch reads low: its train time counts only the part after resuming."]
    return "\n".join(lines) + "\n"


def write_report(output_dir: Path, study: Study = ABLATION) -> str:
    """Write `ablation.md` and `ablation.png` (entity and char F1 per variant, error bars = std) into
    `output_dir`; return the Markdown."""
    report = ablation_report(output_dir, study)
    (output_dir / "ablation.md").write_text(report)
    results = {variant: runs for variant, runs in collect_results(output_dir, study).items() if runs}
    series, errors = {}, {}
    for metric, name in (("entity_f1", "entity F1"), ("char_f1", "char F1")):
        stats = [mean_std([run[metric] for run in runs]) for runs in results.values()]
        series[name] = [mean for mean, _ in stats]
        errors[name] = [std or 0.0 for _, std in stats]
    plots.bar_chart(
        output_dir / "ablation.png",
        list(results),
        series,
        errors,
        title="Ablation: mean over seeds, error bars = std",
        ylabel="F1",
    )
    return report
