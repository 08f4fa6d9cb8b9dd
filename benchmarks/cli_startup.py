"""How long the `koelectra-crf` command takes to start: its help, against importing torch and transformers.

    python benchmarks/cli_startup.py                       # this checkout
    python benchmarks/cli_startup.py --compare_with main~5 # and the package as it was at a git revision

Each round runs, in a fresh interpreter each and in turn, `python -m koelectra_crf --help`,
`python -m koelectra_crf predict --help` and the peer `python -c "import torch, transformers"` (with
`--compare_with`, also the two help commands of the revision, checked out in a temporary worktree and put first on
`PYTHONPATH`; every command runs in an empty folder, so that `-m` does not find the checkout by the current
folder). Prints one JSON object: the median seconds of each command over `--repeats` rounds, and each median as
a ratio to the peer's (these machines are noisy: compare the ratios, measured in the same run).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER = "import torch, transformers"


def seconds(command: list[str], env: dict[str, str], cwd: str) -> float:
    """Wall-clock seconds of one run of `command` in `cwd` to its end (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env, cwd=cwd)
    return time.perf_counter() - start


def help_commands(label: str) -> dict[str, list[str]]:
    return {
        f"{label}koelectra-crf --help": [sys.executable, "-m", "koelectra_crf", "--help"],
        f"{label}koelectra-crf predict --help": [sys.executable, "-m", "koelectra_crf", "predict", "--help"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compare_with", help="a git revision of this repository to time as well")
    args = parser.parse_args()

    here = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = {name: (command, here) for name, command in help_commands("").items()}
    runs[PEER] = ([sys.executable, "-c", PEER], here)
    with tempfile.TemporaryDirectory() as temporary:
        if args.compare_with:
            worktree = Path(temporary, "revision")
            subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", worktree, args.compare_with],
                           check=True, capture_output=True)  # fmt: skip
            then = dict(os.environ, PYTHONPATH=str(worktree))
            runs |= {name: (command, then) for name, command in help_commands(f"{args.compare_with}: ").items()}
        try:
            for command, env in runs.values():  # warm the file cache once
                seconds(command, env, temporary)
            timings = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, (command, env) in runs.items():
                    timings[name].append(seconds(command, env, temporary))
        finally:
            if args.compare_with:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", worktree], check=True)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    ratios = {name: round(value / medians[PEER], 3) for name, value in medians.items()}
    print(json.dumps({
        "repeats": args.repeats,
        "median_seconds": {name: round(value, 3) for name, value in medians.items()},
        "ratio_to_import_torch_transformers": ratios,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
