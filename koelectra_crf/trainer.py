"""`NerTrainer`: a transformers `Trainer` with R-Drop, FGM, differential learning rates and KLUE evaluation."""

import time
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments

from koelectra_crf.crf import IGNORE_INDEX
from koelectra_crf.evaluation import SentencePrediction, evaluate_dataset
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline


@dataclass
class NerTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the recipe of the original `korean_ner` project."""

    fgm_epsilon: float = field(default=0.5, metadata={"help": "FGM perturbation size on word embeddings; 0 = off."})
    rdrop_alpha: float = field(default=0.5, metadata={"help": "Weight of the R-Drop KL term; 0 = off."})
    head_learning_rate: float = field(
        default=1e-3, metadata={"help": "Learning rate of BiLSTM, classifier, CRF (`learning_rate` is the encoder's)."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after this many evaluations without improvement (None = off)."}
    )
    # transformers' default (False) restarts the early-stopping count on resume, so a resumed run could train on
    # past the epoch where the uninterrupted run stops; the resumed run keeps the checkpoint's callback settings.
    restore_callback_states_from_checkpoint: bool = field(
        default=True,
        metadata={"help": "On resume, restore the callbacks' state (the early-stopping count and patience) from the "
                          "checkpoint, so the run stops where an uninterrupted one would; false restarts the count."},
    )  # fmt: skip


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where `mask` is True of (KL(p_a || p_b) + KL(p_b || p_a)) / 2.

    `logits_*` (B, T, K) are the per-token tag scores of two dropout passes, `mask` (B, T). Padding and -100
    positions carry no tag distribution worth matching, so they are left out.
    """
    log_p, log_q = logits_a.float().log_softmax(-1), logits_b.float().log_softmax(-1)
    kl = ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1) / 2  # KL(p||q) + KL(q||p), halved
    return (kl * mask).sum() / mask.sum().clamp(min=1)


class NerTrainer(Trainer):
    """Trainer for `KoElectraCrfForTokenClassification`.

    - R-Drop (in `compute_loss`): the batch goes through the model once, concatenated with itself, so the two
      copies get independent dropout masks; loss = task loss on both copies + alpha * symmetric KL between
      their per-token tag distributions (softmax of the emissions) on labelled positions.
    - FGM (in `training_step`): the attack direction is the gradient of the embedding matrix, which exists
      only after the normal backward; putting FGM in `compute_loss` would cost an extra backward to get it.
      The perturbed forward/backward is a second `Trainer.training_step`, so it goes through the accelerator
      exactly like the first (fp16 loss scaling, gradient accumulation, DDP no_sync).
    - Optimizer groups: encoder at `learning_rate`, BiLSTM/classifier/CRF at `head_learning_rate`; no weight
      decay on biases and LayerNorm.
    - `evaluate` runs the CRF pipeline over `eval_dataset` (a raw KLUE split: `sentence`, `tokens`, `ner_tags`)
      in evaluation mode and reports KLUE's character-level metrics (`evaluation.evaluate_dataset`): what is
      measured is what users get.
    - Every folder it saves (checkpoints and the final model) is a complete model folder that
      `pipeline("token-classification", model=folder, trust_remote_code=True)` loads: the model's
      `save_pretrained` writes one.
    """

    args: NerTrainingArguments

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._adversarial_pass = False
        self.last_predictions: list[SentencePrediction] = []  # of the last `evaluate` call

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.rdrop_alpha == 0 or not model.training or self._adversarial_pass:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        doubled = {name: torch.cat([value, value]) for name, value in inputs.items()}
        outputs = model(**doubled)
        logits_a, logits_b = outputs.logits.chunk(2)
        labelled = inputs["labels"] != IGNORE_INDEX
        loss = outputs.loss + self.args.rdrop_alpha * symmetric_kl(logits_a, logits_b, labelled)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.fgm_epsilon == 0:
            return super().training_step(model, inputs, num_items_in_batch)
        embeddings = self.accelerator.unwrap_model(model).get_input_embeddings().weight
        # With gradient accumulation the matrix already holds earlier micro-batches' gradients: keep them, to
        # attack along this batch's own gradient.
        earlier = None if embeddings.grad is None else embeddings.grad.detach().clone()
        loss = super().training_step(model, inputs, num_items_in_batch)
        gradient = embeddings.grad if earlier is None else embeddings.grad - earlier
        norm = gradient.norm()
        if torch.isfinite(norm) and norm > 0:  # an fp16 overflow step is skipped by the scaler anyway
            original = embeddings.detach().clone()
            with torch.no_grad():
                embeddings.add_(gradient, alpha=self.args.fgm_epsilon / norm.item())
            self._adversarial_pass = True
            try:
                super().training_step(model, inputs, num_items_in_batch)
            finally:
                self._adversarial_pass = False
                with torch.no_grad():
                    embeddings.copy_(original)
        return loss

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = {}
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            is_encoder = name.startswith(f"{opt_model.base_model_prefix}.")
            key = (is_encoder, name in decay)
            groups.setdefault(key, []).append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(
            [
                {
                    "params": parameters,
                    "lr": self.args.learning_rate if is_encoder else self.args.head_learning_rate,
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                }
                for (is_encoder, decays), parameters in sorted(groups.items(), reverse=True)
            ],
            **optimizer_kwargs,
        )
        return self.optimizer

    def evaluate(
        self, eval_dataset: Dataset | None = None, ignore_keys=None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        started = time.perf_counter()
        metrics, self.last_predictions = evaluate_dataset(
            self.pipeline(), dataset, self.args.per_device_eval_batch_size
        )
        metrics["runtime"] = time.perf_counter() - started
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def pipeline(self) -> KoElectraCrfTokenClassificationPipeline:
        """The CRF pipeline of the model being trained (in whatever mode the model is)."""
        model = self.accelerator.unwrap_model(self.model)
        return KoElectraCrfTokenClassificationPipeline(
            model=model, tokenizer=self.processing_class, device=model.device
        )
