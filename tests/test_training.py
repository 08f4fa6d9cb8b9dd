"""Training: the smoke preset end to end, FGM, R-Drop, optimizer groups, two processes, resume."""

import copy
import json
import logging
import math
import shutil
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import torch
from conftest import shared_path
from datasets import concatenate_datasets
from huggingface_hub import ModelCard
from processes import run_command
from safetensors.torch import load_file
from tiny import character_tokenizer, load_in_fresh_process, tiny_model
from transformers import AutoTokenizer, ElectraTokenizerFast, Trainer, pipeline
from transformers.trainer_utils import align_special_tokens

from hub_card.render import hub_base_model, render_model_card
from koelectra_crf import KoElectraCrfConfig, KoElectraCrfTokenClassificationPipeline, alignment, formats, train
from koelectra_crf.alignment import NerDataCollator
from koelectra_crf.cli import main as cli_main
from koelectra_crf.configuration_koelectra_crf import MIN_TRANSFORMERS
from koelectra_crf.data import load_klue_ner, read_klue_tsv, tokenize_and_align
from koelectra_crf.evaluation import evaluate_dataset
from koelectra_crf.pseudo_label import confidence_path, load_pseudo_labelled
from koelectra_crf.train import use_special_tokens_of
from koelectra_crf.trainer import NerTrainer, NerTrainingArguments, symmetric_kl

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["training/run.py", "--config", "training/configs/smoke.json", "--report_to", "none"]


def train_smoke(
    output_dir: Path, *overrides: str, launcher: tuple[str, ...] = (sys.executable,)
) -> subprocess.CompletedProcess:
    """Run the smoke preset with `overrides` (its output and log in the result); fail the test, showing the output,
    if it fails."""
    return run_command([*launcher, *SMOKE, "--output_dir", output_dir, *overrides], cwd=ROOT, timeout=600)


def run_training(output_dir: Path, *overrides: str, launcher: tuple[str, ...] = (sys.executable,)) -> dict:
    train_smoke(output_dir, *overrides, launcher=launcher)
    return json.loads((output_dir / "eval_results.json").read_text())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("smoke")
    run_training(output_dir, "--push_dry_run", "true")
    return output_dir


def test_smoke_preset_trains_and_writes_a_hub_folder(smoke_run, tmp_path):
    losses = [entry["loss"] for entry in json.loads((smoke_run / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]  # fmt: skip
    assert losses[-1] < losses[0] / 4
    results = json.loads((smoke_run / "eval_results.json").read_text())
    assert {"eval_entity_f1", "eval_char_f1", "eval_char_f1_without_o", "eval_PS_f1", "eval_QT_recall"} <= set(results)
    assert results["eval_entity_f1"] > 50  # templated sentences: a working model learns them

    card = ModelCard.load(smoke_run / "README.md")
    assert card.data.pipeline_tag == "token-classification" and card.data.library_name == "transformers"
    # Trained on the smoke sample: the card names its files and claims no KLUE (see test_card_of_a_hub_klue_run).
    assert not card.data.datasets and "klue" not in card.data.tags
    assert {(r.dataset_type, r.dataset_name) for r in card.data.eval_results} == {
        ("local", "local file smoke-valid.tsv")
    }
    assert "training file `smoke-train.tsv`, evaluation file `smoke-valid.tsv`" in card.text
    metrics = {result.metric_name: result.metric_value for result in card.data.eval_results}
    assert metrics["entity F1 (KLUE)"] == round(results["eval_entity_f1"], 2)
    assert metrics["character F1 (KLUE)"] == round(results["eval_char_f1"], 2)
    assert "trust_remote_code=True" in card.text
    assert f"(transformers >= {MIN_TRANSFORMERS})" in card.text

    predictions = [json.loads(line) for line in (smoke_run / "predictions_validation.jsonl").read_text().splitlines()]
    assert len(predictions) == 40 and all(len(p["tags"]) == len(p["sentence"]) for p in predictions)
    manifest = json.loads((smoke_run / "upload_manifest.json").read_text())
    assert "model.safetensors" in manifest and "README.md" in manifest and "modeling_koelectra_crf.py" in manifest
    assert not any(name.startswith("checkpoint-") for name in manifest)

    # Widget examples follow the Hub's schema (text and title: it has no output type for token classification);
    # the outputs the card shows for them are what the published folder itself predicts, loaded as a Hub user would.
    widget = card.data.to_dict()["widget"]
    assert all(set(example) == {"text", "example_title"} for example in widget)
    fresh = load_in_fresh_process(smoke_run, [example["text"] for example in widget], tmp_path)
    assert any(fresh["entities"])
    for example, entities in zip(widget, fresh["entities"], strict=True):
        shown = card.text.split(f"> {example['text']}\n\n")[1].split("\n\n")[0]
        assert shown.splitlines() == [f"- `{e['word']}` {e['entity_group']} ({e['score']:.2f})" for e in entities]
    assert card.data.license == "other"  # local training files: the card cannot know their license
    assert "handler.py" in card.text and "handler.py" in manifest


def _tiny_trainer(tmp_path, trainer_class=NerTrainer, tag_unit="token", **arguments):
    torch.manual_seed(0)
    raw = load_klue_ner(ROOT / "training/smoke/smoke-train.tsv")["train"].select(range(8))
    tokenizer = character_tokenizer(tmp_path / "tokenizer", "".join(raw["sentence"]))
    model = tiny_model(tokenizer.vocab_size, classifier_dropout=0.0, tag_unit=tag_unit)
    args = NerTrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=8,
                                use_cpu=True, **arguments)  # fmt: skip
    trainer = trainer_class(
        model=model, args=args, train_dataset=tokenize_and_align(raw, tokenizer, model.config),
        data_collator=NerDataCollator(tokenizer.pad_token_id), processing_class=tokenizer,
    )  # fmt: skip
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which these tests bypass
    return trainer, batch


def test_length_grouped_batches_pad_less_and_still_cover_every_sentence(tmp_path, klue_valid_file):
    """`--train_sampling_strategy group_by_length` (the README's CPU speed-up) reads our rows' lengths: each epoch
    holds every training sentence once, in batches padded less than random ones (real KLUE sentences, whose lengths
    vary as a user's do)."""
    raw = load_klue_ner(klue_valid_file)["train"]
    vocab = shared_path("data/vocab/koelectra-v1-vocab.txt")
    tokenizer = ElectraTokenizerFast(vocab=str(vocab), do_lower_case=False)
    model = tiny_model(tokenizer.vocab_size)
    dataset = tokenize_and_align(raw, tokenizer, model.config)

    def epoch(strategy: str) -> list[dict]:
        args = NerTrainingArguments(output_dir=str(tmp_path / strategy), report_to="none", use_cpu=True,
                                    per_device_train_batch_size=8, train_sampling_strategy=strategy)  # fmt: skip
        trainer = NerTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             data_collator=NerDataCollator(tokenizer.pad_token_id))  # fmt: skip
        return list(trainer.get_train_dataloader())

    def filled(batches: list[dict]) -> float:
        return sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel() for b in batches)

    grouped, shuffled = epoch("group_by_length"), epoch("random")
    rows = sorted(
        tuple(ids[mask.bool()].tolist())
        for b in grouped
        for ids, mask in zip(b["input_ids"], b["attention_mask"], strict=True)
    )
    assert rows == sorted(tuple(ids) for ids in dataset["input_ids"])
    assert filled(grouped) > 0.75 > 0.65 > filled(shuffled)  # 0.84 and 0.54


