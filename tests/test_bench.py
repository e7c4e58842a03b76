"""`rlrt bench`: what it computes, and the shape of what it writes (never how fast anything is)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from rlrt.commands.bench import run_bench, to_markdown
from rlrt.commands.bench_timing import EpochTimer, fill_random_rows

ROOT = Path(__file__).resolve().parents[1]
ISSUE_KEYS = {
    "encoder_samples_per_s",
    "cache_build_samples_per_s",
    "train_online_samples_per_s",
    "train_cached_samples_per_s",
    "epoch_speedup_cached",
    "data_wait_fraction",
    "peak_rss_mb",
    "trainable_params",
    "frozen_params",
    "epoch_seconds_cached_by_n",
}


def test_random_fill_covers_every_row_whatever_the_chunking(tmp_path):
    rng = np.random.default_rng(0)
    # 1 MB chunks: the first array fits in one, the second (1 MB per float32 row) takes 40.
    for name, shape in (("small", (1000, 3, 7)), ("large", (40, 256, 1024))):
        array = np.lib.format.open_memmap(
            tmp_path / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape
        )
        fill_random_rows(array, rng, chunk_mb=1)
        values = np.asarray(array, dtype=np.float32)
        assert (values != 0).any(axis=(1, 2)).all()  # no row left unfilled
        assert abs(values.mean()) < 0.05 and abs(values.std() - 1) < 0.05


def test_wait_fraction_counts_only_the_epochs_after_the_first():
    timer = EpochTimer()
    timer.waits, timer.steps = [5.0, 1.0, 3.0], [5.0, 9.0, 7.0]
    assert timer.wait_fraction(skip=1) == pytest.approx(4.0 / 20.0)
    assert timer.wait_fraction(skip=0) == pytest.approx(9.0 / 30.0)


def test_markdown_states_each_target_against_its_measurement():
    size = {
        "encoder_samples_per_s": 20.0,
        "cache_build_samples_per_s": 16.0,
        "train_online_samples_per_s": 20.0,
        "train_cached_samples_per_s": 3000.0,
        "epoch_speedup_cached": 150.0,
        "data_wait_fraction": 0.05,
        "fit_online_startup_seconds": 4.0,
        "fit_cached_startup_seconds": 2.5,
        "fit_cached_loads_weights": False,
        "peak_rss_mb": 1000.0,
        "peak_rss_mb_with_scaling": 1500.0,
        "trainable_params": 10,
        "frozen_params": 20,
        "epoch_seconds_cached_by_n": {"1000": 0.3, "4000": 1.2},
    }
    text = to_markdown({"machine": {"cpu_count": 2}, "sizes": {"base": size}})
    assert "| cached epoch at 4000 samples (s) | 1.20 |" in re.sub(r" {2,}", " ", text)
    assert "measured 150.0x" in text and "measured 5.0%" in text
    assert "measured 1.25x" in text  # 20 / 16: the build's time over the bare pass's


@pytest.mark.slow  # every bench stage end to end (make test-all, CI)
def test_bench_writes_the_issue_shape_and_cleans_its_scratch(tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the measuring child's temporary folders
    output = tmp_path / "results"
    run_bench(
        [
            "--sizes=tiny",
            "--samples=48",
            "--scaling=64,128",
            f"--configs={ROOT / 'configs'}",
            f"--output={output}",
        ]
    )
    results = json.loads((output / "bench.json").read_text())
    assert set(results) == {"machine", "sizes"} and list(results["sizes"]) == ["tiny"]
    tiny = results["sizes"]["tiny"]
    assert ISSUE_KEYS <= set(tiny)
    assert set(tiny["epoch_seconds_cached_by_n"]) == {"64", "128"}
    rates = [tiny[k] for k in ISSUE_KEYS if k.endswith("per_s")]
    assert all(rate > 0 for rate in rates)
    assert 0 <= tiny["data_wait_fraction"] < 1
    assert tiny["epoch_speedup_cached"] == pytest.approx(
        tiny["train_cached_samples_per_s"] / tiny["train_online_samples_per_s"]
    )
    assert tiny["trainable_params"] > 0 and tiny["frozen_params"] > 0
    assert tiny["fit_cached_loads_weights"] is False  # the cached fit never read the weights
    assert tiny["fit_online_startup_seconds"] > 0 and tiny["fit_cached_startup_seconds"] > 0
    markdown = (output / "bench.md").read_text()
    assert markdown.index("at 64 samples") < markdown.index("at 128 samples")  # by size
    assert list(scratch.glob("rlrt-bench-*")) == []
