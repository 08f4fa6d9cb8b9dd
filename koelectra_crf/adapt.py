"""Task-adaptive pretraining: continue an encoder's masked-LM training on raw text of the task's own domain before
fine-tuning on it (Gururangan et al., ACL 2020, "Don't Stop Pretraining"), in the style of transformers' `run_mlm.py`.

    koelectra-crf adapt ENCODER --input raw.tsv --output DIR [any TrainingArguments flag]
    accelerate launch -m koelectra_crf.adapt --encoder_name_or_path ENCODER --input_file raw.tsv --output_dir DIR

The input is one text per line, `<id>\\t<text>` lines (KLUE's raw sentence file), JSONL with a `text` field, or a KLUE
TSV file (`inputs.read_records`, its format told by extension and content). A text longer than `--max_length` tokens is
cut into several sequences, never truncated. The output folder holds the encoder with its masked-LM head and the
tokenizer: training takes it as `--encoder_name_or_path`. An encoder saved without a masked-LM head (a
sentence-embedding model such as e5) gets a fresh one, which transformers' load report lists. As for training, a
non-empty output folder is refused unless `--resume_from_checkpoint last` continues the run in it or
`--overwrite_output_dir true` replaces it. Resumed from a checkpoint saved at the end of an epoch
(`--save_strategy epoch`), a run ends with the uninterrupted run's weights; from one inside an epoch, the first batch
after it gets other random masks (transformers restores the random state only after fetching that batch, and the masks
are drawn as it is fetched).

With `--validation_file` (held-out raw text, as run_mlm.py's), each evaluation reports the held-out masked-LM loss
and perplexity, always on the same masked tokens: `--eval_strategy epoch --eval_on_start true` scores the encoder
before adaptation and after each epoch, and the run ends with one more evaluation (eval_results.json).

Its defaults are issue #35's recipe (`RECIPE`). Training's `--adapt_on TEXT` runs it before fine-tuning, in the
training's output folder (`adapt_before_fine_tuning`).

Only the masked positions go through the masked-LM head (`MaskedPositionsTrainer`): the loss is the model's own, at
less cost (`benchmarks/adapt_step.py`).
"""

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    set_seed,
)

from koelectra_crf.inputs import read_texts
from koelectra_crf.threads import choose_cpu_threads
from koelectra_crf.train import (
    ADAPTED_ENCODER_FOLDER,
    RESUME_LAST,
    TRAIN_RESULTS_FILE,
    checkpoint_to_resume,
    delete_previous_run,
    latest_checkpoint,
)

logger = logging.getLogger(__name__)