def test_evaluation_predicts_without_dropout_and_training_continues_with_it(tmp_path):
    trainer, batch = _tiny_trainer(tmp_path)
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5  # strong enough that predictions with dropout on would differ
    trainer.training_step(
        trainer.model, batch
    )  # leaves the model in training mode, as mid-training evaluation finds it
    dataset = load_klue_ner(ROOT / "training/smoke/smoke-train.tsv")["train"].select(range(8))
    frozen = KoElectraCrfTokenClassificationPipeline(model=copy.deepcopy(trainer.model).eval(),
                                                     tokenizer=trainer.processing_class)  # fmt: skip
    metrics = trainer.evaluate(dataset)
    expected_metrics, expected = evaluate_dataset(frozen, dataset, batch_size=8)
    assert [p.predicted_tags for p in trainer.last_predictions] == [p.predicted_tags for p in expected]
    assert metrics["eval_char_f1"] == pytest.approx(expected_metrics["char_f1"])
    assert trainer.model.training  # back in training mode after evaluating


def test_evaluation_refuses_tokenized_data_with_a_clear_message(tmp_path):
    trainer, _ = _tiny_trainer(tmp_path)
    with pytest.raises(ValueError, match=r"lacks the columns \['guid', 'sentence', 'tokens', 'ner_tags'\]"):
        trainer.evaluate(trainer.train_dataset)


