"""The main process's torch threads: the CPUs available minus one per loader worker, unless the
user chose (`--threads`, `OMP_NUM_THREADS`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rlrt.engine.threads as threads
from rlrt.engine.lightning_cli import parse_only

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = [
    "--config",
    str(CONFIGS / "data" / "demo.yaml"),
    "--config",
    str(CONFIGS / "model" / "demo.yaml"),
]


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cpus", "workers", "expected"), [(2, 0, 2), (2, 1, 1), (2, 4, 1), (16, 4, 12), (1, 0, 1)]
)
def test_default_threads_leave_one_cpu_per_worker(cpus, workers, expected):
    assert threads.default_threads(workers, cpus=cpus) == expected


def test_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.choose_threads(None, 0) is None  # the environment's value is kept
    assert threads.choose_threads(5, 0) == 5
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(threads, "available_cpus", lambda: 6)
    assert threads.choose_threads(None, 2) == 4
    with pytest.raises(ValueError, match="--threads must be at least 1"):
        threads.choose_threads(0, 0)


def test_the_cli_sets_the_threads_from_the_data_workers(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 5)
    parse_only([*DEMO, "--data.init_args.num_workers=2"])
    assert torch.get_num_threads() == 3
    parse_only([*DEMO, "--threads=2"])
    assert torch.get_num_threads() == 2


def test_the_cli_keeps_omp_num_threads(monkeypatch, restore_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    torch.set_num_threads(1)
    parse_only(DEMO)
    assert torch.get_num_threads() == 1
