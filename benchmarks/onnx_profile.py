"""Where the time of the network goes, PyTorch against an ONNX export, on the same padded batches.

    python benchmarks/onnx_profile.py --model outputs/study-character --onnx outputs/study-character-onnx --threads 2

The pipeline over the export (`onnx_model.load_onnx_pipeline`) tags `--sentences` sentences of
klue-ner-train-sentences.tsv at `--batch_size`, and the window batches it feeds the graph are kept; then the same
batches run through the PyTorch model (`torch.profiler`, time per aten operator, self time) and through the graph
(onnxruntime's profiler, kernel time per operator type), one thread count for both. PyTorch's side includes the
model's Viterbi decoding (a few small operators), which the ONNX pipeline runs outside the graph. Prints one JSON
object: each
side's total and its ten costliest operators in seconds, and the time of the matrix products (PyTorch's `addmm`,
`mm`, `bmm`, `matmul`; onnxruntime's `MatMul`, `Gemm`, `FusedMatMul` and their integer forms) on each side.
"""

import argparse
import collections
import json
import os
from pathlib import Path

import torch
from shared_data import SENTENCES
from transformers import AutoModelForTokenClassification

from koelectra_crf.inputs import read_texts
from koelectra_crf.onnx_model import ONNX_FILE, load_onnx_pipeline

TORCH_PRODUCTS = {"aten::addmm", "aten::mm", "aten::bmm", "aten::matmul"}
ONNX_PRODUCTS = {"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}


def captured_batches(folder: Path, sentences: list[str], batch_size: int) -> list[dict]:
    """The inputs the pipeline gives the ONNX graph for `sentences` (numpy arrays by input name), in order."""
    ner = load_onnx_pipeline(folder)
    batches = []
    run = ner.model.session.run

    def keep(names, feed, *args):
        batches.append(feed)
        return run(names, feed, *args)

    ner.model.session.run = keep
    ner(sentences, batch_size=batch_size)
    return batches


def top(seconds: dict[str, float], products: set[str]) -> dict:
    ranked = sorted(seconds.items(), key=lambda item: -item[1])
    return {
        "total_s": sum(seconds.values()),
        "matrix_products_s": sum(value for name, value in seconds.items() if name in products),
        "top_ops_s": dict(ranked[:10]),
    }


def profile_pytorch(model_folder: Path, batches: list[dict]) -> dict[str, float]:
    model = AutoModelForTokenClassification.from_pretrained(model_folder).eval()
    with torch.inference_mode():
        run = [{name: torch.from_numpy(value) for name, value in feed.items()} for feed in batches]
        model(**run[0])  # warm-up
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            for inputs in run:
                model(**inputs)
    return {event.key: event.self_cpu_time_total / 1e6 for event in profiler.key_averages()}


def profile_onnx(folder: Path, batches: list[dict], threads: int) -> dict[str, float]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    session = onnxruntime.InferenceSession(folder / ONNX_FILE, options, providers=["CPUExecutionProvider"])
    for feed in batches:  # kernel times only: the first run's allocations are not in them
        session.run(["logits"], feed)
    return _kernel_seconds(session.end_profiling())


def _kernel_seconds(trace_file: str) -> dict[str, float]:
    seconds = collections.Counter()
    with open(trace_file) as f:
        for event in json.load(f):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                seconds[event["args"]["op_name"]] += event["dur"] / 1e6
    os.remove(trace_file)
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="saved PyTorch model folder")
    parser.add_argument("--onnx", type=Path, required=True, help="its export folder (koelectra-crf export)")
    parser.add_argument("--sentences", type=int, default=320)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="(default: torch's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = captured_batches(args.onnx, read_texts(SENTENCES, args.sentences), args.batch_size)
    pytorch = top(profile_pytorch(args.model, batches), TORCH_PRODUCTS)
    onnx = top(profile_onnx(args.onnx, batches, args.threads), ONNX_PRODUCTS)
    report = {
        "sentences": args.sentences,
        "batches": len(batches),
        "threads": args.threads,
        "pytorch": pytorch,
        "onnx": onnx,
        "onnx_vs_pytorch_total": pytorch["total_s"] / onnx["total_s"],
        "onnx_vs_pytorch_matrix_products": pytorch["matrix_products_s"] / onnx["matrix_products_s"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
