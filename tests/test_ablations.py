"""Ablation grid from the sweep file, `rlrt fit-test`, the results table and the wandb logger."""

import json
import multiprocessing
from pathlib import Path

import pandas as pd
import pytest
import yaml

from callbacks.results_table import append_row, flatten
from rlrt.cli import main
from rlrt.commands.ablations import command_parts, expand_grid, results_table_path
from rlrt.engine.loggers import WandbLogger, wandb_account_configured
from tests.test_cli import demo_args

REPO = Path(__file__).resolve().parents[1]
SWEEP = REPO / "configs" / "sweeps" / "ablations.yaml"


def test_the_shipped_sweep_is_a_wandb_grid_over_existing_variants():
    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["method"] == "grid" and sweep["program"] == "rlrt"
    grid = expand_grid(sweep["parameters"])
    variants = sweep["parameters"]["config"]["values"]
    assert len(grid) == len(variants) * len(sweep["parameters"]["seed_everything"]["values"])
    assert all((REPO / v).is_file() for v in variants)
    names = {Path(v).stem for v in variants}
    assert {"late_fusion", "image_only", "text_only", "no_cca", "no_cross_attention"} <= names
    subcommand, fixed = command_parts(sweep["command"])
    assert subcommand == "fit-test" and "${args}" not in fixed
    assert results_table_path(fixed) == Path("results/ablations/runs.csv")
    loggers = next(a for a in fixed if a.startswith("--trainer.logger="))
    classes = [x["class_path"] for x in json.loads(loggers.partition("=")[2])]
    assert classes == ["lightning.pytorch.loggers.CSVLogger", "rlrt.engine.loggers.WandbLogger"]


def test_expand_grid_is_the_cartesian_product_in_file_order():
    grid = expand_grid(
        {"a": {"values": [1, 2]}, "b": {"value": "x"}, "c": {"values": [True, False]}}
    )
    assert grid == [
        {"a": 1, "b": "x", "c": True},
        {"a": 1, "b": "x", "c": False},
        {"a": 2, "b": "x", "c": True},
        {"a": 2, "b": "x", "c": False},
    ]
    with pytest.raises(ValueError, match="values"):
        expand_grid({"a": {"distribution": "uniform", "min": 0, "max": 1}})


def _append_many(path, worker):
    for i in range(10):
        append_row(path, {"worker": worker, "i": i, f"only_{worker}": 1})


def test_results_table_appends_are_atomic_under_concurrency(tmp_path):
    path = tmp_path / "table.csv"
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join()
    table = pd.read_csv(path)
    assert len(table) == 40
    assert sorted(zip(table["worker"], table["i"])) == [(w, i) for w in range(4) for i in range(10)]
    assert {f"only_{w}" for w in range(4)} <= set(table.columns)  # new columns are kept
    assert not list(tmp_path.glob(".table.csv.*"))  # no temporary file left behind


def test_flatten_names_nested_settings():
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "d": None}, "model")
    assert flat == {"model.a.b": 1, "model.a.c": "1 2", "model.d": None}


def test_wandb_logger_is_offline_without_an_account(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert not wandb_account_configured()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_account_configured()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not wandb_account_configured()
    assert WandbLogger(save_dir=str(tmp_path), project="p")._offline
    monkeypatch.delenv("WANDB_MODE")
    assert not WandbLogger(save_dir=str(tmp_path), project="p")._offline  # key set: online
    assert WandbLogger(save_dir=str(tmp_path), project="p", offline=True)._offline


def test_ablations_run_the_grid_and_collect_one_table(
    tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir
):
    monkeypatch.chdir(tmp_path)
    table = tmp_path / "runs.csv"
    results = {"class_path": "callbacks.ResultsTable", "init_args": {"path": str(table)}}
    missing = {
        "class_path": "callbacks.MissingModality",
        "init_args": {"eval_rate": 0.5, "eval_type": "both", "seed": 2},
    }
    wandb = {
        "class_path": "rlrt.engine.loggers.WandbLogger",
        "init_args": {"project": "test", "save_dir": str(tmp_path)},
    }
    shipped = yaml.safe_load(SWEEP.read_text())
    sweep = {
        "program": "rlrt",
        "method": "grid",
        "parameters": {
            "config": {
                "values": [
                    str(REPO / "configs/model/variants/full.yaml"),
                    str(REPO / "configs/model/variants/late_fusion.yaml"),
                ]
            },
            "seed_everything": {"values": [0, 1]},
        },
        "command": [
            *[str(REPO / c) if c.startswith("configs/") else c for c in shipped["command"][:9]],
            "--cache_root",
            str(tmp_path / "cache"),
            f"--trainer.logger+={json.dumps(wandb)}",
            f"--trainer.callbacks+={json.dumps(results)}",
            f"--trainer.callbacks+={json.dumps(missing)}",
            "${args}",
        ],
    }
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    tiny = demo_args(tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=32)[6:]
    tiny = [a for a in tiny if not a.startswith("--trainer.max_epochs")] + [
        "--trainer.max_epochs=1"
    ]
    main(
        [
            "ablations",
            "--sweep",
            str(sweep_file),
            "--output",
            str(tmp_path / "ablations"),
            "--axis",
            "seed_everything=0,1",
            *tiny,
        ]
    )
    rows = pd.read_csv(table)
    assert len(rows) == 4  # 2 variants x 2 seeds, one test row each
    assert sorted(rows["model.use_robust"].tolist()) == [False, False, True, True]
    assert sorted(rows["seed"].tolist()) == [0, 0, 1, 1]
    assert set(rows["missing_eval_rate"]) == {0.5} and set(rows["missing_strategy"]) == {"dummy"}
    assert (rows["model.layer_pairs"] == 2).all()
    assert rows["test/f1_macro"].between(0, 1).all()
    summary = pd.read_csv(tmp_path / "ablations.csv")
    assert summary["variant"].tolist() == ["full", "late_fusion"]
    assert summary["runs"].tolist() == [2, 2]
    late = rows[rows["model.use_robust"] == False]["test/f1_macro"]  # noqa: E712
    assert summary.loc[1, "f1_macro_mean"] == pytest.approx(late.mean())
    assert summary.loc[1, "f1_macro_std"] == pytest.approx(late.std())
    assert "use_robust=False" in summary.loc[1, "differs_in"]
    text = (tmp_path / "ablations.md").read_text()
    assert "| late_fusion |" in text
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # wandb ran, offline
    # one feature cache for both variants: they share data and encoders
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()] == [
        "DemoMMIMDBDataModule"
    ]
    assert rows["data.feature_cache"].str.startswith(str(tmp_path / "cache")).all()
