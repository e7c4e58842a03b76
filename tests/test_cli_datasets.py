"""End to end `rlrt fit` then `rlrt test` on a fake copy of each real dataset, with the shipped
data configs, tiny encoders and the `--data.root /path` form of the README."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_modules.fakes import write_fake_food101, write_fake_mmimdb, write_fake_snli_ve
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.tiny_encoders import tiny_encoder_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

DATASETS = {
    # name: (writer, writer kwargs, extra data args, num_classes, task, a test metric)
    "mmimdb": (write_fake_mmimdb, {"num_movies": 20}, [], 23, "multilabel", "test/f1_macro"),
    "food101": (write_fake_food101, {}, ["--data.val_size", "0.25"], 101, "multiclass", "test/acc"),
    "snli_ve": (write_fake_snli_ve, {}, [], 3, "multiclass", "test/acc"),
}


def cli_args(name: str, root: Path, extra: list[str], vit: Path, llama: Path) -> list[str]:
    return [
        "--config",
        str(CONFIGS / "trainer" / "default.yaml"),
        "--config",
        str(CONFIGS / "data" / f"{name}.yaml"),
        "--config",
        str(CONFIGS / "model" / "demo.yaml"),
        "--data.root",
        str(root),
        "--data.batch_size=8",
        "--data.num_workers=0",
        *extra,
        *tiny_encoder_args(vit, llama),
        "--trainer.max_epochs=1",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ]


@pytest.mark.parametrize("name", list(DATASETS))
def test_fit_then_test(name, tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir):
    monkeypatch.chdir(tmp_path)  # runs/ lands here
    writer, kwargs, extra, num_classes, task, metric = DATASETS[name]
    fake = writer(tmp_path / name, **kwargs)
    args = cli_args(name, fake.root, extra, tiny_vit_config, tiny_llama_dir)

    with pytest.warns(
        UserWarning, match=r"(train|val): dropped \d+ bad sample"
    ):  # the fakes are dirty
        fit = RLRTCLI(args=["fit", *args])
    dm = fit.datamodule
    assert dm.root == fake.root and dm.image_size == 32  # --data.root; size linked from model
    assert (fit.model.num_classes, fit.model.task) == (num_classes, task)  # linked from data
    assert fit.model.class_names == dm.class_names
    run_dir = Path(fit.trainer.log_dir)
    report = json.loads((run_dir / "bad_samples.json").read_text())
    assert report["kept"] == {"train": len(dm.dataset("train")), "val": len(dm.dataset("val"))}
    assert report["counts"] == {
        split: sum(b.split == split for b in dm.bad_samples) for split in ("train", "val")
    }
    assert sum(report["counts"].values()) > 0  # the fakes are dirty
    assert {(s["split"], s["id"]) for s in report["samples"]} == {
        (b.split, b.id) for b in dm.bad_samples
    }

    checkpoint = fit.trainer.checkpoint_callback.best_model_path
    with pytest.warns(UserWarning, match=r"test: dropped \d+ bad sample"):
        test = RLRTCLI(args=["test", *args, "--ckpt_path", checkpoint])
    test_dir = Path(test.trainer.log_dir)
    assert test_dir != run_dir
    metrics = json.loads((test_dir / "metrics.json").read_text())
    assert 0.0 <= metrics[metric] <= 1.0
    test_report = json.loads((test_dir / "bad_samples.json").read_text())
    assert test_report["kept"] == {"test": len(fake.kept["test"])}
    assert test_report["counts"]["test"] == sum(s == "test" for s, _, _ in _dropped(fake))


def _dropped(fake) -> set:
    return fake.expected_bad("longest") if hasattr(fake, "expected_bad") else fake.dropped
