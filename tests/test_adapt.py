"""Task-adaptive pretraining (`koelectra-crf adapt`): masked-LM training on raw text writes an encoder folder that
fine-tuning starts from; nothing of a long text is dropped; a run resumes to the uninterrupted run's weights; training's
`--adapt_on` is `adapt` and then fine-tuning, in one resumable run."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import TINY_TEXT, character_tokenizer, tiny_encoder_config
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    TrainingArguments,
)

from koelectra_crf import KoElectraCrfForTokenClassification, train
from koelectra_crf.adapt import RECIPE, MaskedPositionsTrainer, sequences
from koelectra_crf.cli import main as cli_main
from koelectra_crf.data import read_klue_tsv

RAW = [f"{i}\t{TINY_TEXT[i % 7 :]}" for i in range(12)]
ROOT = Path(__file__).resolve().parents[1]
SMOKE_DATA = ROOT / "training/smoke"


@pytest.fixture
def encoder(tmp_path):
    """A tiny BERT with its masked-LM head, saved with a character tokenizer, and a raw `<id>\\t<text>` file."""
    torch.manual_seed(0)
    tokenizer = character_tokenizer(tmp_path / "tokenizer")
    folder = tmp_path / "encoder"
    BertForMaskedLM(tiny_encoder_config(tokenizer.vocab_size, "bert")).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (tmp_path / "raw.tsv").write_text("\n".join(RAW) + "\n", encoding="utf-8")
    return folder


def adapt(encoder, tmp_path, output, *flags: str) -> None:
    cli_main(["adapt", str(encoder), "--input", str(tmp_path / "raw.tsv"), "--output", str(output),
              "--learning_rate", "1e-3", "--per_device_train_batch_size", "4", "--report_to", "none",
              "--use_cpu", "true", "--disable_tqdm", "true", "--seed", "0", *flags])  # fmt: skip


def test_adapted_encoder_learns_and_fine_tuning_starts_from_it(encoder, tmp_path):
    output = tmp_path / "adapted"
    adapt(encoder, tmp_path, output, "--num_train_epochs", "20")
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 60
    # The same masked batch of the raw texts, before and after: the adapted encoder predicts the masked tokens better.
    tokenizer = AutoTokenizer.from_pretrained(output)
    torch.manual_seed(1)
    batch = DataCollatorForLanguageModeling(tokenizer)(
        list(sequences([line.split("\t")[1] for line in RAW], tokenizer, 128))
    )
    with torch.no_grad():
        before, after = (BertForMaskedLM.from_pretrained(folder).eval()(**batch).loss for folder in (encoder, output))
    assert after < before - 0.2  # a random model's loss is about ln(vocabulary size), 4.7
    adapted = load_file(output / "model.safetensors")
    original = load_file(encoder / "model.safetensors")
    name = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(adapted[name], original[name])
    model = KoElectraCrfForTokenClassification.from_encoder(str(output))
    assert torch.equal(model.encoder.state_dict()[name.removeprefix("bert.")], adapted[name])
    assert type(AutoModel.from_pretrained(output)).__name__ == "BertModel"


@pytest.mark.parametrize("model_type", ["bert", "electra"])
def test_scoring_only_masked_positions_gives_the_models_own_loss_and_gradients(model_type, tmp_path):
    """The oracle: the model's forward pass with all positions through its head and its own loss."""
    tokenizer = character_tokenizer(tmp_path / "tokenizer")
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(tiny_encoder_config(tokenizer.vocab_size, model_type)).eval()  # no dropout
    batch = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)(list(sequences(RAW, tokenizer, 16)))
    masked = int((batch["labels"] != -100).sum())
    assert 0 < masked < batch["labels"].numel() // 2 and (batch["attention_mask"] == 0).any()  # padded, partly masked

    def loss_and_gradients(compute_loss) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        loss = compute_loss({name: tensor.clone() for name, tensor in batch.items()})
        loss.backward()
        return loss.detach(), {name: parameter.grad.clone() for name, parameter in model.named_parameters()}

    trainer = MaskedPositionsTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none")
    )
    scored_logits = []
    model.get_output_embeddings().register_forward_hook(lambda module, args, output: scored_logits.append(output))
    loss, gradients = loss_and_gradients(lambda inputs: trainer.compute_loss(model, inputs))
    expected_loss, expected_gradients = loss_and_gradients(lambda inputs: model(**inputs).loss)
    assert scored_logits[0].shape == (1, masked, tokenizer.vocab_size)  # only the masked positions were scored
    assert scored_logits[1].shape == (*batch["input_ids"].shape, tokenizer.vocab_size)
    torch.testing.assert_close(loss, expected_loss)
    for name, gradient in expected_gradients.items():
        torch.testing.assert_close(gradients[name], gradient, msg=name)


