"""`rlrt reproduce-table1`: input checks before anything runs, and the smoke pipeline's files."""

import re

import pandas as pd
import pytest

from rlrt.cli import main
from rlrt.reports.published import PUBLISHED_TABLE1
from tests.test_cli import CONFIGS

VARIABLES = ("MMIMDB_ROOT", "FOOD101_ROOT", "SNLIVE_ROOT", "CLIP_PRETRAINED", "TEXT_MODEL")


@pytest.fixture()
def clean_env(monkeypatch, tmp_path):
    for name in (*VARIABLES, "SMOKE", "SEEDS", "TABLE1_DATASETS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_missing_variables_are_all_named_and_nothing_runs(clean_env, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce-table1", "--configs", str(CONFIGS)])
    message = str(exit_info.value)
    assert "nothing was run" in message
    for name in VARIABLES:
        assert f"{name} is not set" in message
    assert "split.json" in message and "config.json" in message  # says what to provide
    assert not (clean_env / "runs").exists() and not (clean_env / "results").exists()


def test_unusable_data_stops_before_training(clean_env, monkeypatch, tiny_llama_dir):
    empty = clean_env / "mmimdb"
    empty.mkdir()
    monkeypatch.setenv("MMIMDB_ROOT", str(empty))
    monkeypatch.setenv("CLIP_PRETRAINED", "openai")
    monkeypatch.setenv("TEXT_MODEL", str(tiny_llama_dir))
    monkeypatch.setenv("TABLE1_DATASETS", "mmimdb")
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce-table1", "--configs", str(CONFIGS)])
    message = str(exit_info.value)
    assert "nothing was trained" in message and "split.json" in message
    assert not (clean_env / "runs").exists()


def check_outputs(folder, datasets, seeds):
    runs = pd.read_csv(folder / "work" / "table1_runs.csv")
    metrics = {"mmimdb": 2, "food101": 1, "snli_ve": 1}
    assert len(runs) == len(seeds) * 4 * sum(metrics[d] for d in datasets)
    assert set(runs["seed"]) == set(seeds) and set(runs["dataset"]) == set(datasets)
    table = pd.read_csv(folder / "out" / "table1.csv")
    ours = table[table["system"] == "RLRT (ours, this run)"]
    for (dataset, setting, metric), group in runs.groupby(["dataset", "setting", "metric"]):
        row = ours[
            (ours["dataset"] == dataset) & (ours["setting"] == setting) & (ours["metric"] == metric)
        ]
        assert row["mean"].item() == pytest.approx(group["value"].mean())
        assert row["std"].item() == pytest.approx(group["value"].std())
        assert row["n"].item() == len(seeds)
    missing = runs[runs["setting"] == "70% text missing"]
    assert (missing["missing_rate"] == 0.7).all() and (missing["missing_type"] == "text").all()
    text = re.sub(r" {2,}", " ", (folder / "out" / "table1.md").read_text())
    assert text.count("| RLRT (ours, this run) |") == 4
    assert all(f"| {row[0]} |" in text for row in PUBLISHED_TABLE1)
    assert " ± " in text
    return runs


def test_smoke_pipeline_on_mmimdb(clean_env):
    main(
        [
            "reproduce-table1",
            "--smoke",
            "--datasets",
            "mmimdb",
            "--configs",
            str(CONFIGS),
            "--workdir",
            str(clean_env / "work"),
            "--output",
            str(clean_env / "out"),
        ]
    )
    check_outputs(clean_env, ["mmimdb"], [0, 1])


@pytest.mark.slow
def test_full_smoke_pipeline_on_the_three_datasets(clean_env, monkeypatch):
    monkeypatch.setenv("SMOKE", "1")
    main(
        [
            "reproduce-table1",
            "--configs",
            str(CONFIGS),
            "--workdir",
            str(clean_env / "work"),
            "--output",
            str(clean_env / "out"),
        ]
    )
    check_outputs(clean_env, ["mmimdb", "food101", "snli_ve"], [0, 1])
