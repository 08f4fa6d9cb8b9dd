"""ONNX Runtime (float32, int8, int8-full) against the PyTorch pipeline: speed, peak memory and KLUE accuracy, one run.

    python benchmarks/onnx_speed.py                              # e5-small from ../shared, head trained a little
    python benchmarks/onnx_speed.py --model outputs/koelectra-klue  # any saved model folder
    python benchmarks/onnx_speed.py --sentences 20 --validation_sentences 20 --train_steps 0   # smoke run

The PyTorch model folder is exported three times (`onnx_model.export_onnx`: float32; int8 dynamic quantization with
the feed-forward output projections left in float32; int8-full). Each of the four then runs in a fresh process,
one after the other, so that each process's peak resident memory is its own: load, warm up, tag `--sentences`
sentences of klue-ner-train-sentences.tsv at `--batch_size` through the same pipeline class (sentences per second:
tokenization, windows, CRF and alignment included), then evaluate on the KLUE validation file (entity and
character F1). Prints one JSON object (and writes it to `--output`): every backend's numbers, the ratios to
PyTorch, the int8 entity-F1 losses against float32, and the share of validation sentences whose float32 entities
are exactly PyTorch's.

Without `--model` the model is multilingual-e5-small with a BiLSTM + CRF head trained for `--train_steps` steps
(encoder frozen) on the KLUE v1.1 dev-train file: a random head has no accuracy for int8 to lose.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from shared_data import E5, SENTENCES, SHARED
from transformers import AutoModelForTokenClassification, AutoTokenizer

from koelectra_crf import KoElectraCrfForTokenClassification, KoElectraCrfTokenClassificationPipeline
from koelectra_crf.alignment import NerDataCollator
from koelectra_crf.analysis.speed import throughput
from koelectra_crf.data import load_klue_ner, load_klue_split, tokenize_and_align
from koelectra_crf.evaluation import evaluate_dataset
from koelectra_crf.inputs import read_texts
from koelectra_crf.loading import load_pipeline
from koelectra_crf.onnx_model import ONNX_FILE, export_onnx

TRAIN = SHARED / "data/klue-ner-v1.1/klue-ner-v1.1_dev-train.tsv"
VALIDATION = SHARED / "data/klue-ner-v1.1/klue-ner-v1.1_dev-valid.tsv"
QUANTIZED = {"onnx_fp32": None, "onnx_int8": "int8", "onnx_int8_full": "int8-full"}
BACKENDS = ("pytorch", *QUANTIZED)


def trained_e5(folder: Path, steps: int, batch_size: int = 16) -> None:
    """Save into `folder` e5-small with a fresh BiLSTM + CRF head trained `steps` steps (encoder frozen, lr 1e-3)."""
    torch.manual_seed(0)
    model = KoElectraCrfForTokenClassification.from_encoder(str(E5))
    tokenizer = AutoTokenizer.from_pretrained(E5)
    model.encoder.requires_grad_(False)
    if steps:
        rows = tokenize_and_align(load_klue_ner(train_file=TRAIN)["train"], tokenizer, model.config).shuffle(seed=0)
        collate = NerDataCollator(tokenizer.pad_token_id)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        for step in range(steps):
            start = step * batch_size % (len(rows) - batch_size)
            loss = model(**collate(rows.select(range(start, start + batch_size)).to_list())).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if step % 50 == 0:
                print(f"step {step}: loss {loss.item():.3f}", file=sys.stderr)
    KoElectraCrfTokenClassificationPipeline(model=model.eval(), tokenizer=tokenizer).save_pretrained(folder)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB. Linux: VmHWM, which starts afresh at `exec` (unlike
    `ru_maxrss`, which a child process inherits from its parent's size at the fork)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux, bytes on macOS: rough


def worker(args: argparse.Namespace) -> None:
    """One backend in this process: speed, then accuracy; prints one JSON line."""
    torch.set_num_threads(args.threads)  # onnxruntime takes torch's thread count when its session is built
    started = time.perf_counter()
    ner = load_pipeline(str(args.folder), "cpu")
    load_seconds = time.perf_counter() - started
    loaded_rss_mb = peak_rss_mb()
    sentences = read_texts(args.sentences_file, args.sentences)
    result = {
        "load_seconds": load_seconds,
        "peak_rss_after_loading_mb": loaded_rss_mb,
        "sentences_per_second": throughput(ner, sentences, args.batch_size),
    }
    metrics, predictions = evaluate_dataset(ner, load_klue_split(args.validation_file, args.validation_sentences),
                                            args.batch_size)  # fmt: skip
    result.update(entity_f1=metrics["entity_f1"], char_f1=metrics["char_f1"])
    result["peak_rss_mb"] = peak_rss_mb()
    result["spans"] = [prediction.predicted_spans for prediction in predictions]
    print(json.dumps(result))


def run_worker(backend: str, folder: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "--folder", str(folder), "--threads", str(args.threads),
               "--sentences", str(args.sentences), "--sentences_file", str(args.sentences_file),
               "--batch_size", str(args.batch_size), "--validation_file", str(args.validation_file)]  # fmt: skip
    if args.validation_sentences:
        command += ["--validation_sentences", str(args.validation_sentences)]
    print(f"{backend} ...", file=sys.stderr)
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode:
        raise RuntimeError(f"{backend} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    weights = folder / ONNX_FILE if backend != "pytorch" else folder / "model.safetensors"
    result["model_file_mb"] = weights.stat().st_size / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="saved model folder (default: e5-small, head trained a little)")
    parser.add_argument("--train_steps", type=int, default=300, help="head training steps without --model")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--sentences_file", type=Path, default=SENTENCES)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--validation_file", type=Path, default=VALIDATION)
    parser.add_argument("--validation_sentences", type=int, help="only the first N validation sentences")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="(default: torch's)")
    parser.add_argument("--work_dir", type=Path, help="keep the model and export folders here")
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    with tempfile.TemporaryDirectory() as temporary:
        work = args.work_dir or Path(temporary)
        folders = {"pytorch": args.model or work / "pytorch"}
        if args.model is None:
            trained_e5(folders["pytorch"], args.train_steps)
        model = AutoModelForTokenClassification.from_pretrained(folders["pytorch"]).eval()
        tokenizer = AutoTokenizer.from_pretrained(folders["pytorch"])
        for backend, quantize in QUANTIZED.items():
            folders[backend] = export_onnx(model, tokenizer, work / backend, quantize)
        del model
        results = {backend: run_worker(backend, folders[backend], args) for backend in BACKENDS}

    spans = {backend: results[backend].pop("spans") for backend in BACKENDS}
    pytorch = results["pytorch"]
    report = {
        "model": str(args.model or f"{E5.name} + head trained {args.train_steps} steps"),
        "sentences": args.sentences,
        "validation_sentences": len(spans["pytorch"]),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg()[0],
        "torch": torch.__version__,
        "backends": results,
        "speedup_vs_pytorch": {
            backend: results[backend]["sentences_per_second"] / pytorch["sentences_per_second"] for backend in BACKENDS
        },
        "peak_memory_vs_pytorch": {
            backend: results[backend]["peak_rss_mb"] / pytorch["peak_rss_mb"] for backend in BACKENDS
        },
        "entity_f1_loss_vs_fp32": {
            backend: results["onnx_fp32"]["entity_f1"] - results[backend]["entity_f1"] for backend in QUANTIZED
        },
        "fp32_sentences_with_pytorchs_entities": sum(
            fp32 == reference for fp32, reference in zip(spans["onnx_fp32"], spans["pytorch"], strict=True)
        )
        / len(spans["pytorch"]),
    }
    text = json.dumps(report, indent=2)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
