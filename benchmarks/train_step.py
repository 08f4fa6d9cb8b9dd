"""Cost of a full-recipe training step (FGM + R-Drop) relative to a plain step of the same model and batch.

    python benchmarks/train_step.py                       # e5-small-ko from ../shared (CPU)
    python benchmarks/train_step.py --random_base --fp16  # KoELECTRA-base-sized random encoder (GPU)

Prints one JSON object: median seconds per step of each, their ratio, and peak memory (GPU memory on CUDA; on
a CPU the process's peak resident memory after each variant, plain first). The
floor is about 3x: R-Drop doubles the batch, FGM adds one forward and backward of the plain batch.
"""

import argparse
import json
import resource
import statistics
import time

import torch
from shared_data import E5

from koelectra_crf import KLUE_LABELS, KoElectraCrfConfig, KoElectraCrfForTokenClassification
from koelectra_crf.trainer import NerTrainer, NerTrainingArguments


def build_model(random_base: bool) -> KoElectraCrfForTokenClassification:
    # Token units: the batch below is random token ids with one label per token.
    if random_base:
        # The default encoder is KoELECTRA-base-v3's architecture (KOELECTRA_BASE_V3); KLUE labels by default.
        config = KoElectraCrfConfig(multi_sample_dropout=5, tag_unit="token")
        return KoElectraCrfForTokenClassification(config)
    return KoElectraCrfForTokenClassification.from_encoder(str(E5), multi_sample_dropout=5, tag_unit="token")


def time_steps(trainer: NerTrainer, batch: dict, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        trainer.model.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        trainer.training_step(trainer.model, batch)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random_base", action="store_true", help="KoELECTRA-base-sized random encoder")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fp16", action="store_true")
    args = parser.parse_args()

    model = build_model(args.random_base)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, model.config.encoder.vocab_size, (args.batch_size, args.length), generator=generator)
    labels = torch.randint(0, len(KLUE_LABELS), input_ids.shape, generator=generator)
    labels[:, [0, -1]] = -100
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "batch_size": args.batch_size, "length": args.length,
              "encoder": "random KoELECTRA-base size" if args.random_base else "multilingual-e5-small-ko",
              "fp16": args.fp16}  # fmt: skip
    for name, fgm, rdrop in (("plain", 0.0, 0.0), ("full_recipe", 0.5, 0.5)):
        trainer_args = NerTrainingArguments(
            output_dir="/tmp/train-step-benchmark",
            report_to="none",
            fp16=args.fp16,
            fgm_epsilon=fgm,
            rdrop_alpha=rdrop,
            use_cpu=not torch.cuda.is_available(),
        )
        trainer = NerTrainer(model=model, args=trainer_args)
        trainer.create_optimizer()
        trainer.current_gradient_accumulation_steps = 1
        prepared = trainer._prepare_inputs(batch)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        times = time_steps(trainer, prepared, args.steps + 1)[1:]  # the first step warms up
        result[f"{name}_seconds_per_step"] = statistics.median(times)
        if torch.cuda.is_available():
            result[f"{name}_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        else:  # the process's peak resident memory so far: plain runs first, so the second value covers the recipe
            result[f"{name}_process_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["ratio_full_over_plain"] = result["full_recipe_seconds_per_step"] / result["plain_seconds_per_step"]
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
