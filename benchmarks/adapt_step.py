"""What scoring only the masked positions saves a task-adaptive pretraining step (`koelectra-crf adapt`): a training
step of transformers' own `Trainer` (the masked-LM head over every position) against `adapt.MaskedPositionsTrainer`
(only the masked ones), same model, same masked batch, in the same run.

    python benchmarks/adapt_step.py                  # multilingual-e5-small-ko from ../shared, KLUE's raw sentences

The batch is the first `--batch_size` raw KLUE training sentences, tokenized as `adapt` does and masked by
transformers' collator (15%). The two trainers alternate step by step from the same weights (the optimizer's update
is part of each step, as in training; the weights are restored after each timed step) and each keeps its median.
Prints one JSON object: seconds per step of each, `speedup` (plain / masked positions only) and what an epoch of the
21,008 sentences takes at the faster step with this batch size.
"""

import argparse
import json
import statistics
import time

import torch
from shared_data import E5, SENTENCES
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from koelectra_crf.adapt import MaskedPositionsTrainer, sequences
from koelectra_crf.inputs import read_texts


def timed_step(trainer: Trainer, batch: dict) -> float:
    weights = {name: tensor.clone() for name, tensor in trainer.model.state_dict().items()}
    started = time.perf_counter()
    trainer.training_step(trainer.model, {name: tensor.clone() for name, tensor in batch.items()})
    trainer.optimizer.step()
    trainer.model.zero_grad(set_to_none=True)
    elapsed = time.perf_counter() - started
    trainer.model.load_state_dict(weights)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(E5)
    model = AutoModelForMaskedLM.from_pretrained(E5, dtype=torch.float32)
    texts = read_texts(SENTENCES)
    rows = list(sequences(texts[: args.batch_size], tokenizer, 128))
    torch.manual_seed(0)
    batch = DataCollatorForLanguageModeling(tokenizer)(rows)
    trainers = {}
    for name, trainer_class in (("plain", Trainer), ("masked_positions", MaskedPositionsTrainer)):
        training_args = TrainingArguments(output_dir="/tmp/adapt-step-benchmark", report_to="none", use_cpu=True)
        trainer = trainer_class(model=model, args=training_args)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1
        trainers[name] = trainer
    times = {name: [] for name in trainers}
    for step in range(args.steps + 1):
        for name, trainer in trainers.items():
            elapsed = timed_step(trainer, batch)
            if step:  # the first step of each warms up
                times[name].append(elapsed)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    steps_per_epoch = -(-len(texts) // args.batch_size)
    print(json.dumps({
        "torch": torch.__version__, "threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "tokens": int(batch["attention_mask"].sum()), "masked_tokens": int((batch["labels"] != -100).sum()),
        "vocabulary": model.config.vocab_size,
        "plain_seconds_per_step": seconds["plain"], "masked_positions_seconds_per_step": seconds["masked_positions"],
        "speedup": seconds["plain"] / seconds["masked_positions"],
        "epoch_hours_masked_positions": steps_per_epoch * seconds["masked_positions"] / 3600,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
