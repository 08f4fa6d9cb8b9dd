"""training/study_tables.py: the study tables of docs/results.md, checked on made-up folders against arithmetic done
by hand (mean, sample standard deviation, unpaired standard error of a difference)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_run(folder: Path, entity_f1: float, per_epoch: list[float]) -> None:
    folder.mkdir(parents=True)
    labels = ["O", "B-PS", "I-PS", "B-LC", "I-LC"]
    scores = {"eval_entity_f1": entity_f1, "eval_char_f1": entity_f1 + 8, "eval_entity_micro_f1": 0.0,
              "eval_PS_f1": entity_f1 + 1, "eval_LC_f1": entity_f1 - 1}  # fmt: skip
    history = [{"epoch": n + 1, "eval_entity_f1": score} for n, score in enumerate(per_epoch)]
    files = {"eval_results.json": scores, "trainer_state.json": {"log_history": history},
             "config.json": {"id2label": dict(enumerate(labels))}}  # fmt: skip
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content), encoding="utf-8")


def tables(*args: str) -> str:
    command = [sys.executable, str(ROOT / "training/study_tables.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_runs_table_has_mean_sd_per_column_and_differences_with_their_standard_error(tmp_path):
    write_run(tmp_path / "plain-s0", 80.0, [70.0, 80.0, 79.0])
    write_run(tmp_path / "plain-s1", 82.0, [82.0, 81.0])
    write_run(tmp_path / "new-s0", 83.0, [60.0, 70.0, 83.0])
    write_run(tmp_path / "new-s1", 85.0, [80.0, 85.0, 84.0, 83.0])
    output = tables("runs", "--seeds", "0", "1", "--variant", f"plain={tmp_path}/plain-s{{seed}}",
                    "--variant", f"+ new={tmp_path}/new-s{{seed}}")  # fmt: skip
    lines = output.splitlines()
    assert lines[0] == "| variant | seeds | entity F1 | char F1 | best epoch | epochs | PS | LC |"
    # plain: 80, 82 -> 81.00 ± 1.41; best epochs 2 and 1; 3 and 2 epochs
    assert (
        lines[2]
        == "| plain | 2 | 81.00 ± 1.41 | 89.00 ± 1.41 | 1.50 ± 0.71 | 2.50 ± 0.71 | 82.00 ± 1.41 | 80.00 ± 1.41 |"
    )
    assert lines[3].startswith("| + new | 2 | 84.00 ± 1.41 | 92.00 ± 1.41 | 2.50 ± 0.71 | 3.50 ± 0.71 |")
    # difference +3.00, SE sqrt(2/2 + 2/2) = 1.41; the epoch columns are not compared
    assert lines[5] == (
        "- + new − plain: entity F1 +3.00 (SE 1.41), char F1 +3.00 (SE 1.41), PS +3.00 (SE 1.41), LC +3.00 (SE 1.41)"
    )


def test_a_run_evaluated_every_n_steps_shows_the_epochs_of_its_evaluations(tmp_path):
    """A few-shot child evaluated every 40 steps of an epoch of 4: its evaluations are at epochs 10, 20, 30."""
    folder = tmp_path / "child-s0"
    write_run(folder, 70.0, [50.0, 70.0, 65.0])
    state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    for entry in state["log_history"]:
        entry["epoch"] *= 10
    (folder / "trainer_state.json").write_text(json.dumps(state), encoding="utf-8")
    output = tables("runs", "--seeds", "0", "--variant", f"child={tmp_path}/child-s{{seed}}")
    assert output.splitlines()[2] == "| child | 1 | 70.00 | 78.00 | 20.00 | 30.00 | 71.00 | 69.00 |"


def test_variants_of_different_entity_types_share_one_table(tmp_path):
    """A parent of two types and a child that adds a third: the child's new type is "—" in the parent's row and left
    out of the difference, the shared ones compared; entity and char F1, averages over different types, are not."""
    write_run(tmp_path / "parent-s0", 80.0, [80.0])
    write_run(tmp_path / "child-s0", 70.0, [70.0])
    config = {"id2label": dict(enumerate(["O", "B-PS", "I-PS", "B-LC", "I-LC", "B-DT", "I-DT"]))}
    (tmp_path / "child-s0" / "config.json").write_text(json.dumps(config), encoding="utf-8")
    results = json.loads((tmp_path / "child-s0" / "eval_results.json").read_text(encoding="utf-8"))
    (tmp_path / "child-s0" / "eval_results.json").write_text(json.dumps({**results, "eval_DT_f1": 60.0}), "utf-8")
    output = tables("runs", "--seeds", "0", "--variant", f"parent={tmp_path}/parent-s{{seed}}",
                    "--variant", f"child={tmp_path}/child-s{{seed}}")  # fmt: skip
    lines = output.splitlines()
    assert lines[0] == "| variant | seeds | entity F1 | char F1 | best epoch | epochs | PS | LC | DT |"
    assert lines[2] == "| parent | 1 | 80.00 | 88.00 | 1.00 | 1.00 | 81.00 | 79.00 | — |"
    assert lines[3] == "| child | 1 | 70.00 | 78.00 | 1.00 | 1.00 | 71.00 | 69.00 | 60.00 |"
    assert lines[5] == (
        "- child − parent: PS -10.00 (one seed: no SE), LC -10.00 (one seed: no SE) "
        "(entity and char F1 not compared: over different entity types)"
    )


def test_a_seed_not_done_yet_is_left_out_and_said(tmp_path):
    write_run(tmp_path / "plain-s0", 80.0, [80.0])
    write_run(tmp_path / "plain-s1", 82.0, [82.0])
    write_run(tmp_path / "new-s0", 83.0, [83.0])
    (tmp_path / "new-s1").mkdir()  # a training still running
    variants = ["--variant", f"plain={tmp_path}/plain-s{{seed}}", "--variant", f"+ new={tmp_path}/new-s{{seed}}"]
    command = [sys.executable, str(ROOT / "training/study_tables.py"), "runs", "--seeds", "0", "1", *variants]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert f"+ new: left out, no eval_results.json (yet): {tmp_path}/new-s1" in result.stderr
    assert "| + new | 1 | 83.00 | 91.00 |" in result.stdout
    assert "- + new − plain: entity F1 +2.00 (one seed: no SE)" in result.stdout


def test_spacing_table_gives_each_variants_gaps_to_text_as_written(tmp_path):
    for seed, (written, noisy, none) in enumerate([(80.0, 70.0, 60.0), (82.0, 74.0, 62.0)]):
        folder = tmp_path / f"model-s{seed}"
        folder.mkdir()
        conditions = {condition: {"entity_f1": score, "char_f1": score}
                      for condition, score in (("as-is", written), ("noisy", noisy), ("none", none))}  # fmt: skip
        (folder / "robustness.json").write_text(json.dumps({"conditions": conditions}), encoding="utf-8")
    output = tables("spacing", "--seeds", "0", "1", "--variant", f"model={tmp_path}/model-s{{seed}}")
    # noisy − as written: 72 − 81 = −9.00, SE sqrt(8/2 + 2/2) = 2.24; none: 61 − 81 = −20.00, SE sqrt(2/2 + 2/2)
    assert "- model, entity F1: noisy − as written -9.00 (SE 2.24), none − as written -20.00 (SE 1.41)" in output
