"""One KLUE-sized epoch (21,008 sentences) of the full recipe with fp16 on a KoELECTRA-base-sized model.

    python benchmarks/klue_epoch.py   # meant for a GPU (fp16); on a CPU it runs in fp32, only to check the script

Random weights and random token ids of length 128 (speed does not depend on them), batch 32, FGM + R-Drop +
multi-sample dropout 5, BiLSTM + CRF. Prints seconds for the epoch and the peak GPU memory, and whether that
peak fits in 4 GiB (the original project's RTX 3050 needed 2 hours per epoch there).
"""

import argparse
import json
import time

import torch
from train_step import build_model

from koelectra_crf import KLUE_LABELS
from koelectra_crf.trainer import NerTrainer, NerTrainingArguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=21_008)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()  # the measurement is meant for a GPU; on a CPU (fp32) it only checks the script
    model = build_model(random_base=True)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.encoder.vocab_size, (args.sentences, args.length), generator=generator)
    labels = torch.randint(0, len(KLUE_LABELS), ids.shape, generator=generator)
    labels[:, [0, -1]] = -100
    rows = [
        {"input_ids": row_ids, "attention_mask": torch.ones_like(row_ids), "labels": row_labels}
        for row_ids, row_labels in zip(ids, labels, strict=True)
    ]
    training_args = NerTrainingArguments(
        output_dir="/tmp/klue-epoch-benchmark", report_to="none", fp16=on_gpu, use_cpu=not on_gpu,
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=1, save_strategy="no", eval_strategy="no", logging_steps=100, dataloader_num_workers=4,
        learning_rate=3e-5, head_learning_rate=1e-3, warmup_steps=0.1, max_grad_norm=1.0,
    )  # fmt: skip
    trainer = NerTrainer(model=model, args=training_args, train_dataset=rows, data_collator=lambda batch: {
        key: torch.stack([row[key] for row in batch]) for key in batch[0]})  # fmt: skip
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    if on_gpu:
        torch.cuda.synchronize()
    result = {"device": torch.cuda.get_device_name() if on_gpu else "cpu", "torch": torch.__version__, "fp16": on_gpu,
              "sentences": args.sentences, "batch_size": args.batch_size, "length": args.length,
              "epoch_seconds": time.perf_counter() - started, "steps": trainer.state.global_step}  # fmt: skip
    if on_gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
        result |= {"peak_memory_gib": peak, "fits_in_4_gib": peak < 4.0}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
