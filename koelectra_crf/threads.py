"""CPU threads for the training script and the command line.

Torch runs one intra-op thread per core by default. On a small CPU machine that is often wrong: a small model's
operations are too short to share between threads, and when another job keeps a core busy, the threads of every
operation wait for the one that runs on it (measured on 2 cores in docs/performance.md: the smoke training took
181 s with 2 threads next to another job, 29 s with 1). Only the entry points call [`choose_cpu_threads`];
importing the package changes nothing.
"""

import logging
import os

import torch

logger = logging.getLogger(__name__)

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
SMALL_MODEL_PARAMETERS = 1_000_000
"""Below this many parameters outside the input embeddings (a lookup, no arithmetic), one thread is as fast as
several even on an idle machine."""


def choose_cpu_threads(model: torch.nn.Module, processes: int = 1) -> int:
    """Set torch's intra-op threads for `model`, unless the user chose them with `OMP_NUM_THREADS` (or
    `MKL_NUM_THREADS`); return the number of threads in use.

    One thread for a small model; otherwise one per core that other jobs leave free (the cores available to this
    process minus the 1-minute load average), shared by the `processes` of a distributed run, at most torch's
    default.
    """
    if any(os.environ.get(name) for name in THREAD_VARIABLES):
        return torch.get_num_threads()
    embeddings = model.get_input_embeddings().weight.numel()
    if sum(p.numel() for p in model.parameters()) - embeddings < SMALL_MODEL_PARAMETERS:
        threads = 1
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        free = cores - round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else cores
        threads = max(1, min(torch.get_num_threads(), free // processes))
    torch.set_num_threads(threads)
    logger.info("using %d CPU thread(s); set OMP_NUM_THREADS to choose", threads)
    return threads
