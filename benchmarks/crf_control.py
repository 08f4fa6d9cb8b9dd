"""Cost of the CRF's inference-time controls against plain Viterbi, on the CPU: the k best analyses with their
probabilities (``EmissionTagger.k_best``) and decoding under constraints (allowed tags per position), each over
``EmissionTagger.decode``.

KLUE's 13 BIO tags with their constraints, random CRF scores and emissions, batches of ``--batch_size`` sequences of
each length in ``--lengths``. The constrained case forces one entity of 6 positions and forbids entities on another 10
in every row (the pipeline's `constraints`). Timings are medians over ``--repeats`` rounds after a warm-up, all
variants interleaved in each round so that they see the same machine load; ratios are the medians of the per-round
ratios over plain Viterbi. One thread by default: on a machine whose cores are busy, two OpenMP threads make each
`max` over a (B, K, K) step wait for the other (10 ms instead of 0.03 ms here), which would time the machine's load,
not the algorithms. Prints one JSON object.

    python benchmarks/crf_control.py
    python benchmarks/crf_control.py --lengths 64 128 512 --batch_size 1 --repeats 30
"""

import argparse
import json
import platform
import statistics
import time

import torch

from koelectra_crf import KLUE_LABELS
from koelectra_crf.crf import LinearChainCRF, bio_constraints
from koelectra_crf.tagger import EmissionTagger


def constraints(length: int, batch_size: int) -> torch.Tensor:
    """Allowed tags (B, T, K): B-OG I-OG*5 at positions 4..9 (no I-OG at 10), only O at the last 10 positions."""
    allowed = torch.ones(batch_size, length, len(KLUE_LABELS), dtype=torch.bool)
    names = list(KLUE_LABELS)
    allowed[:, 4] = torch.tensor([name == "B-OG" for name in names])
    allowed[:, 5:10] = torch.tensor([name == "I-OG" for name in names])
    allowed[:, 10, names.index("I-OG")] = False
    allowed[:, -10:] = torch.tensor([name == "O" for name in names])
    return allowed


def decode_and_probability(tagger: EmissionTagger, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plain Viterbi and the probability of its path (what `return_sequence_probability=True` computes)."""
    return tagger.sequence_probability(emissions, tagger.decode(emissions, mask), mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, see the docstring)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    crf = LinearChainCRF(len(KLUE_LABELS), *bio_constraints(KLUE_LABELS), implementation="sequential")
    with torch.no_grad():
        for parameter in crf.parameters():
            parameter.normal_(0.0, 1.0)
    tagger = EmissionTagger(crf)
    results = {}
    for length in args.lengths:
        emissions = torch.randn(args.batch_size, length, len(KLUE_LABELS)) * 3
        mask = torch.ones(args.batch_size, length, dtype=torch.bool)
        allowed = constraints(length, args.batch_size)
        variants = {  # name: (method, arguments)
            "viterbi": (tagger.decode, (emissions, mask)),
            "viterbi_and_probability": (decode_and_probability, (tagger, emissions, mask)),
            "k_best_1": (tagger.k_best, (emissions, mask, 1)),
            f"k_best_{args.k}": (tagger.k_best, (emissions, mask, args.k)),
            "constrained_viterbi": (tagger.decode, (emissions, mask, allowed)),
            "constrained_k_best_1": (tagger.k_best, (emissions, mask, 1, allowed)),
            f"constrained_k_best_{args.k}": (tagger.k_best, (emissions, mask, args.k, allowed)),
        }
        assert torch.equal(tagger.k_best(emissions, mask, 1)[0][:, 0], tagger.decode(emissions, mask))
        times = {name: [] for name in variants}
        for round_ in range(args.repeats + 1):
            for name, (method, arguments) in variants.items():
                start = time.perf_counter()
                method(*arguments)
                if round_:  # the first round is the warm-up
                    times[name].append(time.perf_counter() - start)
        results[str(length)] = {
            "median_ms": {name: round(statistics.median(t) * 1e3, 3) for name, t in times.items()},
            "ratio_over_viterbi": {
                name: round(statistics.median(a / b for a, b in zip(t, times["viterbi"], strict=True)), 2)
                for name, t in times.items()
                if name != "viterbi"
            },
        }
    print(json.dumps({
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "python": platform.python_version(), "batch_size": args.batch_size, "k": args.k, "tags": len(KLUE_LABELS),
        "repeats": args.repeats, "lengths": results,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
