"""The ablation runner with a fake trainer (flags per variant, skipping, resuming, --status and --report), and every
variant's flags parsed by the real training, from the source tree and from an installed wheel."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from processes import run_command
from test_analysis import assert_valid_png

from koelectra_crf.ablation import (
    ABLATION,
    LOCK_FILE,
    STUDIES,
    check_arguments,
    claim,
    run_ablation,
    train_command,
)
from koelectra_crf.cli import build_parser, main
from koelectra_crf.train import ADAPTED_ENCODER_FOLDER, latest_checkpoint, parse_arguments

VARIANTS = ABLATION.variants

ROOT = Path(__file__).resolve().parents[1]


def flags(command: list[str]) -> dict[str, str]:
    """The command's `--flag value` pairs (after `python -m module`), the last of a repeated flag winning (as
    argparse reads them)."""
    return dict(zip(command[3::2], command[4::2], strict=True))


class FakeTrainer:
    """Stands in for `python -m koelectra_crf.train`: saves checkpoint-10 and checkpoint-20, then writes the results
    files as the Trainer does. A run listed in `interrupt` stops (Ctrl-C) right after its first checkpoint."""

    def __init__(self, interrupt: tuple[str, int] | None = None):
        self.commands: list[list[str]] = []
        self.interrupt = interrupt

    def __call__(self, command: list[str]) -> int:
        self.commands.append(command)
        args = flags(command)
        folder = Path(args["--output_dir"])
        variant, seed = folder.parent.name, int(args["--seed"])
        assert (folder / LOCK_FILE).exists()  # the runner marks the run as running while it trains
        if "--resume_from_checkpoint" not in args:
            (folder / "checkpoint-10").mkdir()
        if (variant, seed) == self.interrupt:
            raise KeyboardInterrupt
        (folder / "checkpoint-20").mkdir()
        f1 = 80.0 + list(VARIANTS).index(variant) + seed
        (folder / "eval_results.json").write_text(json.dumps({"eval_entity_f1": f1, "eval_char_f1": f1 + 10}))
        (folder / "train_results.json").write_text(json.dumps({"train_runtime": 60.0 * (seed + 1), "epoch": 2.0}))
        return 0


def test_every_variant_and_seed_runs_once_with_its_flags(tmp_path):
    trainer = FakeTrainer()
    run_ablation(tmp_path / "preset.json", tmp_path / "out", seeds=2, extra=["--num_train_epochs", "2"], launch=trainer)
    assert [(Path(flags(c)["--output_dir"]).parent.name, flags(c)["--seed"]) for c in trainer.commands] == [
        (variant, str(seed)) for seed in (0, 1) for variant in VARIANTS
    ]
    by_variant = {Path(flags(c)["--output_dir"]).parent.name: flags(c) for c in trainer.commands}
    expected = {
        "baseline": ("false", "false", "0", "0"),
        "+crf": ("false", "true", "0", "0"),
        "+bilstm": ("true", "true", "0", "0"),
        "full_no_fgm": ("true", "true", "0", None),
        "full_no_rdrop": ("true", "true", None, "0"),
        "full": ("true", "true", None, None),
    }
    for variant, (bilstm, crf, fgm, rdrop) in expected.items():
        args = by_variant[variant]
        assert (args["--use_bilstm"], args["--use_crf"]) == (bilstm, crf), variant
        assert (args.get("--fgm_epsilon"), args.get("--rdrop_alpha")) == (fgm, rdrop), variant
        assert args["--config"] == str(tmp_path / "preset.json") and args["--num_train_epochs"] == "2"
        # A fresh run's folder already holds the runner's lock: the training must be told it may start there.
        assert "--resume_from_checkpoint" not in args and args["--overwrite_output_dir"] == "true"
    assert not list((tmp_path / "out").rglob(LOCK_FILE))


def test_variant_flags_win_over_extra_arguments(tmp_path):
    trainer = FakeTrainer()
    run_ablation(tmp_path / "p.json", tmp_path / "out", seeds=1, extra=["--fgm_epsilon", "0.3"], launch=trainer)
    by_variant = {Path(flags(c)["--output_dir"]).parent.name: flags(c) for c in trainer.commands}
    assert by_variant["full"]["--fgm_epsilon"] == "0.3"
    assert by_variant["full_no_fgm"]["--fgm_epsilon"] == "0"


def test_a_run_stopped_while_adapting_resumes_its_adaptation(tmp_path):
    """A run of a preset with `--adapt_on` stopped before its first checkpoint keeps its adapted encoder: the
    command resumes (the training reuses or resumes the adaptation) instead of starting afresh, which deletes it."""
    folder = tmp_path / "character" / "seed-0"
    (folder / ADAPTED_ENCODER_FOLDER / "checkpoint-200").mkdir(parents=True)
    command = flags(train_command(tmp_path / "p.json", folder, 0, "character"))
    assert command["--resume_from_checkpoint"] == "last" and "--overwrite_output_dir" not in command
    shutil.rmtree(folder / ADAPTED_ENCODER_FOLDER)
    assert "--resume_from_checkpoint" not in flags(train_command(tmp_path / "p.json", folder, 0, "character"))


def test_finished_runs_are_skipped_and_an_interrupted_run_resumes(tmp_path):
    output_dir = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_ablation(tmp_path / "p.json", output_dir, seeds=1, launch=FakeTrainer(interrupt=("+crf", 0)))
    interrupted = output_dir / "+crf" / "seed-0"
    assert latest_checkpoint(interrupted) == interrupted / "checkpoint-10"
    assert not (interrupted / LOCK_FILE).exists()
    assert not (output_dir / "+bilstm").exists()  # nothing ran after the interruption

    trainer = FakeTrainer()
    run_ablation(tmp_path / "p.json", output_dir, seeds=1, launch=trainer)
    launched = [Path(flags(c)["--output_dir"]).parent.name for c in trainer.commands]
    assert launched == [v for v in VARIANTS if v != "baseline"]  # baseline was done
    assert flags(trainer.commands[0])["--resume_from_checkpoint"] == str(interrupted / "checkpoint-10")
    assert "--overwrite_output_dir" not in flags(trainer.commands[0])
    assert all("--resume_from_checkpoint" not in flags(c) for c in trainer.commands[1:])
    assert all((output_dir / v / "seed-0" / "eval_results.json").exists() for v in VARIANTS)

    trainer = FakeTrainer()
    run_ablation(tmp_path / "p.json", output_dir, seeds=1, launch=trainer)
    assert trainer.commands == []


def test_runners_sharing_a_folder_train_each_run_once(tmp_path):
    output_dir = tmp_path / "out"
    second_runner = FakeTrainer()
    first_runner_commands = []

    def first_runner(command: list[str]) -> int:
        # While the first runner trains its first run, a second runner starts on the same folder.
        if not first_runner_commands:
            run_ablation(tmp_path / "p.json", output_dir, seeds=1, launch=second_runner)
        first_runner_commands.append(command)
        return FakeTrainer()(command)

    run_ablation(tmp_path / "p.json", output_dir, seeds=1, launch=first_runner)
    trained = [Path(flags(c)["--output_dir"]).parent.name for c in first_runner_commands + second_runner.commands]
    assert trained == list(VARIANTS)  # the first runner's claimed run, then the second runner took all the others
    assert not list(output_dir.rglob(LOCK_FILE))


def test_a_run_is_claimed_once(tmp_path):
    assert claim(tmp_path / "run")
    assert (tmp_path / "run" / LOCK_FILE).read_text() == str(os.getpid())
    assert not claim(tmp_path / "run")  # held by a live runner
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / LOCK_FILE).touch()  # created by another runner that has not written its PID yet
    assert not claim(tmp_path / "other")


def test_a_lock_left_by_a_dead_runner_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = tmp_path / "out" / "baseline" / "seed-0"
    folder.mkdir(parents=True)
    (folder / LOCK_FILE).write_text(str(dead.pid))
    trainer = FakeTrainer()
    run_ablation(tmp_path / "p.json", tmp_path / "out", seeds=1, launch=trainer)
    assert [Path(flags(c)["--output_dir"]).parent.name for c in trainer.commands] == list(VARIANTS)


def test_a_failed_run_stops_the_ablation(tmp_path):
    with pytest.raises(RuntimeError, match="baseline seed 0 failed"):
        run_ablation(tmp_path / "p.json", tmp_path / "out", seeds=1, launch=lambda command: 1)
    assert not (tmp_path / "out" / "+crf").exists()


def test_latest_checkpoint_is_the_highest_step(tmp_path):
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-x", "checkpoint-2-11", "runs"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-12").write_text("a file, not a checkpoint")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert latest_checkpoint(tmp_path / "runs") is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_status_reads_done_running_and_missing(tmp_path, capsys):
    output_dir = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_ablation(tmp_path / "p.json", output_dir, seeds=1, launch=FakeTrainer(interrupt=("+bilstm", 0)))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (output_dir / "+bilstm" / "seed-0" / LOCK_FILE).write_text(str(dead.pid))  # a runner that died: missing
    running = output_dir / "full" / "seed-0"
    running.mkdir(parents=True)
    (running / LOCK_FILE).write_text(str(os.getpid()))  # a live runner
    capsys.readouterr()
    main(["ablation", "--output_dir", str(output_dir), "--seeds", "2", "--status"])
    rows = [tuple(cell.strip() for cell in line.split("|")[1:5]) for line in capsys.readouterr().out.splitlines()]
    assert ("baseline", "0", "done", "checkpoint-20") in rows
    assert ("+crf", "0", "done", "checkpoint-20") in rows
    assert ("+bilstm", "0", "missing", "checkpoint-10") in rows
    assert ("full", "0", "running", "") in rows
    assert ("full_no_fgm", "0", "missing", "") in rows
    assert ("baseline", "1", "missing", "") in rows
    assert len(rows) == len(set(rows)) == 2 + 2 * len(VARIANTS)  # header, separator, variant × seed


def write_run(folder: Path, entity_f1: float, char_f1: float, minutes: float, epochs: float = 5.0) -> None:
    folder.mkdir(parents=True)
    results = {"eval_entity_f1": entity_f1, "eval_char_f1": char_f1, "eval_loss": 1.0}
    results |= {f"eval_{t}_f1": entity_f1 - k for k, t in enumerate(["PS", "LC", "OG", "DT", "TI", "QT"])}
    (folder / "eval_results.json").write_text(json.dumps(results))
    train_results = {"train_runtime": 60 * minutes, "train_loss": 0.5, "epoch": epochs}
    (folder / "train_results.json").write_text(json.dumps(train_results))


def test_report_reads_the_results_directory(tmp_path, capsys):
    output_dir = tmp_path / "out"
    # Early stopping ended the runs after 4, 5 and 6 epochs: 2.5, 2.0 and 2.0 minutes an epoch.
    for seed, (f1, minutes, epochs) in enumerate([(80.0, 10.0, 4.0), (81.0, 10.0, 5.0), (82.0, 12.0, 6.0)]):
        write_run(output_dir / "baseline" / f"seed-{seed}", f1, 90.0 + seed, minutes, epochs)
    for seed, f1 in enumerate([84.0, 84.5, 85.0]):
        write_run(output_dir / "+bilstm" / f"seed-{seed}", f1, 95.0, 20.0)
    for seed, f1 in enumerate([86.0, 85.0, 87.0]):
        write_run(output_dir / "full" / f"seed-{seed}", f1, 96.0, 30.0)
    write_run(output_dir / "+crf" / "seed-0", 83.0, 93.0, 15.0)
    (output_dir / "full_no_fgm" / "seed-0" / "checkpoint-10").mkdir(parents=True)  # unfinished: not reported

    main(["ablation", "--output_dir", str(output_dir), "--report"])
    report = (output_dir / "ablation.md").read_text()
    assert capsys.readouterr().out == report
    summary = report.split("## Entity F1 differences")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in summary.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}  # fmt: skip
    # runs, entity F1, char F1, PS..QT F1, epochs, minutes per epoch (mean 2.1667, std sqrt(0.0833) = 0.2887)
    assert rows["baseline"] == ["3", "81.00 ± 1.00", "91.00 ± 1.00", "81.00 ± 1.00", "80.00 ± 1.00",
                                "79.00 ± 1.00", "78.00 ± 1.00", "77.00 ± 1.00", "76.00 ± 1.00", "5.00 ± 1.00",
                                "2.17 ± 0.29"]  # fmt: skip
    assert rows["+crf"][:3] == ["1", "83.00", "93.00"]
    assert rows["full_no_fgm"][:3] == ["0", "–", "–"]
    # Differences: full − +bilstm = 1.5 with SE sqrt(1/3 + 0.25/3) = 0.645 (beyond 2 SE);
    # +bilstm − +crf has one run on one side; full − full_no_fgm has no runs on one side.
    assert "| full | +bilstm | +1.50 | 0.65 | yes |" in report
    assert "| +crf | baseline | +2.00 | – | no spread (one run) |" in report
    assert "| full | full_no_fgm | – | – | not enough runs |" in report
    assert_valid_png(output_dir / "ablation.png")


def test_ablation_arguments_after_double_dash_go_to_every_run(tmp_path):
    args = build_parser().parse_args(["ablation", "--config", "p.json", "--output_dir", "d", "--", "--max_steps", "5"])
    assert args.extra == ["--max_steps", "5"]
    with pytest.raises(SystemExit):
        main(["ablation", "--output_dir", str(tmp_path)])  # training needs --config


PRESETS = [
    "training/configs/offline-e5-small.json",
    "training/configs/offline-e5-small-self-training.json",
    "training/configs/smoke.json",
]
EXPECTED_SETTINGS = {  # variant: (use_bilstm, use_crf, FGM on, R-Drop on, tag_unit), as the training reads them
    "baseline": (False, False, False, False, "token"),
    "+crf": (False, True, False, False, "token"),
    "+bilstm": (True, True, False, False, "token"),
    "full_no_fgm": (True, True, False, True, "token"),
    "full_no_rdrop": (True, True, True, False, "token"),
    "full": (True, True, True, True, "token"),
    "character": (True, True, False, False, "character"),
    "character_full": (True, True, True, True, "character"),
}


@pytest.mark.parametrize("study", sorted(STUDIES))
@pytest.mark.parametrize("preset", PRESETS)
def test_every_variant_command_parses_into_its_settings(preset, study, tmp_path):
    variants = STUDIES[study].variants
    commands = check_arguments(ROOT / preset, tmp_path, 2, ["--num_train_epochs", "1"], STUDIES[study])
    assert len(commands) == 2 * len(variants)
    assert {Path(command[command.index("--output_dir") + 1]).parent.name for command in commands} == set(variants)
    for command in commands:
        assert command[:3] == [sys.executable, "-m", "koelectra_crf.train"]
        _, head, _, training, _ = parse_arguments(command[3:])
        variant = Path(training.output_dir).parent.name
        settings = (head.use_bilstm, head.use_crf, training.fgm_epsilon > 0, training.rdrop_alpha > 0, head.tag_unit)
        assert settings == EXPECTED_SETTINGS[variant], variant
        assert training.num_train_epochs == 1 and training.seed == int(Path(training.output_dir).name[len("seed-") :])


def test_check_refuses_a_flag_the_training_does_not_know(tmp_path):
    with pytest.raises(ValueError, match="no_such_flag"):
        check_arguments(ROOT / PRESETS[1], tmp_path, seeds=1, extra=["--no_such_flag", "1"])


@pytest.mark.slow
def test_ablation_from_an_installed_wheel_parses_every_variant(tmp_path):
    """`koelectra-crf ablation` needs no source tree: a wheel installed into a fresh venv launches the training as a
    module (`-m koelectra_crf.train`) and every variant's arguments parse there."""
    source = tmp_path / "source"  # a copy, so that building leaves nothing in the checkout
    ignored = shutil.ignore_patterns(".git", ".venv", "outputs", "build", "*.egg-info", "__pycache__", "*_cache")
    shutil.copytree(ROOT, source, ignore=ignored)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, source]
    run_command(build, timeout=600)
    (wheel,) = tmp_path.glob("koelectra_crf-*.whl")
    venv = tmp_path / "venv"
    run_command([sys.executable, "-m", "venv", venv], timeout=300)
    python = venv / "bin" / "python"
    run_command([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], timeout=600)
    # The venv sees this interpreter's torch, transformers, ...: the folders it imports installed packages from, in a
    # venv or not (`venv --system-site-packages` would give the base interpreter's, not an outer venv's). The .pth
    # lines only extend sys.path (their own .pth files, such as this checkout's editable install, are not read), after
    # the venv's own site-packages: koelectra_crf comes from the wheel.
    (inner_site_packages,) = (venv / "lib").glob("python3*/site-packages")
    outer = [path for path in sys.path if Path(path).name in ("site-packages", "dist-packages")]
    (inner_site_packages / "outer-environment.pth").write_text("\n".join(outer) + "\n")
    work = tmp_path / "elsewhere"  # not the source tree
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": ""}
    located = run_command([python, "-c", "import koelectra_crf; print(koelectra_crf.__file__)"], cwd=work, env=env,
                          timeout=300)  # fmt: skip
    assert Path(located.stdout.strip()).is_relative_to(venv)
    completed = run_command(
        [venv / "bin" / "koelectra-crf", "ablation", "--check", "--config", ROOT / PRESETS[0], "--output_dir", "runs",
         "--seeds", "2", "--", "--num_train_epochs", "1"],
        cwd=work, env=env, timeout=600,
    )  # fmt: skip
    commands = completed.stdout.splitlines()
    assert len(commands) == 2 * len(VARIANTS)
    assert all(command.startswith(f"{python} -m koelectra_crf.train --config ") for command in commands)


def test_report_columns_are_the_types_of_the_runs_data(tmp_path):
    """Runs trained on data of other types (`--train_file` with PRD): the table has their types' F1 columns."""
    output_dir = tmp_path / "out"
    folder = output_dir / "baseline" / "seed-0"
    folder.mkdir(parents=True)
    results = {"eval_entity_f1": 70.0, "eval_char_f1": 80.0}
    results |= {f"eval_{t}_{m}": 60.0 + k for k, t in enumerate(["PS", "PRD"]) for m in ("f1", "support")}
    (folder / "eval_results.json").write_text(json.dumps(results))
    (folder / "train_results.json").write_text(json.dumps({"train_runtime": 60.0, "epoch": 1.0}))
    main(["ablation", "--output_dir", str(output_dir), "--report"])
    report = (output_dir / "ablation.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| variant"))
    assert "| PS F1 | PRD F1 |" in header and "OG" not in header
    assert "| baseline | 1 | 70.00 | 80.00 | 60.00 | 61.00 |" in report
