"""Ablation grid from the sweep file, `rlrt fit-test`, the results table and the wandb logger."""

import json
import multiprocessing
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from callbacks.results_table import append_row, flatten
from rlrt.cli import main
from rlrt.commands.ablations import (
    QUICK_ARGS,
    check_configs,
    command_parts,
    differing_settings,
    expand_grid,
    per_point_loggers,
    repository_root,
    results_table_path,
)
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
    specs = json.loads(loggers.partition("=")[2])
    classes = [x["class_path"] for x in specs]
    assert classes == ["lightning.pytorch.loggers.CSVLogger", "rlrt.engine.loggers.WandbLogger"]
    assert sweep["project"] == specs[1]["init_args"]["project"]  # W&B server and offline alike


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


@pytest.mark.slow  # a whole grid of fits (make test-all, CI)
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
    text = re.sub(r" {2,}", " ", (tmp_path / "ablations.md").read_text())
    assert "| late_fusion |" in text
    # only model settings tell the variants apart: no cache paths, no internal fields
    assert not any("cache" in d or "root" in d for d in summary["differs_in"])
    assert not [c for c in rows.columns if "_instantiator" in c]
    # one offline W&B run per grid point (its fit and its test), named by it, one group
    runs = sorted((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    records = [run.read_bytes() for run in runs]  # the run record holds its name and group
    names = [set(re.findall(rb"(?:full|late_fusion), seed \d", r)) for r in records]
    assert sorted(n for found in names for n in found) == [
        b"full, seed 0",
        b"full, seed 1",
        b"late_fusion, seed 0",
        b"late_fusion, seed 1",
    ]
    groups = {g for r in records for g in re.findall(rb"sweep-\d{8}-\d{6}", r)}
    assert len(runs) == 4 and len(groups) == 1
    # one feature cache for both variants: they share data and encoders
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()] == [
        "DemoMMIMDBDataModule"
    ]
    assert rows["data.feature_cache"].str.startswith(str(tmp_path / "cache")).all()


def test_each_grid_point_gets_its_own_named_wandb_run_in_the_sweep_group():
    wandb = {"class_path": "rlrt.engine.loggers.WandbLogger", "init_args": {"project": "p"}}
    csv = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "r"}}
    arguments = [
        "--config",
        "a.yaml",
        f"--trainer.logger={json.dumps([csv, wandb])}",
        f"--trainer.logger+={json.dumps(wandb)}",
    ]
    out = per_point_loggers(arguments, "sweep-1", "full, seed 0")
    assert out[:2] == arguments[:2]
    listed = json.loads(out[2].partition("=")[2])
    assert listed[0] == csv  # other loggers untouched
    assert listed[1]["init_args"] == {"project": "p", "group": "sweep-1", "name": "full, seed 0"}
    assert json.loads(out[3].partition("=")[2])["init_args"]["name"] == "full, seed 0"


def test_differences_name_model_settings_not_paths_or_internals():
    rows = pd.DataFrame(
        {
            "model.use_robust": [True, False],
            "model.lr": [0.003, 0.003],
            "data.feature_cache": ["c/one", "c/two"],
            "data.root": ["d/a", "d/b"],
            "data._instantiator": ["x", "y"],
            "model.image_encoder.init_args.layers": [4, 1],
            "model.layer_pairs": [4, 1],
        }
    )
    diffs = differing_settings(rows, pd.Series(["a", "b"]))
    # a tie: the first group's values are the reference
    assert diffs == {"a": "-", "b": "use_robust=False, layer_pairs=1"}


def test_started_outside_the_repository_it_says_where_to_start(tmp_path, monkeypatch, capsys):
    assert repository_root(SWEEP) == REPO
    monkeypatch.chdir(REPO)
    check_configs(["--config", "configs/trainer/demo.yaml", "--x=1"], REPO, SWEEP)  # found
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["ablations", "--sweep", str(SWEEP)])
    message = str(stop.value)
    assert "\n" not in message and f"start it from {REPO}" in message
    assert "configs/trainer/demo.yaml" in message
    assert not (tmp_path / "results").exists()  # nothing ran
    with pytest.raises(SystemExit, match="no such file"):
        check_configs(["configs/no_such.yaml"], REPO, SWEEP)


def test_quick_pass_is_one_seed_of_short_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("rlrt.commands.ablations.main", lambda argv: calls.append(argv))
    sweep = yaml.safe_load(SWEEP.read_text())
    sweep["parameters"]["config"]["values"] = [
        str(REPO / v) for v in sweep["parameters"]["config"]["values"][:2]
    ]
    sweep["command"] = [str(REPO / c) if c.startswith("configs/") else c for c in sweep["command"]]
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="no row"):  # the stand-in runs append nothing
        main(["ablations", "--sweep", str(sweep_file), "--quick", "--trainer.max_epochs=3"])
    assert len(calls) == 2  # two variants, one seed each
    for argv in calls:
        assert argv[-1] == "--trainer.max_epochs=3"  # the user's arguments win
        assert set(QUICK_ARGS) <= set(argv)
