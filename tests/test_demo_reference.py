"""The demo's reference numbers: the spread, the lines `rlrt demo` prints beside them, the resumable
spread study, and the README's demo table being the reference's own numbers."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from rlrt.reports import demo_spread
from rlrt.reports.demo_reference import REFERENCE_FILE, comparison_lines, spread

REPO = Path(__file__).resolve().parents[1]


def run(capability, seed, complete, no_image):
    return {
        "cpu_capability": capability,
        "seed": seed,
        "metrics": {
            "complete": {"f1_macro": complete, "f1_micro": complete + 0.01, "cca_corr": 0.9},
            "missing_image": {"f1_macro": no_image, "f1_micro": 0.5, "cca_corr": None},
            "missing_text": {"f1_macro": 0.5, "f1_micro": 0.6, "cca_corr": None},
        },
    }


RUNS = [
    run("AVX512", 0, 0.8204, 0.41),
    run("AVX512", 1, 0.8100, 0.40),
    run("AVX2", 0, 0.8133, 0.39),
]


def test_spread_is_numpy_mean_sample_std_min_and_max():
    found = spread(RUNS, "complete", "f1_macro")
    values = np.array([0.8204, 0.81, 0.8133])
    assert found["mean"] == pytest.approx(values.mean())
    assert found["std"] == pytest.approx(values.std(ddof=1))
    assert (found["min"], found["max"], found["n"]) == (0.81, 0.8204, 3)
    assert spread(RUNS, "missing_image", "cca_corr") is None  # no value anywhere


def test_the_demo_prints_its_run_beside_the_same_seed_and_kernels_and_the_range():
    rows = {name: dict(r) for name, r in RUNS[2]["metrics"].items()}
    lines = comparison_lines(rows, {"runs": RUNS}, seed=0, capability="AVX2")
    assert lines[0].startswith(f"Reference ({REFERENCE_FILE}, 3 runs: seeds 0-1 on AVX2 and AVX512")
    assert (
        "complete: F1-macro 81.33; reference for this seed and kernels 81.33 (the same)" in lines[1]
    )
    assert "all reference runs 81.00-82.04" in lines[1]
    assert "reference for this seed and kernels 39.00 (the same)" in lines[2]
    rows["complete"]["f1_macro"] = 0.8000
    again = comparison_lines(rows, {"runs": RUNS}, seed=0, capability="AVX2")
    assert "reference for this seed and kernels 81.33 (differs)" in again[1]
    unseen = comparison_lines(rows, {"runs": RUNS}, seed=7, capability="AVX2")
    assert unseen[-1] == "  no reference run has seed 7 on AVX2 kernels"
    assert "reference for this seed" not in unseen[1]


def test_an_unseeded_run_is_compared_with_the_range_only():
    rows = {name: dict(r) for name, r in RUNS[0]["metrics"].items()}
    lines = comparison_lines(rows, {"runs": RUNS}, seed=False, capability="AVX512")
    assert lines[-1] == "  no reference run has seed False on AVX512 kernels"
    assert not any("reference for this seed" in line for line in lines)
    assert comparison_lines(rows, {"runs": []}, seed=0, capability="AVX512") == []


def test_a_finished_run_is_read_back_not_run_again(tmp_path, monkeypatch):
    folder = tmp_path / "AVX2" / "seed3"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(RUNS[2]["metrics"]))
    (folder / "metrics_runs.json").write_text(json.dumps({"cpu_capability": "AVX2", "seed": 3}))

    def no_run(*args, **kwargs):
        raise AssertionError("ran a finished run again")

    monkeypatch.setattr(demo_spread.subprocess, "run", no_run)
    found = demo_spread.run_one("AVX2", 3, tmp_path)
    assert found == {**RUNS[2], "seed": 3, "kernels": "AVX2"}


def test_a_run_cut_between_its_two_files_is_run_again(tmp_path, monkeypatch):
    folder = tmp_path / "native" / "seed0"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"stale": {}}))  # metrics_runs.json missing
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        (folder / "metrics.json").write_text(json.dumps(RUNS[0]["metrics"]))
        (folder / "metrics_runs.json").write_text(json.dumps({"cpu_capability": "AVX512"}))
        return demo_spread.subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(demo_spread.subprocess, "run", fake_run)
    found = demo_spread.run_one("native", 0, tmp_path)
    assert len(commands) == 1 and "--seed_everything=0" in commands[0]
    assert found["metrics"] == RUNS[0]["metrics"]


def test_the_summary_table_holds_every_run_and_the_spread():
    table = demo_spread.summary_table(RUNS).splitlines()
    assert len(table) == 2 + len(RUNS) + 2
    assert re.search(
        r"\| AVX2 +\| 0 +\| 81.33 +\| 39.00 +\| 50.00 +\| 82.33 +\| 90.00 +\|", table[4]
    )
    assert "81.46 ± 0.53" in table[5] and "81.00-82.04" in table[6]


def test_the_readme_demo_table_is_the_reference_run_of_seed_0_on_avx512():
    reference = json.loads((REPO / REFERENCE_FILE).read_text())
    published = next(r for r in reference["runs"] if r["seed"] == 0 and r["kernels"] == "native")
    readme = (REPO / "README.md").read_text()
    names = {
        "complete": "complete",
        "missing_image": "every image missing",
        "missing_text": "every text missing",
    }
    for setting, label in names.items():
        row = re.search(rf"^\| {label} \|([^\n]*)\|$", readme, re.MULTILINE)
        assert row, f"README has no demo row {label!r}"
        cells = [c.strip() for c in row.group(1).split("|")]
        metrics = published["metrics"][setting]
        assert cells[0] == f"{100 * metrics['f1_macro']:.1f}", setting
        assert cells[1] == f"{100 * metrics['f1_micro']:.1f}", setting
