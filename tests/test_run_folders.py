"""A run that fails before producing anything leaves no run directory behind; one that produced
something, or an earlier run's directory, is never touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlrt.cli import main
from rlrt.engine.run_folders import discard_unused_run_dir
from tests.test_checkpoint_compat import FIXTURE, run_args

EMPTY_REPORT = {"dataset": "x", "root": "r", "kept": {}, "counts": {}, "samples": []}


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def test_only_records_and_an_empty_report_are_discarded(tmp_path):
    records = {"config.yaml": "a: 1\n", "hparams.yaml": "{}\n", "metrics.csv": "epoch,step\n"}
    unused = write(tmp_path / "unused", {**records, "bad_samples.json": json.dumps(EMPTY_REPORT)})
    assert discard_unused_run_dir(unused)
    assert not unused.exists()


@pytest.mark.parametrize(
    "extra",
    [
        {"checkpoints/last.ckpt": "x"},
        {"metrics.csv": "epoch,step\n0,1\n"},
        {"bad_samples.json": json.dumps({**EMPTY_REPORT, "samples": [{"id": "7"}]})},
        {"bad_samples.json": "{not json"},
        {"notes.txt": "mine"},
    ],
)
def test_a_directory_holding_anything_else_is_kept(tmp_path, extra):
    folder = write(tmp_path / "run", {"config.yaml": "a: 1\n", **extra})
    assert not discard_unused_run_dir(folder)
    assert all((folder / name).is_file() for name in ["config.yaml", *extra])


def test_a_refused_test_run_leaves_no_run_directory(
    tmp_path, monkeypatch, capsys, tiny_vit_config, tiny_llama_dir
):
    """The 0.1 fixture names another text encoder folder: refused when the checkpoint loads,
    after the run directory was made."""
    monkeypatch.chdir(tmp_path)
    args = run_args(tmp_path, tiny_vit_config, tiny_llama_dir)
    with pytest.raises(SystemExit):
        main(["test", *args, "--ckpt_path", str(FIXTURE)])
    assert "checkpoint was trained with text encoder" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "rlrt" / "version_0").exists()


def test_an_earlier_runs_directory_survives_a_refused_run(
    tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir
):
    monkeypatch.chdir(tmp_path)
    earlier = write(tmp_path / "runs" / "rlrt" / "version_0", {"config.yaml": "a: 1\n"})
    args = run_args(tmp_path, tiny_vit_config, tiny_llama_dir)
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "runs", "name": "rlrt", "version": 0},
    }
    with pytest.raises(SystemExit):
        main(["test", *args, f"--trainer.logger={json.dumps(logger)}", "--ckpt_path", str(FIXTURE)])
    assert (earlier / "config.yaml").read_text() == "a: 1\n"
