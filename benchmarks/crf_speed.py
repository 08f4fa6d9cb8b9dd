"""Speed and agreement of ``koelectra_crf.crf.LinearChainCRF`` against pytorch-crf 0.7.2.

Both CRFs get the same parameters (pytorch-crf's, copied), the same random emissions and the same random
ragged left-aligned masks (lengths uniform in [T/2, T]; pytorch-crf needs the first position on). Timings are
the median over ``--repeats`` runs after a warm-up, ours and pytorch-crf's interleaved so that both see the
same machine load, with ``torch.cuda.synchronize()`` around each run on a GPU; speedups are the median of the
per-round ratios. With ``--compare_with REV``, crf.py as it is at git revision REV runs in the same rounds too, and
each of our times is reported over its. Prints one JSON object.

    python benchmarks/crf_speed.py                 # GPU when available, else CPU
    python benchmarks/crf_speed.py --device cpu --lengths 128 512 --repeats 20
    python benchmarks/crf_speed.py --compare_with main
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torchcrf import CRF

ROOT = Path(__file__).resolve().parents[1]


def load_crf(path: Path, name: str = "crf"):
    """crf.py is standalone (torch only, shipped as remote code): load it without importing the package, and so
    without transformers."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_crf_at(revision: str):
    """crf.py as it is at git ``revision``."""
    source = subprocess.run(["git", "show", f"{revision}:koelectra_crf/crf.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as file:
        file.write(source)
    return load_crf(Path(file.name), "crf_baseline")


LinearChainCRF = load_crf(ROOT / "koelectra_crf" / "crf.py").LinearChainCRF


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    functions: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, list[float]]:
    """Milliseconds of each function per round: all run in turn, ``repeats`` rounds after 3 warm-up rounds."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for round_index in range(3 + repeats):
        for name, function in functions.items():
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            if round_index >= 3:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def median_ratio(times: dict[str, list[float]], numerator: str, denominator: str) -> float:
    """Median over rounds of one time over another, both measured in the same round: more robust than a ratio
    of medians when the machine's load changes during the run."""
    return statistics.median(n / d for n, d in zip(times[numerator], times[denominator], strict=True))


def path_score(reference: CRF, emissions: torch.Tensor, path: list[int]) -> float:
    """Exact (float64) score of one tag path: start + emissions + transitions + end."""
    tags = torch.tensor(path, device=emissions.device)
    start, transitions, end = (p.detach().double() for p in (reference.start_transitions, reference.transitions,
                                                             reference.end_transitions))  # fmt: skip
    row = emissions[: len(path)].detach().double()
    score = start[tags[0]] + row[torch.arange(len(path)), tags].sum() + transitions[tags[:-1], tags[1:]].sum()
    return (score + end[tags[-1]]).item()


def implementations_agree(ours, ours_other, reference, emissions, tags, mask) -> dict:
    """How far our two implementations are from pytorch-crf on one batch: log-likelihoods (relative), emission
    gradients, and Viterbi paths (where they differ, the gap between the two paths' exact float64 scores, which
    float32 rounding alone should explain). `OTHER` in a key stands for the other implementation's name."""
    with torch.no_grad():
        ll_ours = ours.log_likelihood(emissions, tags, mask).double()
        ll_reference = reference(emissions, tags, mask, reduction="none").double()
        ll_other = ours_other.log_likelihood(emissions, tags, mask).double()
        paths_ours = ours.decode(emissions, mask).tolist()
        paths_reference = reference.decode(emissions, mask)
    gradients = []
    for crf in (ours, reference):
        loss = crf(emissions, tags, mask).sum() if crf is reference else crf.log_likelihood(emissions, tags, mask).sum()
        gradients.append(torch.autograd.grad(loss, emissions)[0])
    relative = ((ll_ours - ll_reference).abs() / ll_reference.abs()).max().item()
    relative_other = ((ll_other - ll_reference).abs() / ll_reference.abs()).max().item()
    differing = [b for b, row in enumerate(paths_reference) if paths_ours[b][: len(row)] != row]
    score_gaps = [
        path_score(reference, emissions[b], paths_reference[b]) - path_score(reference, emissions[b], paths_ours[b])
        for b in differing
    ]
    return {
        "ll_max_relative_difference": relative,
        "ll_max_relative_difference_OTHER_implementation": relative_other,
        "ll_equal_within_1e-4": relative <= 1e-4 and relative_other <= 1e-4,
        "emission_gradient_max_abs_difference": (gradients[0] - gradients[1]).abs().max().item(),
        "decode_paths_identical": not differing,
        "decode_rows_differing": len(differing),
        "decode_differing_rows_max_exact_score_gap": max(score_gaps, default=0.0),
    }


def baseline_agrees(baseline, ours, emissions, tags, mask, rounds: dict[str, list[float]]) -> dict:
    """The `--compare_with` revision's CRF against ours: its times, our times over its, and its outputs' distance
    from ours."""
    with torch.no_grad():
        same = torch.equal(baseline.decode(emissions, mask), ours.decode(emissions, mask))
        ll_difference = baseline.log_likelihood(emissions, tags, mask) - ours.log_likelihood(emissions, tags, mask)
        marginals_difference = (baseline.marginals(emissions, mask) - ours.marginals(emissions, mask)).abs().max()
    names = ("ll", "decode", "marginals")
    return {
        "baseline_ms": {name: statistics.median(rounds[f"{name}_baseline"]) for name in names},
        "ours_over_baseline": {name: median_ratio(rounds, f"{name}_ours", f"{name}_baseline") for name in names},
        "baseline_decode_paths_identical": same,
        "baseline_ll_max_abs_difference": ll_difference.abs().max().item(),
        "baseline_marginals_max_abs_difference": marginals_difference.item(),
    }


def bench_length(length: int, args: argparse.Namespace, device: torch.device, baseline_module=None) -> dict:
    generator = torch.Generator().manual_seed(length)
    batch, num_tags = args.batch, args.num_tags
    reference = CRF(num_tags, batch_first=True).to(device)
    ours = LinearChainCRF(num_tags).to(device)
    ours.load_state_dict(reference.state_dict())  # same names, same transitions[from, to] convention
    other = "sequential" if ours._algorithms(device).name == "parallel" else "parallel"
    ours_other = LinearChainCRF(num_tags, implementation=other).to(device)
    ours_other.load_state_dict(reference.state_dict())

    emissions = torch.randn(batch, length, num_tags, generator=generator).to(device).requires_grad_()
    tags = torch.randint(num_tags, (batch, length), generator=generator).to(device)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator).clamp(min=1)
    mask = (torch.arange(length) < lengths[:, None]).to(device)

    agreement = implementations_agree(ours, ours_other, reference, emissions, tags, mask)

    def backward(loss: torch.Tensor) -> None:
        loss.backward()
        emissions.grad = None

    def no_grad(function: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return function()

        return run

    functions = {
        "ll_ours": lambda: backward(ours.log_likelihood(emissions, tags, mask).sum()),
        "ll_reference": lambda: backward(reference(emissions, tags, mask, reduction="sum")),
        "ll_forward_ours": no_grad(lambda: ours.log_likelihood(emissions, tags, mask)),
        "decode_ours": lambda: ours.decode(emissions, mask),
        "decode_reference": no_grad(lambda: reference.decode(emissions, mask)),
        "marginals_ours": no_grad(lambda: ours.marginals(emissions, mask)),
    }
    if baseline_module is not None:
        baseline = baseline_module.LinearChainCRF(num_tags).to(device)
        baseline.load_state_dict(reference.state_dict())
        functions.update({
            "ll_baseline": lambda: backward(baseline.log_likelihood(emissions, tags, mask).sum()),
            "decode_baseline": lambda: baseline.decode(emissions, mask),
            "marginals_baseline": no_grad(lambda: baseline.marginals(emissions, mask)),
        })  # fmt: skip
    rounds = time_interleaved(functions, device, args.repeats)
    # The other implementation, only to show that "auto" picks the faster one here; fewer rounds (slow on CPU).
    rounds.update(
        time_interleaved(
            {
                "ll_other": lambda: backward(ours_other.log_likelihood(emissions, tags, mask).sum()),
                "decode_other": lambda: ours_other.decode(emissions, mask),
            },
            device,
            max(3, args.repeats // 4),
        )
    )
    times = {name: statistics.median(values) for name, values in rounds.items()}
    compared = {} if baseline_module is None else baseline_agrees(baseline, ours, emissions, tags, mask, rounds)
    return {
        "ll_fwd_bwd_ms": {"ours": times["ll_ours"], "pytorch_crf": times["ll_reference"]},
        "ll_fwd_bwd_speedup": median_ratio(rounds, "ll_reference", "ll_ours"),
        f"ll_fwd_bwd_ms_{other}_implementation": times["ll_other"],
        "decode_ms": {"ours": times["decode_ours"], "pytorch_crf": times["decode_reference"]},
        "decode_speedup": median_ratio(rounds, "decode_reference", "decode_ours"),
        f"decode_ms_{other}_implementation": times["decode_other"],
        "ll_forward_no_grad_ms_ours": times["ll_forward_ours"],
        "marginals_no_grad_ms_ours": times["marginals_ours"],
        "marginals_over_ll_forward": median_ratio(rounds, "marginals_ours", "ll_forward_ours"),
        **{name.replace("OTHER", other): value for name, value in agreement.items()},
        **compared,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--num_tags", type=int, default=13)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--compare_with", metavar="REV", help="also time crf.py at this git revision (e.g. main)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    ours = LinearChainCRF(args.num_tags)
    baseline = load_crf_at(args.compare_with) if args.compare_with else None
    report = {
        "device": f"{device.type}: {name}",
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pytorch_crf": __import__("torchcrf").__version__,
        "batch": args.batch,
        "num_tags": args.num_tags,
        "repeats": args.repeats,
        "implementation": ours._algorithms(device).name,
        "compared_with": args.compare_with,
        "lengths": {str(length): bench_length(length, args, device, baseline) for length in args.lengths},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