@dataclass
class AdaptArguments:
    encoder_name_or_path: str = field(metadata={"help": "The encoder to adapt (Hub id or folder)."})
    input_file: str = field(
        metadata={
            "help": "Raw text: a text per line, `<id>\\t<text>` lines, JSONL, or a KLUE TSV file (its sentences)."
        }
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "Held-out raw text (same formats): its masked-LM loss and perplexity at each evaluation "
                          "(`--eval_strategy`, `--eval_on_start true` for the encoder before adaptation) and at the "
                          "end, always with the same masks."},
    )  # fmt: skip
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked for the MLM loss."})
    max_length: int = field(
        default=128, metadata={"help": "Tokens per sequence; longer texts become several sequences."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start afresh in an --output_dir that holds a previous run (its checkpoints and results "
                          f"are deleted). Without it such a folder is refused unless --resume_from_checkpoint "
                          f"({'/'.join(RESUME_LAST)} or a path) continues the run."},
    )  # fmt: skip


def sequences(texts: list[str], tokenizer, max_length: int) -> Dataset:
    """The MLM training sequences of `texts`: each text's tokens, cut into pieces of at most `max_length` tokens
    (special tokens included) so that nothing is dropped."""

    def tokenize(batch: dict) -> dict:
        encoded = tokenizer(
            batch["text"], truncation=True, max_length=max_length, return_overflowing_tokens=True,
            return_special_tokens_mask=True,
        )  # fmt: skip
        encoded.pop("overflow_to_sample_mapping")
        return encoded

    return Dataset.from_dict({"text": texts}).map(tokenize, batched=True, remove_columns=["text"], desc="Tokenizing")


class MaskedPositionsTrainer(Trainer):
    """A `Trainer` whose masked-LM models score only the masked positions.

    transformers' masked-LM models apply their head (a dense layer and the output layer, hidden × vocabulary) to every
    position and then drop the unmasked ones from the loss (label -100): 85% of the head's work is thrown away, and
    the output layer costs 2 × hidden × vocabulary FLOPs a token (multilingual-e5-small's 250,002 tokens: 0.19
    GFLOP, four times its encoder). The head works position by position, so handing it only the masked positions'
    hidden states gives the same logits for them and the same loss; a forward hook on the encoder does that for any
    architecture (BERT, ELECTRA, RoBERTa...), and the model computes its loss itself, as with the plain `Trainer`.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        masked = inputs["labels"] != -100  # (batch, sequence)

        def keep_masked_positions(module, args, output):
            # (batch, sequence, hidden) -> (1, masked positions, hidden), the order of `labels[masked]`.
            output.last_hidden_state = output.last_hidden_state[masked].unsqueeze(0)
            return output

        encoder = self.accelerator.unwrap_model(model).base_model
        hook = encoder.register_forward_hook(keep_masked_positions)
        try:
            masked_inputs = {**inputs, "labels": inputs["labels"][masked].unsqueeze(0)}  # (1, masked positions)
            return super().compute_loss(model, masked_inputs, return_outputs, num_items_in_batch)
        finally:
            hook.remove()

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # An evaluation wants the loss only: the logits the Trainer would otherwise keep for every masked position of
        # the held-out text (vocabulary-sized rows, 64 KiB each for e5-small-ko) would fill the memory.
        return super().prediction_step(model, inputs, True, ignore_keys)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """The held-out masked-LM loss and its perplexity, exp(loss). The masks are drawn from `--seed` at every
        evaluation, so that evaluations before, during and after adaptation (and of other runs) score the same masked
        tokens; the training's random state is left as it was, so evaluating changes nothing of the training."""
        with torch.random.fork_rng():
            torch.manual_seed(self.args.seed)
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics[f"{metric_key_prefix}_perplexity"] = math.exp(metrics[f"{metric_key_prefix}_loss"])
        return metrics


RECIPE = {
    "num_train_epochs": 2,
    "per_device_train_batch_size": 16,
    "learning_rate": 1e-4,
    "warmup_steps": 0.06,
    "weight_decay": 0.01,
    "save_strategy": "steps",
    "save_steps": 200,
    "save_total_limit": 2,
}
"""`adapt`'s defaults, issue #35's recipe (docs/results.md): two epochs of KLUE's 21,008 raw sentences, batch 16, lr
1e-4, 6% warm-up, weight decay 0.01, a checkpoint every 200 steps (resumable). Any `TrainingArguments` flag overrides
them; training's `--adapt_on` uses them as they are."""


def adapt(adapt_args: AdaptArguments, training_args: TrainingArguments, texts: list[str]) -> dict[str, float]:
    """Continue `adapt_args.encoder_name_or_path`'s masked-LM training on `texts` and save the encoder with its
    masked-LM head and tokenizer in `training_args.output_dir`; returns the training (and held-out) metrics."""
    output_dir = Path(training_args.output_dir)
    checkpoint = checkpoint_to_resume(output_dir, training_args.resume_from_checkpoint, adapt_args.overwrite_output_dir)
    if checkpoint is None and adapt_args.overwrite_output_dir and training_args.should_save:
        delete_previous_run(output_dir)
    set_seed(training_args.seed)

    tokenizer = AutoTokenizer.from_pretrained(adapt_args.encoder_name_or_path)
    # float32 master weights whatever the checkpoint's dtype (e5's are float16), as for fine-tuning.
    model = AutoModelForMaskedLM.from_pretrained(adapt_args.encoder_name_or_path, dtype=torch.float32)
    choose_cpu_threads(model, processes=training_args.world_size)
    with training_args.main_process_first(desc="tokenizing"):
        dataset = sequences(texts, tokenizer, adapt_args.max_length)
        held_out = None
        if adapt_args.validation_file:
            held_out = sequences(read_texts(adapt_args.validation_file), tokenizer, adapt_args.max_length)
    logger.info("adapting %s on %d texts (%d sequences)", adapt_args.encoder_name_or_path, len(texts), len(dataset))
    trainer = MaskedPositionsTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        eval_dataset=held_out,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=adapt_args.mlm_probability),
        processing_class=tokenizer,
    )
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.save_metrics("train", result.metrics)
    metrics = dict(result.metrics)
    if held_out is not None:
        metrics.update(evaluation := trainer.evaluate())
        trainer.save_metrics("eval", evaluation)
    trainer.save_state()
    return metrics


def adapt_before_fine_tuning(
    encoder_name_or_path: str, texts: list[str], output_dir: Path, training_args: TrainingArguments
) -> Path:
    """Training's `--adapt_on`: the folder of `encoder_name_or_path` adapted to `texts` with `RECIPE`, the fine-tuning
    run's seed, precision and device, in `output_dir / ADAPTED_ENCODER_FOLDER`. A finished adaptation there is reused,
    an interrupted one resumed from its last checkpoint, so a resumed fine-tuning run never adapts twice."""
    folder = output_dir / ADAPTED_ENCODER_FOLDER
    if (folder / TRAIN_RESULTS_FILE).is_file():
        logger.info("--adapt_on: the encoder adapted in %s is reused", folder)
        return folder
    args = TrainingArguments(
        output_dir=str(folder),
        **RECIPE,
        seed=training_args.seed,
        fp16=training_args.fp16,
        bf16=training_args.bf16,
        use_cpu=training_args.use_cpu,
        logging_steps=training_args.logging_steps,
        disable_tqdm=training_args.disable_tqdm,
        report_to="none",
        resume_from_checkpoint=RESUME_LAST[0] if latest_checkpoint(folder) else None,
    )
    # The folder is the run's own: what an adaptation stopped before its first checkpoint left there is replaced.
    adapt(AdaptArguments(encoder_name_or_path, input_file="", overwrite_output_dir=True), args, texts)
    PartialState().wait_for_everyone()  # every process fine-tunes from the folder the main one has written
    return folder


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((AdaptArguments, TrainingArguments))
    parser.set_defaults(**RECIPE)
    adapt_args, training_args = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return adapt(adapt_args, training_args, read_texts(adapt_args.input_file))


if __name__ == "__main__":
    main()
