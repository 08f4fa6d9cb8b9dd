"""The README's quick start and evaluation commands, run as written from where it says to run them: the repository
root (a copy of it, so that `outputs/` of the checkout is left alone)."""

import ast
import json
import os
import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
from processes import run_command

from koelectra_crf import formats

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

RUNNER = """
import ast, json, sys
tree = ast.parse(sys.stdin.read())
*statements, last = tree.body
exec(compile(ast.Module(statements, type_ignores=[]), "README", "exec"))
print(json.dumps(eval(compile(ast.Expression(last.value), "README", "eval")), ensure_ascii=False))
"""
"""Runs a Python snippet (from stdin) and prints its last expression's value as JSON, as an interactive session
would show it."""


def code_blocks(section: str, language: str) -> list[str]:
    """The ```language blocks of the README section whose heading starts with `section`."""
    text = README.split(f"\n## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


@pytest.mark.slow
def test_quick_start_and_evaluation_commands_run_as_written(tmp_path):
    root = tmp_path / "koelectra-crf"
    ignored = shutil.ignore_patterns(".git", ".venv", "outputs", "build", "*.egg-info", "__pycache__", "*_cache")
    shutil.copytree(ROOT, root, ignore=ignored)
    # The commands as a user of this environment types them: `python` and `koelectra-crf` are its own.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "HF_MODULES_CACHE": str(tmp_path / "modules"), "OMP_NUM_THREADS": "1"}  # fmt: skip

    (train,) = code_blocks("Quick start", "bash")
    run_command(["bash", "-c", train], cwd=root, env=env, timeout=600)
    assert (root / "outputs" / "smoke" / "model.safetensors").is_file()

    (snippet,) = code_blocks("Quick start", "python")
    entities = json.loads(
        run_command([sys.executable, "-c", RUNNER], input=snippet, cwd=root, env=env, timeout=300).stdout
    )
    text = ast.literal_eval(re.search(r"ner\((\".*?\"),", snippet).group(1))
    shown = ast.literal_eval(re.search(r"# \[(\{.*?\})", snippet).group(1))  # the first entity the README shows
    assert {key: entities[0][key] for key in ("entity_group", "word", "start", "end")} == {
        key: shown[key] for key in ("entity_group", "word", "start", "end")
    }
    assert all(entity["word"] == text[entity["start"] : entity["end"]] for entity in entities)

    evaluate, predict = code_blocks("Evaluation", "bash")[0].strip().splitlines()
    run_command(["bash", "-c", evaluate], cwd=root, env=env, timeout=300)
    metrics = json.loads((root / "outputs" / "eval" / "metrics.json").read_text())
    assert (
        metrics["entity_f1"]
        == json.loads((root / "outputs" / "smoke" / "eval_results.json").read_text())["eval_entity_f1"]
    )
    (line,) = run_command(["bash", "-c", predict], cwd=root, env=env, timeout=300).stdout.splitlines()
    assert json.loads(line)["text"] == "김민준 씨는 어제 서울에 갔다."

    # Your own data: converted, trained on from the quick start's model, evaluated, pre-annotations that read back.
    (own_data,) = code_blocks("Your own data", "bash")
    run_command(["bash", "-c", own_data], cwd=root, env=env, timeout=600)
    smoke_valid = formats.read_examples(root / "training" / "smoke" / "smoke-valid.tsv")
    assert formats.read_examples(root / "data" / "valid.json") == smoke_valid
    metrics = json.loads((root / "outputs" / "mine-eval" / "metrics.json").read_text())
    trained = json.loads((root / "outputs" / "mine" / "eval_results.json").read_text())
    assert metrics["entity_f1"] == trained["eval_entity_f1"]
    predictions = (root / "outputs" / "mine-eval" / "predictions.jsonl").read_text()
    records = [json.loads(line) for line in predictions.splitlines()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Label Studio tasks read from their predictions, and said so
        annotations = formats.read_examples(root / "data" / "to-correct.json")
    assert [example["text"] for example in annotations] == [example["text"] for example in smoke_valid]
    assert [example["entities"] for example in annotations] == [
        sorted((e["start"], e["end"], e["entity_group"]) for e in record["predicted"]) for record in records
    ]


def test_the_alternatives_example_runs_as_written(tmp_path):
    """The README's k-best / constraints / lexicon example, with a tiny model in place of the Hub one: every call
    runs, and the constrained call holds "삼성전자" as OG and no entity in "주식"."""
    import torch
    from tiny import character_tokenizer, tiny_model

    from koelectra_crf import KoElectraCrfTokenClassificationPipeline

    (snippet,) = code_blocks("Alternatives", "python")
    first, *rest = snippet.splitlines()
    assert first.startswith("ner = pipeline(")
    text = ast.literal_eval(re.search(r"^text = (\".*\")$", snippet, re.MULTILINE).group(1))
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path, text)
    ner = KoElectraCrfTokenClassificationPipeline(model=tiny_model(tokenizer.vocab_size), tokenizer=tokenizer)
    calls = []
    namespace = {"ner": lambda *args, **kwargs: calls.append(ner(*args, **kwargs))}
    exec("\n".join(rest), namespace)
    top_3, (constrained,), lexicon = calls
    assert len(top_3) == 3 and [a["probability"] for a in top_3] == sorted(
        (a["probability"] for a in top_3), reverse=True
    )
    entities = [(e["entity_group"], e["start"], e["end"], e["word"]) for e in constrained["entities"]]
    assert ("OG", 5, 9, "삼성전자") in entities and not [e for e in entities if e[1] < 12 and e[2] > 10]
    assert constrained["conditioned_on"] == namespace["fixed"]
    assert all(e["word"] == text[e["start"] : e["end"]] for e in lexicon) and {"entity_group", "score"} <= set(
        lexicon[0]
    )
