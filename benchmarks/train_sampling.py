"""Training batches drawn at random (the Trainer's default) against grouped by length, on the real KLUE data.

    python benchmarks/train_sampling.py --threads 1

The offline preset's model (e5-small-ko encoder, character head, BiLSTM + CRF; no FGM / R-Drop, multi-sample
dropout 1: the studies' recipe) and its 3,500 training sentences, tokenized and collated as `koelectra_crf.train`
does. Each sampler (`--train_sampling_strategy random` and `group_by_length`, transformers' `LengthGroupedSampler`)
draws one epoch of batches; `--steps` of them, evenly spaced over the epoch (all of them with `--steps 110`), are
timed as training steps after a warm-up step, the two samplers alternating step by step in one process. Prints one
JSON object: the share of padded encoder positions that hold a token under each sampler (over the whole epoch),
each timed step's seconds, the epoch time each sampler's mean step gives, and their ratio.
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, set_seed

from koelectra_crf.alignment import NerDataCollator
from koelectra_crf.data import label_names, load_klue_ner, tokenize_and_align
from koelectra_crf.train import build_model, parse_arguments, use_special_tokens_of
from koelectra_crf.trainer import NerTrainer

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "training/configs/offline-e5-small.json"
STUDY_FLAGS = ["--fgm_epsilon", "0", "--rdrop_alpha", "0", "--multi_sample_dropout", "1"]
STRATEGIES = ("random", "group_by_length")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per sampler")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="(default: torch's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.chdir(ROOT)  # the preset's paths are relative to the repository root

    def arguments(strategy: str) -> tuple:
        return parse_arguments(["--config", str(PRESET), "--output_dir", "/tmp/train-sampling-benchmark",
                                *STUDY_FLAGS, "--train_sampling_strategy", strategy, "--use_cpu", "true",
                                "--eval_strategy", "no", "--load_best_model_at_end", "false"])  # fmt: skip

    model_args, head_args, data_args, training_args, _ = arguments("random")
    set_seed(training_args.seed)
    raw = load_klue_ner(data_args.train_file)["train"]
    tokenizer = AutoTokenizer.from_pretrained(model_args.encoder_name_or_path)
    model = build_model(model_args, head_args, label_names(raw), len(tokenizer))  # one model: the same weights
    use_special_tokens_of(tokenizer, model)
    dataset = tokenize_and_align(raw, tokenizer, model.config)
    batches, filled = {}, {}
    for strategy in STRATEGIES:
        training_args = arguments(strategy)[3]
        set_seed(training_args.seed)
        trainer = NerTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer,
                             data_collator=NerDataCollator(tokenizer.pad_token_id))  # fmt: skip
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1
        epoch = list(trainer.get_train_dataloader())
        masks = [batch["attention_mask"] for batch in epoch]
        filled[strategy] = sum(int(mask.sum()) for mask in masks) / sum(mask.numel() for mask in masks)
        spaced = [epoch[round(k * (len(epoch) - 1) / max(args.steps - 1, 1))] for k in range(args.steps)]
        batches[strategy] = (trainer, [trainer._prepare_inputs(batch) for batch in spaced])

    model.train()
    trainer, timed = batches["random"]
    trainer.training_step(model, timed[0])  # warm-up: the first step allocates what the others reuse
    seconds = {strategy: [] for strategy in STRATEGIES}
    for step in range(args.steps):
        for strategy, (trainer, timed) in batches.items():
            model.zero_grad(set_to_none=True)
            started = time.perf_counter()
            trainer.training_step(model, timed[step])
            seconds[strategy].append(time.perf_counter() - started)
    # The timed batches are spread evenly over the epoch, so their mean time is an estimate of the epoch's mean.
    epoch_seconds = {strategy: statistics.fmean(times) * len(epoch) for strategy, times in seconds.items()}
    print(json.dumps({
        "torch": torch.__version__, "threads": args.threads, "batch_size": training_args.per_device_train_batch_size,
        "steps": args.steps, "epoch_steps": len(epoch), "share_of_positions_holding_a_token": filled,
        "estimated_epoch_seconds": epoch_seconds, "seconds_per_step": seconds,
        "speedup_group_by_length": epoch_seconds["random"] / epoch_seconds["group_by_length"],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
