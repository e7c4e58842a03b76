"""The input-pipeline benchmark runs end to end on a tiny folder and writes its JSON."""

from __future__ import annotations

import json

from data_modules.bench import run_bench


def test_bench_writes_rates(tmp_path):
    out = tmp_path / "results" / "bench_data.json"
    args = ["--images", "10", "--poster-size", "50x75", "--image-size", "32", "--batch-size", "4"]
    args += ["--workers", "0", "--repeats", "1", "--data-dir", str(tmp_path / "posters")]
    run_bench([*args, "--output", str(out)])
    result = json.loads(out.read_text())
    (run,) = result["runs"]
    assert run["num_workers"] == 0
    assert run["images_per_pass"] == 10 - 6 % 4  # the training loader drops its ragged batch
    assert run["images_per_s"] > 0 and run["cold_images_per_s"] > 0
    assert result["poster_size"] == [50, 75] and result["machine"]["cpu_count"] >= 1
    assert set(result["decode_images_per_s"]) == {"draft", "no_draft"}
    run_bench([*args, "--output", str(out)])  # a second run reuses the written posters
    assert len(list((tmp_path / "posters" / "dataset").glob("*.jpeg"))) == 10
