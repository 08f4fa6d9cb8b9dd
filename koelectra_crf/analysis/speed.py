"""`koelectra-crf benchmark`: latency and throughput of the CRF pipeline on real sentences.

Latency is per sentence at batch size 1 (p50/p95 over the sentences); throughput is sentences per second through
the pipeline at each batch size. Both include tokenization, windows, CRF decoding and character alignment, i.e.
what a user of the pipeline waits for. Each measurement starts after a warm-up on a few sentences.
"""

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from koelectra_crf.loading import load_pipeline
from koelectra_crf.pipeline_koelectra_crf import KoElectraCrfTokenClassificationPipeline

WARMUP_SENTENCES = 8


def latency_ms(ner: KoElectraCrfTokenClassificationPipeline, sentences: list[str]) -> dict[str, float]:
    """p50, p95 and mean milliseconds to tag one sentence alone."""
    for sentence in sentences[:WARMUP_SENTENCES]:
        ner(sentence)
    times = []
    for sentence in tqdm(sentences, desc=f"latency on {ner.device}", unit="sentence"):
        start = time.perf_counter()
        ner(sentence)
        times.append(1000 * (time.perf_counter() - start))
    return {
        "p50_ms": float(np.percentile(times, 50)),
        "p95_ms": float(np.percentile(times, 95)),
        "mean_ms": float(np.mean(times)),
    }


def throughput(ner: KoElectraCrfTokenClassificationPipeline, sentences: list[str], batch_size: int) -> float:
    """Sentences per second through the pipeline at `batch_size`."""
    ner(sentences[:WARMUP_SENTENCES], batch_size=batch_size)
    start = time.perf_counter()
    ner(sentences, batch_size=batch_size)  # the results come back to the host: nothing left running on a GPU
    return len(sentences) / (time.perf_counter() - start)


def benchmark_devices() -> list[str]:
    """The CPU, and the GPU when there is one."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def run_benchmark(model: str, sentences: list[str], batch_sizes: list[int], devices: list[str]) -> dict:
    """Latency and throughput of the model's pipeline on each device."""
    results = []
    for device in devices:
        ner = load_pipeline(model, device)
        rates = {str(b): throughput(ner, sentences, b) for b in tqdm(batch_sizes, desc=f"throughput on {device}")}
        name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
        results.append(
            {
                "device": device,
                "device_name": name,
                "latency_batch_1": latency_ms(ner, sentences),
                "sentences_per_second": rates,
            }
        )
    return {
        "model": model,
        "sentences": len(sentences),
        "mean_characters": float(np.mean([len(s) for s in sentences])),
        "results": results,
    }


def benchmark_table(report: dict) -> str:
    """The benchmark as a Markdown table."""
    batch_sizes = list(report["results"][0]["sentences_per_second"]) if report["results"] else []
    lines = [
        f"{report['sentences']} sentences of {report['mean_characters']:.0f} characters on average; model "
        f"`{report['model']}`.",
        "",
        "| device | p50 ms (batch 1) | p95 ms (batch 1) | "
        + " | ".join(f"sent/s batch {b}" for b in batch_sizes)
        + " |",
        "|---|---:|---:|" + "---:|" * len(batch_sizes),
    ]
    for result in report["results"]:
        latency, rates = result["latency_batch_1"], result["sentences_per_second"]
        lines.append(
            f"| {result['device_name']} | {latency['p50_ms']:.1f} | {latency['p95_ms']:.1f} | "
            + " | ".join(f"{rates[b]:.1f}" for b in batch_sizes)
            + " |"
        )
    return "\n".join(lines) + "\n"


def write_benchmark(report: dict, output_dir: Path) -> None:
    """Write `benchmark.json` and `benchmark.md`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")
    (output_dir / "benchmark.md").write_text(benchmark_table(report))