def _gradients_after_step(trainer, batch) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    trainer.training_step(trainer.model, batch)
    return {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("tag_unit", ["token", "character"])
def test_fgm_off_equals_plain_training_and_restores_embeddings(tmp_path, tag_unit):
    plain, batch = _tiny_trainer(tmp_path / "a", Trainer, tag_unit=tag_unit)
    fgm_off, _ = _tiny_trainer(tmp_path / "b", tag_unit=tag_unit, fgm_epsilon=0.0, rdrop_alpha=0.0)
    fgm_on, _ = _tiny_trainer(tmp_path / "c", tag_unit=tag_unit, fgm_epsilon=1.0, rdrop_alpha=0.0)
    expected = _gradients_after_step(plain, batch)
    assert _gradients_after_step(fgm_off, batch).keys() == expected.keys()
    for name, gradient in _gradients_after_step(fgm_off, batch).items():
        torch.testing.assert_close(gradient, expected[name], rtol=0, atol=0)

    embeddings = fgm_on.model.get_input_embeddings().weight
    before = embeddings.detach().clone()
    attacked = _gradients_after_step(fgm_on, batch)
    assert torch.equal(embeddings.detach(), before)  # bit-identical after the attack
    name = "classifier.weight"
    assert not torch.allclose(attacked[name], expected[name])


def test_fgm_attacks_along_the_current_batch_gradient_under_accumulation(tmp_path):
    trainer, batch = _tiny_trainer(tmp_path, fgm_epsilon=1.0, rdrop_alpha=0.0)
    embeddings = trainer.model.get_input_embeddings().weight
    directions = []
    original_add = torch.Tensor.add_

    def spy(tensor, other, *args, alpha=1, **kwargs):
        if tensor is embeddings:
            directions.append((other * alpha).clone())
        return original_add(tensor, other, *args, alpha=alpha, **kwargs)

    torch.Tensor.add_ = spy
    try:
        trainer.model.zero_grad(set_to_none=True)
        for _ in range(2):  # the second micro-batch finds the first one's gradients (normal and adversarial)
            torch.manual_seed(5)  # same dropout masks: the same batch has the same own gradient
            trainer.training_step(trainer.model, batch)
    finally:
        torch.Tensor.add_ = original_add
    assert len(directions) == 2
    for direction in directions:
        assert direction.norm().item() == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(directions[0], directions[1], rtol=1e-4, atol=1e-6)


def test_symmetric_kl():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    assert symmetric_kl(logits, logits.clone(), mask).item() == pytest.approx(0.0, abs=1e-7)
    other = torch.randn(2, 5, 4)
    changed_outside = other.clone()
    changed_outside[~mask] = 100.0  # padding / -100 positions must not count
    value = symmetric_kl(logits, other, mask)
    assert symmetric_kl(logits, changed_outside, mask) == value
    p, q = logits.softmax(-1), other.softmax(-1)
    kl = lambda a, b: (a * (a / b).log()).sum(-1)  # noqa: E731
    expected = ((kl(p, q) + kl(q, p)) / 2)[mask].mean()
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("tag_unit", ["token", "character"])
def test_rdrop_off_equals_plain_loss_and_on_adds_a_weighted_kl(tmp_path, tag_unit):
    """R-Drop's KL is over the distributions of the tagged units: tokens, or characters with the character head."""
    plain, batch = _tiny_trainer(tmp_path / "a", Trainer, tag_unit=tag_unit)
    rdrop_off, _ = _tiny_trainer(tmp_path / "b", tag_unit=tag_unit, rdrop_alpha=0.0, fgm_epsilon=0.0)
    plain.model.train()
    rdrop_off.model.train()
    torch.manual_seed(2)
    plain_loss = plain.compute_loss(plain.model, batch)
    torch.manual_seed(2)
    assert rdrop_off.compute_loss(rdrop_off.model, batch) == plain_loss

    losses = {}
    for alpha in (1.0, 2.0):  # same seed, same dropout masks: the losses differ by exactly one KL term
        trainer, _ = _tiny_trainer(tmp_path / f"alpha{alpha}", tag_unit=tag_unit, rdrop_alpha=alpha, fgm_epsilon=0.0)
        trainer.model.train()
        torch.manual_seed(3)
        losses[alpha] = trainer.compute_loss(trainer.model, batch)
    kl = losses[2.0] - losses[1.0]
    assert kl > 0  # two dropout passes disagree

    without_dropout, _ = _tiny_trainer(tmp_path / "nodrop", tag_unit=tag_unit, rdrop_alpha=5.0, fgm_epsilon=0.0)
    without_dropout.model.train()
    for module in without_dropout.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    plain.model.eval()  # identical copies: KL 0, R-Drop loss = plain loss
    torch.testing.assert_close(
        without_dropout.compute_loss(without_dropout.model, batch),
        plain.compute_loss(plain.model, batch),
        rtol=1e-4,
        atol=1e-4,
    )


def test_optimizer_groups_carry_two_learning_rates(tmp_path):
    trainer, _ = _tiny_trainer(tmp_path, learning_rate=3e-5, head_learning_rate=1e-3, weight_decay=0.01)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    for group in trainer.optimizer.param_groups:
        group_names = [names[id(p)] for p in group["params"]]
        is_encoder = {name.startswith("encoder.") for name in group_names}
        assert len(is_encoder) == 1
        assert group["lr"] == (3e-5 if is_encoder.pop() else 1e-3)
        has_decay = group["weight_decay"] > 0
        assert all(("bias" in n or "LayerNorm" in n) != has_decay for n in group_names)
    covered = sum(len(group["params"]) for group in trainer.optimizer.param_groups)
    assert covered == sum(1 for p in trainer.model.parameters() if p.requires_grad)


def test_two_processes_match_one(tmp_path, smoke_run):
    """DDP over 2 CPU processes with the per-process batch halved sees the same global batches."""
    single = json.loads((smoke_run / "eval_results.json").read_text())
    # On a machine without GPU, `--multi_gpu` is the launcher that starts two processes (`--cpu` starts one), and
    # `--use_cpu` makes them join one process group on the CPU (gloo). (`accelerate launch`, run by this interpreter:
    # the `accelerate` script is on PATH only in an activated venv.)
    double = run_training(
        tmp_path, "--per_device_train_batch_size", "8", "--use_cpu", "true",
        launcher=(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
    )  # fmt: skip
    # Same data, schedule and global batch; dropout masks and reduction order differ: within 10 F1 points.
    assert abs(double["eval_entity_f1"] - single["eval_entity_f1"]) <= 10
    assert double["epoch"] == single["epoch"]
    # Two processes of 8 make the global batch of 16 that one process of 16 makes: the same number of steps (one
    # process alone with batch 8 would take twice as many).
    steps = [json.loads((run / "trainer_state.json").read_text())["global_step"] for run in (smoke_run, tmp_path)]
    assert steps[0] == steps[1]


@pytest.mark.parametrize("sampling", ["random", "group_by_length"])
def test_resume_from_a_checkpoint_continues_where_it_stopped(tmp_path, sampling):
    steps = ["--num_train_epochs", "2", "--save_strategy", "steps", "--save_steps", "10", "--eval_strategy", "no",
             "--load_best_model_at_end", "false", "--save_total_limit", "5",
             "--train_sampling_strategy", sampling]  # fmt: skip
    reference = tmp_path / "reference"
    run_training(reference, *steps)
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    shutil.copytree(reference / "checkpoint-10", interrupted / "checkpoint-10")  # as if killed after step 10
    run_training(interrupted, *steps, "--resume_from_checkpoint", "last")  # the latest checkpoint-N of output_dir
    state = json.loads((interrupted / "trainer_state.json").read_text())
    assert state["global_step"] == json.loads((reference / "trainer_state.json").read_text())["global_step"] == 20
    resumed, expected = load_file(interrupted / "model.safetensors"), load_file(reference / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-4, atol=1e-5)


def test_a_resumed_run_stops_early_where_the_uninterrupted_run_stopped(tmp_path):
    """Early stopping counts evaluations without improvement; resuming must carry that count on, or a run resumed
    after one such evaluation trains on past the point where the uninterrupted run stopped."""
    patience = ["--early_stopping_patience", "2", "--save_total_limit", "20"]
    reference = tmp_path / "reference"
    run_training(reference, *patience)
    state = json.loads((reference / "trainer_state.json").read_text())
    epochs = json.loads((ROOT / "training/configs/smoke.json").read_text())["num_train_epochs"]
    assert state["epoch"] < epochs, "precondition: the smoke run must stop early (it reaches entity F1 100)"
    # Killed after the evaluation before the last: the count of evaluations without improvement then stands at 1.
    evaluated_steps = [entry["step"] for entry in state["log_history"] if "eval_entity_f1" in entry]
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    for step in evaluated_steps[:-1]:
        shutil.copytree(reference / f"checkpoint-{step}", interrupted / f"checkpoint-{step}")
    run_training(interrupted, *patience, "--resume_from_checkpoint", "last")
    resumed = json.loads((interrupted / "trainer_state.json").read_text())
    assert resumed["global_step"] == state["global_step"] and resumed["epoch"] == state["epoch"]


@pytest.mark.parametrize("tag_unit", ["token", "character"])
def test_bf16_autocast_training_runs_and_learns(tmp_path, tag_unit):
    """Mixed precision on the CPU (bf16 autocast): the CRF computes in float32 inside, the loss still falls."""
    run_training(tmp_path, "--tag_unit", tag_unit, "--bf16", "true", "--use_cpu", "true", "--num_train_epochs", "4",
                 "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false")  # fmt: skip
    history = json.loads((tmp_path / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert all(loss == loss for loss in losses) and losses[-1] < losses[0] / 2  # no NaN, and learning


def test_card_of_a_hub_klue_run_claims_klue(tmp_path):
    trainer, _ = _tiny_trainer(tmp_path)
    metrics = {"eval_entity_f1": 50.0, "eval_char_f1": 60.0}
    card = ModelCard(render_model_card(trainer.model, trainer.processing_class, metrics, None, trainer.args))
    assert card.data.datasets == ["klue"] and "klue" in card.data.tags
    assert {(r.dataset_type, r.dataset_name) for r in card.data.eval_results} == {
        ("klue", "KLUE NER (validation split)")
    }
    assert card.data.license == "cc-by-sa-4.0"  # KLUE's license, unless --license says otherwise


def test_card_base_model_names_only_hub_models(tmp_path):
    snapshot = tmp_path / "hub/models--monologg--koelectra-base-v3-discriminator/snapshots/0123abc"
    snapshot.mkdir(parents=True)
    local = tmp_path / "my-encoder"
    local.mkdir()
    assert hub_base_model("monologg/koelectra-base-v3-discriminator") == "monologg/koelectra-base-v3-discriminator"
    assert hub_base_model(str(snapshot)) == "monologg/koelectra-base-v3-discriminator"  # what snapshot_download gives
    assert hub_base_model(str(local)) is None and hub_base_model("../shared/encoders/e5") is None
    trainer, _ = _tiny_trainer(tmp_path)
    metrics = {"eval_entity_f1": 50.0, "eval_char_f1": 60.0}
    for base, expected in ((str(snapshot), "monologg/koelectra-base-v3-discriminator"), (str(local), None)):
        card = ModelCard(render_model_card(trainer.model, trainer.processing_class, metrics, base, trainer.args))
        assert card.data.base_model == expected and f"- base model: {base}" in card.text


def test_decomposed_hangul_gets_the_entities_of_composed_hangul(smoke_run):
    ner = pipeline("token-classification", model=str(smoke_run), trust_remote_code=True)
    composed = "김민준 씨는 2024년 5월 12일 부산에서 한빛전자 관계자를 만났다."
    decomposed = unicodedata.normalize("NFD", composed)
    expected = ner(composed, aggregation_strategy="simple")
    entities = ner(decomposed, aggregation_strategy="simple")
    assert len(expected) >= 3  # PS, DT, LC, OG for the trained smoke model; the NFD text used to give one OG
    assert [(e["entity_group"], unicodedata.normalize("NFC", e["word"])) for e in entities] == [
        (e["entity_group"], e["word"]) for e in expected
    ]
    assert all(e["word"] == decomposed[e["start"] : e["end"]] for e in entities)


def smoke_arguments(output_dir: Path, *overrides: str) -> list[str]:
    return ["--config", str(ROOT / "training/configs/smoke.json"), "--output_dir", str(output_dir), *overrides]


def test_a_previous_run_is_refused_before_any_work(tmp_path):
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "model.safetensors").write_text("a finished model")
    with pytest.raises(ValueError, match=r"is not empty \(checkpoint-7, model.safetensors\).*--resume_from_checkpoint "
                                         r"last.*--overwrite_output_dir true"):  # fmt: skip
        train.main(smoke_arguments(tmp_path))
    assert (tmp_path / "checkpoint-7").is_dir() and (tmp_path / "model.safetensors").read_text() == "a finished model"

    for last in ("last", "true", "TRUE"):
        assert train.checkpoint_to_resume(tmp_path, last, overwrite=False) == str(tmp_path / "checkpoint-7")
    with pytest.raises(ValueError, match="no such checkpoint folder"):
        train.checkpoint_to_resume(tmp_path, str(tmp_path / "checkpoint-8"), overwrite=False)
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint last: .*empty holds no checkpoint-N folder"):
        train.main(smoke_arguments(tmp_path / "empty", "--resume_from_checkpoint", "last"))


def test_resuming_a_finished_run_says_so_and_changes_nothing(smoke_run, tmp_path, caplog):
    finished = tmp_path / "finished"
    shutil.copytree(smoke_run, finished)
    assert any(path.name.startswith("checkpoint-") for path in finished.iterdir())  # something to resume from

    def contents() -> dict[str, bytes]:
        return {str(path.relative_to(finished)): path.read_bytes() for path in finished.rglob("*") if path.is_file()}

    before = contents()
    for resume in ("last", str(max(finished.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1])))):
        with caplog.at_level(logging.WARNING, logger="koelectra_crf.train"):
            results = train.main(smoke_arguments(finished, "--resume_from_checkpoint", resume))
        assert f"{finished} holds a run whose training has ended (train_results.json): nothing to resume" in caplog.text
        assert results == json.loads((smoke_run / "eval_results.json").read_text())
        assert contents() == before  # weights, results, card, checkpoints: byte for byte


def test_the_old_name_of_encoder_tokenization_still_works_as_a_flag_and_in_a_preset(tmp_path):
    """`--encoder_tokenization` was `--tokenization`: command lines and presets written then still set it."""
    preset = tmp_path / "preset.json"
    preset.write_text('{"tokenization": "char"}')
    for arguments in (["--encoder_tokenization", "char"], ["--tokenization", "char"], ["--config", str(preset)]):
        _, head_args, *_ = train.parse_arguments([*arguments, "--output_dir", str(tmp_path / "out")])
        assert head_args.encoder_tokenization == "char", arguments
    _, head_args, *_ = train.parse_arguments(["--config", str(preset), "--output_dir", str(tmp_path), "--tokenization",
                                              "subword"])  # fmt: skip
    assert head_args.encoder_tokenization == "subword"  # a flag overrides the preset, whichever name either uses


def refused_training(capsys, monkeypatch, *args) -> str:
    """The one line on stderr with which `training/run.py ARGS` refuses its input (exit status 2, no traceback)."""
    monkeypatch.setattr(sys, "argv", ["run.py", *map(str, args)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        train.script_main()
    stderr = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in stderr and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("run.py: error: ")
    return stderr.rstrip("\n")


def test_training_refuses_bad_input_in_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    bad_preset = tmp_path / "preset.json"
    bad_preset.write_text('{"learning_rate": 0.1, "no_such_setting": 1}')
    three_columns = tmp_path / "train.tsv"
    three_columns.write_text("## g1\t김철수\n김\tB-PS\n철\tI-PS\textra\n", encoding="utf-8")
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "model.safetensors").write_text("a finished model")
    refusals = {
        ("--config", tmp_path / "missing.json"): f"--config {tmp_path / 'missing.json'}: does not exist",
        ("--config", bad_preset): f"--config {bad_preset}: unknown settings ['no_such_setting']",
        ("--config", bad_preset, "--config", bad_preset): "--config is given more than once",
        ("--learning_rate", "fast"): "argument --learning_rate/--learning-rate: invalid float value: 'fast'",
        ("--no_such_flag", "1"): "unrecognized arguments: --no_such_flag 1",
        ("--tag_unit", "word"): "tag_unit must be one of ('token', 'character'), got 'word'",
        ("--morpheme_features", "true", "--tag_unit", "token"): "morpheme_features=True needs tag_unit='character'",
        ("--train_file", tmp_path / "missing.tsv"): f"--train_file {tmp_path / 'missing.tsv'}: does not exist",
        ("--train_file", three_columns): f"{three_columns}:3: expected 2 tab-separated columns 'CHAR<tab>TAG', found 3",
        ("--output_dir", previous): f"--output_dir {previous} is not empty (model.safetensors): it holds a previous",
        ("--resume_from_checkpoint", tmp_path / "checkpoint-9"): "no such checkpoint folder",
        ("--push_to_hub", "true"): "--push_to_hub needs --hub_model_id",
        ("--adapt_on", tmp_path / "raw.txt"): f"--adapt_on {tmp_path / 'raw.txt'}: does not exist",
        ("--adapt_on", "train"): "--adapt_on adapts the pretrained --encoder_name_or_path, which "
        "--random_encoder_config replaces",
    }
    for args, expected in refusals.items():
        out = tmp_path / "out"
        arguments = [*args, "--output_dir", out] if "--config" in args else smoke_arguments(out, *args)
        line = refused_training(capsys, monkeypatch, *arguments)
        assert expected in line, (args, line)
    assert (previous / "model.safetensors").read_text() == "a finished model"
    assert not (tmp_path / "out").exists()


def test_morpheme_features_without_kiwi_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # as if not installed: importing it raises ImportError
    alignment._kiwi.cache_clear()
    try:
        line = refused_training(capsys, monkeypatch, *smoke_arguments(tmp_path / "out", "--morpheme_features", "true"))
    finally:
        alignment._kiwi.cache_clear()
    assert "--morpheme_features: morpheme_features=True" in line and line.endswith("pip install kiwipiepy")
    assert not (tmp_path / "out").exists()


def test_morpheme_features_flag_trains_a_model_that_reads_them(tmp_path):
    results = run_training(tmp_path, "--morpheme_features", "true", "--num_train_epochs", "4", "--fgm_epsilon", "0",
                           "--rdrop_alpha", "0")  # fmt: skip
    assert json.loads((tmp_path / "config.json").read_text())["morpheme_features"] is True
    assert "characters.morphemes.weight" in load_file(tmp_path / "model.safetensors")
    assert results["eval_entity_f1"] > 30  # templated sentences: it learns them (about 60 after 4 epochs)
    assert "Kiwi morpheme features (tagging needs `pip install kiwipiepy`)" in (tmp_path / "README.md").read_text()


def test_training_without_files_when_the_hub_is_unreachable_says_to_give_them_at_once(tmp_path, capsys, monkeypatch):
    """Not declared offline, but no route to the Hub: one failed request, not datasets' 30 s of retries."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused
    start = time.monotonic()
    line = refused_training(capsys, monkeypatch, "--output_dir", tmp_path / "out", "--random_encoder_config",
                            ROOT / "training/smoke/tiny-electra.json")  # fmt: skip
    assert time.monotonic() - start < 10
    assert line.startswith("run.py: error: the Hub (http://127.0.0.1:9) cannot be reached to download klue/ner (")
    assert line.endswith(
        "give the data as KLUE NER TSV files with --train_file and --validation_file, or set HF_DATASETS_OFFLINE=1 to "
        "use a copy downloaded before"
    )


def test_the_training_script_refuses_in_one_line_of_stderr(tmp_path):
    """`training/run.py` as a user runs it: the refusal is all it prints."""
    completed = run_command([sys.executable, *SMOKE, "--output_dir", tmp_path, "--stride", "999"], cwd=ROOT, status=2,
                            timeout=300)  # fmt: skip
    expected = "stride must be in [0, max_length - 2), got stride=999 (see `--help` for the head's settings)"
    assert completed.stderr == f"run.py: error: {expected}\n"


def test_overwrite_deletes_the_previous_runs_checkpoints_and_results(tmp_path):
    for name in ("checkpoint-7", "checkpoint-14"):
        (tmp_path / name).mkdir()
    for name in ("all_results.json", "test_results.json", "predictions_test.jsonl", "model.safetensors"):
        (tmp_path / name).write_text("{}")
    assert train.checkpoint_to_resume(tmp_path, None, overwrite=True) is None
    train.delete_previous_run(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.safetensors"]  # replaced by the new run


def test_self_training_adds_the_confident_pseudo_labels(smoke_run, tmp_path):
    """The teacher (the smoke model) pseudo-labels raw sentences; the student trains on the labelled file plus the
    pseudo-labelled sentences at or above the threshold, nothing else."""
    sentences = [record["sentence"] for record in read_klue_tsv(ROOT / "training/smoke/smoke-valid.tsv")]
    (tmp_path / "raw.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    pseudo = tmp_path / "pseudo.tsv"
    cli_main(["pseudo-label", str(smoke_run), "--input", str(tmp_path / "raw.txt"), "--output", str(pseudo),
              "--device", "cpu"])  # fmt: skip
    confidences = [json.loads(line) for line in confidence_path(pseudo).read_text().splitlines()]
    threshold = sorted(c["sequence_probability"] for c in confidences)[len(confidences) // 2]
    kept = sum(c["sequence_probability"] >= threshold for c in confidences)
    assert 0 < kept < len(sentences)
    completed = run_command(
        [sys.executable, *SMOKE, "--output_dir", tmp_path / "student", "--pseudo_label_file", pseudo,
         "--pseudo_label_threshold", threshold, "--num_train_epochs", "1", "--eval_strategy", "no",
         "--save_strategy", "no", "--load_best_model_at_end", "false"],
        cwd=ROOT, timeout=600,
    )  # fmt: skip
    labelled = load_klue_ner(ROOT / "training/smoke/smoke-train.tsv")["train"]
    assert f"self-training: {kept} pseudo-labelled sentences join {len(labelled)} labelled ones" in completed.stderr
    # What was trained on: the step count of one epoch is that of the labelled plus the kept sentences' windows.
    joined = concatenate_datasets([labelled, load_pseudo_labelled(pseudo, threshold)])
    config = json.loads((tmp_path / "student" / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(ROOT / "training/smoke/tokenizer")
    head = KoElectraCrfConfig(max_length=config["max_length"], stride=config["stride"])
    windows = len(tokenize_and_align(joined, tokenizer, head))
    state = json.loads((tmp_path / "student" / "trainer_state.json").read_text())
    assert (
        state["global_step"]
        == math.ceil(windows / 16)
        > math.ceil(len(tokenize_and_align(labelled, tokenizer, head)) / 16)
    )


def test_the_model_takes_the_tokenizers_special_tokens_before_the_trainer_would():
    """Transformers' own alignment (what the Trainer runs) finds nothing left to change, so it warns about nothing."""
    tokenizer = AutoTokenizer.from_pretrained(shared_path("encoders/multilingual-e5-small-ko"))
    model = tiny_model(len(tokenizer), model_type="bert")
    use_special_tokens_of(tokenizer, model)
    config = model.config.get_text_config()
    before = {name: getattr(config, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")}
    assert before["pad_token_id"] == tokenizer.pad_token_id
    align_special_tokens(model, tokenizer)
    assert {name: getattr(config, name) for name in before} == before


def test_training_continues_from_a_trained_model_keeping_shared_labels_by_name(smoke_run, tmp_path):
    """`--model_name_or_path` starts from a trained model: with another label set, the rows of the labels both sets
    share are the parent's before the first step (new ones fresh), and the card names the parent as base_model."""
    from koelectra_crf import KoElectraCrfForTokenClassification

    parent = KoElectraCrfForTokenClassification.from_pretrained(smoke_run)
    labels = ["B-PS", "I-PS", "B-PRD", "I-PRD", "O"]
    child = train.build_model(train.ModelArguments(model_name_or_path=str(smoke_run)), train.HeadArguments(), labels, 0)
    shared = [parent.config.label2id[label] for label in ("B-PS", "I-PS", "O")]
    torch.testing.assert_close(child.classifier.weight[[0, 1, 4]], parent.classifier.weight[shared], rtol=0, atol=0)
    torch.testing.assert_close(child.crf.transitions[[0, 1, 4]][:, [0, 1, 4]],
                               parent.crf.transitions[shared][:, shared], rtol=0, atol=0)  # fmt: skip
    assert not torch.equal(child.classifier.weight[2], parent.classifier.weight[parent.config.label2id["B-OG"]])
    same = train.build_model(train.ModelArguments(model_name_or_path=str(smoke_run)), train.HeadArguments(),
                             parent.config.label_names, 0)  # fmt: skip
    assert all(torch.equal(value, parent.state_dict()[name]) for name, value in same.state_dict().items())

    output_dir = tmp_path / "continued"
    run_training(output_dir, "--model_name_or_path", str(smoke_run), "--max_steps", "2")
    card = ModelCard.load(output_dir / "README.md")
    # A local parent: the Hub refuses a base_model that is not a model id, so only the card's text names it.
    assert card.data.base_model is None and f"- base model: {smoke_run}" in card.text


def renamed(examples: list[dict], old: str, new: str) -> list[dict]:
    """`examples` with every entity of type `old` given type `new`."""
    return [
        {**example, "entities": [(s, e, new if t == old else t) for s, e, t in example["entities"]]}
        for example in examples
    ]


def test_training_on_doccano_data_of_new_types(tmp_path):
    """The smoke data as doccano JSONL with OG renamed PRD: the labels are the data's (the documented order), the
    evaluation scores PRD and the card names it and shows examples of the data's own."""
    data = {}
    for split in ("train", "valid"):
        examples = renamed(formats.read_examples(ROOT / f"training/smoke/smoke-{split}.tsv"), "OG", "PRD")
        data[split] = tmp_path / f"{split}.jsonl"
        formats.write_examples(examples, data[split], "doccano")
    output_dir = tmp_path / "out"
    results = run_training(output_dir, "--train_file", data["train"], "--validation_file", data["valid"],
                           "--num_train_epochs", "3", "--save_strategy", "no", "--load_best_model_at_end", "false",
                           "--eval_strategy", "no")  # fmt: skip
    config = json.loads((output_dir / "config.json").read_text())
    types = formats.entity_types(formats.read_examples(data["train"]))
    assert "PRD" in types and "OG" not in types
    assert [config["id2label"][str(i)] for i in range(len(config["id2label"]))] == formats.bio_labels(types)
    assert {"eval_PRD_f1", "eval_PRD_support"} <= set(results) and "eval_OG_f1" not in results
    valid = formats.read_examples(data["valid"])
    assert results["eval_PRD_support"] == sum(t == "PRD" for example in valid for _, _, t in example["entities"])
    card = ModelCard.load(output_dir / "README.md")
    assert "| PRD_f1 |" in card.text and "OG_f1" not in card.text
    with_entities = [example["text"] for example in valid if example["entities"]]
    assert [example["text"] for example in card.data.to_dict()["widget"]] == with_entities[:3]


def test_training_refuses_validation_types_the_labels_lack(tmp_path, capfd, monkeypatch):
    examples = formats.read_examples(ROOT / "training/smoke/smoke-valid.tsv")
    formats.write_examples(renamed(examples, "OG", "PRD"), tmp_path / "valid.jsonl")
    monkeypatch.chdir(ROOT)  # the preset's paths are relative to the repository root
    monkeypatch.setattr(sys, "argv", [
        "run.py", "--config", "training/configs/smoke.json", "--output_dir", str(tmp_path / "out"),
        "--validation_file", str(tmp_path / "valid.jsonl"), "--entity_types", "PS", "LC", "OG", "DT", "TI", "QT",
    ])  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        train.script_main()
    assert exit_info.value.code == 2
    error = capfd.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "['PRD']" in error[0] and "validation" in error[0]
    assert not (tmp_path / "out").exists()


def test_training_on_a_datasets_folder_as_run_ner_dataset_name(tmp_path):
    """run_ner's --dataset_name: a DatasetDict folder (characters and ClassLabel tags) gives the model the data's
    labels, and its evaluation scores the sentences of the KLUE file they came from."""
    splits = {}
    for split, name in (("train", "train"), ("validation", "valid")):
        examples = renamed(formats.read_examples(ROOT / f"training/smoke/smoke-{name}.tsv"), "OG", "PRD")
        splits[split] = formats.examples_to_dataset(examples)
    datasets.DatasetDict(splits).save_to_disk(tmp_path / "data")
    preset = json.loads((ROOT / "training/configs/smoke.json").read_text())
    del preset["train_file"], preset["validation_file"]
    preset |= {"dataset_name": str(tmp_path / "data"), "num_train_epochs": 1, "save_strategy": "no",
               "load_best_model_at_end": False, "eval_strategy": "no"}  # fmt: skip
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    output_dir = tmp_path / "out"
    run_command([sys.executable, "training/run.py", "--config", tmp_path / "preset.json", "--output_dir", output_dir],
                cwd=ROOT, timeout=600)  # fmt: skip
    config = json.loads((output_dir / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    assert labels == formats.bio_labels(["PS", "LC", "DT", "TI", "QT", "PRD"])
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["eval_PRD_support"] == 25  # the smoke validation file's OG entities
