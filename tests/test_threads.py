"""CPU threads: chosen by the entry points for the model and the machine, never by importing the package."""

import json
import sys

import pytest
import torch
from processes import run_command
from tiny import character_tokenizer, tiny_model

from koelectra_crf import threads


@pytest.fixture
def model(tmp_path):
    return tiny_model(character_tokenizer(tmp_path).vocab_size)


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    for name in threads.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_small_model_gets_one_thread(model):
    torch.set_num_threads(2)
    assert threads.choose_cpu_threads(model) == 1 == torch.get_num_threads()


@pytest.mark.parametrize(("load", "processes", "expected"), [(0.1, 1, 2), (1.2, 1, 1), (0.0, 2, 1), (5.0, 1, 1)])
def test_a_larger_model_gets_the_cores_other_jobs_leave_free(model, monkeypatch, load, processes, expected):
    monkeypatch.setattr(threads, "SMALL_MODEL_PARAMETERS", 0)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load), raising=False)
    torch.set_num_threads(2)  # torch's default on a 2-core machine
    assert threads.choose_cpu_threads(model, processes) == expected == torch.get_num_threads()


def test_the_users_choice_is_kept(model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert threads.choose_cpu_threads(model) == 2 == torch.get_num_threads()


IMPORT_CHECK = """
import json, torch
torch.set_num_threads(2)
import koelectra_crf, koelectra_crf.cli, koelectra_crf.train, hub_card.render
print(json.dumps(torch.get_num_threads()))
"""


def test_importing_the_package_leaves_threads_alone():
    completed = run_command([sys.executable, "-c", IMPORT_CHECK], timeout=300)
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == 2
