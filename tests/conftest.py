"""Shared fixtures: the read-only data beside the project (../shared) and tiny random encoders."""

import os
from pathlib import Path

# Everything the tests load is local: never wait on the Hub (this environment has no route to it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# The tests run tiny models: one thread each. On a busy 2-core machine two OpenMP threads wait on each other and a
# step that takes milliseconds alone can take seconds.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(relative: str) -> Path:
    """Path of a file in ../shared; skips the test when it is missing, except in CI where it must exist."""
    path = SHARED / relative
    if not path.exists():
        if os.environ.get("CI") == "true":
            raise FileNotFoundError(f"{path} is required in CI")
        pytest.skip(f"{path} not available on this machine")
    return path


@pytest.fixture
def klue_valid_file() -> Path:
    return shared_path("data/klue-ner-v1.1/klue-ner-v1.1_dev-valid.tsv")


@pytest.fixture
def klue_train_file() -> Path:
    return shared_path("data/klue-ner-v1.1/klue-ner-v1.1_dev-train.tsv")