def test_held_out_perplexity_uses_the_same_masks_and_leaves_the_training_alone(encoder, tmp_path):
    steps = ["--max_steps", "6", "--save_strategy", "no"]
    held_out = ["--validation_file", str(tmp_path / "raw.tsv"), "--eval_strategy", "steps", "--eval_steps", "3",
                "--eval_on_start", "true"]  # fmt: skip
    adapt(encoder, tmp_path, tmp_path / "plain", *steps)
    adapt(encoder, tmp_path, tmp_path / "evaluated", *steps, *held_out)
    plain, evaluated = (load_file(tmp_path / run / "model.safetensors") for run in ("plain", "evaluated"))
    assert all(torch.equal(plain[name], evaluated[name]) for name in plain)  # evaluating changed nothing
    history = json.loads((tmp_path / "evaluated" / "trainer_state.json").read_text())["log_history"]
    losses = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    assert len(losses) == 4 and losses[-1] < losses[0]  # before, at steps 3 and 6, and the final evaluation
    assert losses[-1] == losses[-2]  # the same weights and the same masks: the same loss
    final = json.loads((tmp_path / "evaluated" / "eval_results.json").read_text())
    assert final["eval_perplexity"] == pytest.approx(math.exp(final["eval_loss"]))


def test_evaluation_keeps_no_logits(encoder, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    trainer = MaskedPositionsTrainer(
        model=BertForMaskedLM.from_pretrained(encoder),
        args=TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to="none"),
        data_collator=DataCollatorForLanguageModeling(tokenizer),
    )
    prediction = trainer.predict(sequences([line.split("\t")[1] for line in RAW], tokenizer, 128))
    assert prediction.predictions is None and prediction.metrics["test_loss"] > 0


def test_long_texts_become_several_sequences_and_lose_nothing(encoder):
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    texts = [TINY_TEXT * 4, "김철수"]
    rows = sequences(texts, tokenizer, max_length=16)
    content = [token for row in rows["input_ids"] for token in row if token not in tokenizer.all_special_ids]
    expected = [token for text in texts for token in tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert max(len(row) for row in rows["input_ids"]) <= 16 and len(rows) > len(texts)
    assert content == expected


def test_an_interrupted_run_resumes_to_the_uninterrupted_weights(encoder, tmp_path):
    """Resumed from a checkpoint at the end of an epoch (12 texts, 4 a batch: 3 steps an epoch), the run ends with the
    uninterrupted run's weights: the same data order and the same random masks."""
    steps = ["--max_steps", "6", "--save_strategy", "epoch"]
    adapt(encoder, tmp_path, tmp_path / "whole", *steps)
    adapt(encoder, tmp_path, tmp_path / "resumed", *steps)
    for leftover in ("checkpoint-6", "model.safetensors"):  # as if stopped right after the first epoch's checkpoint
        path = tmp_path / "resumed" / leftover
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    adapt(encoder, tmp_path, tmp_path / "resumed", *steps, "--resume_from_checkpoint", "last")
    whole, resumed = (load_file(tmp_path / run / "model.safetensors") for run in ("whole", "resumed"))
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def test_a_previous_run_is_refused(encoder, tmp_path, capsys):
    adapt(encoder, tmp_path, tmp_path / "run", "--max_steps", "1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        adapt(encoder, tmp_path, tmp_path / "run", "--max_steps", "1")
    assert refused.value.code == 2
    assert "koelectra-crf adapt: error: --output_dir" in capsys.readouterr().err


def test_the_defaults_are_the_studied_recipe(encoder, tmp_path):
    cli_main(["adapt", str(encoder), "--input", str(tmp_path / "raw.tsv"), "--output", str(tmp_path / "run"),
              "--max_steps", "1", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true"])  # fmt: skip
    arguments = torch.load(tmp_path / "run" / "training_args.bin", weights_only=False)
    assert {name: getattr(arguments, name) for name in RECIPE} == RECIPE


def fine_tune(encoder, output_dir, *flags: str) -> dict:
    """A few steps of fine-tuning a character head on 40 smoke sentences, from `encoder`."""
    return train.main([
        "--encoder_name_or_path", str(encoder), "--train_file", str(SMOKE_DATA / "smoke-train.tsv"),
        "--validation_file", str(SMOKE_DATA / "smoke-valid.tsv"), "--max_train_samples", "40",
        "--max_eval_samples", "8", "--output_dir", str(output_dir), "--max_steps", "4",
        "--per_device_train_batch_size", "8", "--lstm_hidden_size", "16", "--max_length", "64", "--stride", "16",
        "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false", "--use_cpu", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--seed", "3", *flags,
    ])  # fmt: skip


def test_training_adapts_on_its_text_first_as_adapt_then_fine_tuning_would(encoder, tmp_path):
    """`--adapt_on train` is `koelectra-crf adapt` on the training sentences (its recipe, the run's seed) and then
    fine-tuning from the adapted folder: the same adapted encoder and the same fine-tuned weights, which differ from
    fine-tuning the encoder as it is. The card names the encoder adapted, and the upload leaves the adapted folder out;
    a run resumed after its adaptation reuses it."""
    combined = tmp_path / "combined"
    fine_tune(encoder, combined, "--adapt_on", "train", "--push_dry_run", "true")

    sentences = [example["sentence"] for example in read_klue_tsv(SMOKE_DATA / "smoke-train.tsv")[:40]]
    (tmp_path / "sentences.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    cli_main(["adapt", str(encoder), "--input", str(tmp_path / "sentences.txt"), "--output", str(tmp_path / "adapted"),
              "--seed", "3", "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true"])  # fmt: skip
    fine_tune(tmp_path / "adapted", tmp_path / "two-steps")
    fine_tune(encoder, tmp_path / "not-adapted")

    adapted, separately = (load_file(folder / "model.safetensors")
                           for folder in (combined / "adapted-encoder", tmp_path / "adapted"))  # fmt: skip
    assert adapted.keys() == separately.keys() and all(torch.equal(adapted[n], separately[n]) for n in adapted)
    weights = {run: load_file(tmp_path / run / "model.safetensors") for run in ("combined", "two-steps", "not-adapted")}
    assert all(torch.equal(weights["combined"][name], weights["two-steps"][name]) for name in weights["combined"])
    name = "encoder.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(weights["combined"][name], weights["not-adapted"][name])

    card = (combined / "README.md").read_text(encoding="utf-8")
    assert f"- base model: {encoder}" in card
    assert "- encoder adaptation: masked-LM training of the encoder on the training sentences" in card
    assert "- morpheme features (Kiwi): no" in card
    uploaded = json.loads((combined / "upload_manifest.json").read_text())
    assert uploaded and not any(path.startswith("adapted-encoder") for path in uploaded)

    # Stopped after adapting, before any checkpoint of the fine-tuning: resumed, it fine-tunes from the same folder.
    adapted_state = (combined / "adapted-encoder" / "trainer_state.json").stat().st_mtime_ns
    for path in combined.iterdir():
        if path.name != "adapted-encoder":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(train.UsageError, match="holds no checkpoint-N folder"):  # without --adapt_on: nothing to resume
        fine_tune(encoder, combined, "--resume_from_checkpoint", "last")
    fine_tune(encoder, combined, "--adapt_on", "train", "--resume_from_checkpoint", "last")
    assert (combined / "adapted-encoder" / "trainer_state.json").stat().st_mtime_ns == adapted_state
    resumed = load_file(combined / "model.safetensors")
    assert all(torch.equal(resumed[name], weights["two-steps"][name]) for name in resumed)


@pytest.mark.parametrize("preset", ["offline-e5-small", "klue-koelectra-base"])
def test_the_presets_leave_adaptation_and_morpheme_features_to_flags(preset):
    """docs/results.md, issue #35: the two together were +1.37 entity F1 (SE 0.66) over three seeds, no established
    difference, so the presets train without them; flags turn each on."""
    config = str(ROOT / f"training/configs/{preset}.json")
    model, head, *_ = train.parse_arguments(["--config", config])
    assert (model.adapt_on, head.morpheme_features) == (None, False)
    model, head, *_ = train.parse_arguments(["--config", config, "--adapt_on", "train", "--morpheme_features", "true"])
    assert (model.adapt_on, head.morpheme_features) == ("train", True)
    model, *_ = train.parse_arguments(["--config", config, "--adapt_on", "train", "--adapt_on", "none"])
    assert model.adapt_on is None  # a later "none" turns an earlier adaptation off
