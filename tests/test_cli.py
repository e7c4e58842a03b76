"""End to end through the `rlrt` CLI on a tiny generated demo dataset with tiny encoders."""

import json
from pathlib import Path

import pytest
import yaml

from rlrt.cli import main
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.tiny_encoders import tiny_encoder_args

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def demo_args(
    tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=48, model="demo.yaml", encoders=None
):
    """The demo's configs, shrunk: the model config `model` (under `configs/model/`) with the
    tiny encoders, or with the encoder overrides `encoders` when given."""
    if encoders is None:
        encoders = tiny_encoder_args(tiny_vit_config, tiny_llama_dir)
    return [
        "--config",
        str(CONFIGS / "trainer" / "demo.yaml"),
        "--config",
        str(CONFIGS / "data" / "demo.yaml"),
        "--config",
        str(CONFIGS / "model" / model),
        f"--data.init_args.root={tmp_path / 'demo_data'}",
        f"--data.init_args.num_movies={num_movies}",
        "--data.init_args.batch_size=16",
        "--data.init_args.num_workers=0",
        *encoders,
        "--trainer.max_epochs=2",
        "--trainer.enable_progress_bar=false",
    ]


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_fit_then_test_through_the_cli(in_tmp, tiny_vit_config, tiny_llama_dir):
    args = demo_args(in_tmp, tiny_vit_config, tiny_llama_dir)
    fit = RLRTCLI(args=["fit", *args])
    assert fit.datamodule.image_size == 32  # linked from the image encoder
    assert fit.model.num_classes == 23 and fit.model.task == "multilabel"
    assert len(fit.model.class_names) == 23
    checkpoint = Path(fit.trainer.checkpoint_callback.best_model_path)
    assert checkpoint.is_file() and (checkpoint.parent.parent / "config.yaml").is_file()
    logged = (checkpoint.parent.parent / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {
        "train/loss_epoch",
        "train/task_loss_epoch",
        "val/f1_macro",
        "val/cca_corr",
    } <= set(logged)

    test = RLRTCLI(args=["test", *args, "--ckpt_path", str(checkpoint)])
    run_dir = Path(test.trainer.log_dir)
    assert run_dir != checkpoint.parent.parent  # a new run directory, nothing overwritten
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"test/f1_micro", "test/f1_macro", "test/loss", "test/cca_corr"}
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test/f1_micro", "test/f1_macro"))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["common_dim"] == 8


@pytest.mark.parametrize(
    "storage",
    ["float16", pytest.param("int8", marks=pytest.mark.slow)],  # int8: test-all, CI
)
def test_demo_command_writes_the_three_rows(
    storage, in_tmp, tiny_vit_config, tiny_llama_dir, capsys
):
    args = demo_args(in_tmp, tiny_vit_config, tiny_llama_dir, num_movies=40)
    args = [a for a in args if a != "--trainer.max_epochs=2"] + ["--trainer.max_epochs=1"]
    tiny = ["--model-config", str(CONFIGS / "model" / "demo.yaml")]  # the tiny encoders' base
    demo = ["demo", "--configs", str(CONFIGS), "--output", str(in_tmp / "out"), *tiny]
    main([*demo, f"--storage_dtype={storage}", *args[6:]])
    manifest = json.loads((in_tmp / "out" / "cache" / "train" / "manifest.json").read_text())
    assert manifest["dtype"] == storage
    rows = json.loads((in_tmp / "out" / "metrics.json").read_text())
    assert set(rows) == {"complete", "missing_image", "missing_text"}
    for row in rows.values():
        assert set(row) == {"f1_micro", "f1_macro", "cca_corr", "cca_corr_noise_floor"}
    # no test sample keeps both modalities when one is missing everywhere: no correlation, null
    assert rows["missing_image"]["cca_corr"] is None and rows["missing_text"]["cca_corr"] is None
    assert rows["missing_image"]["cca_corr_noise_floor"] is None
    complete = rows["complete"]["cca_corr"]
    assert complete is None or -1 <= complete <= 1  # out of sample: signed
    printed = capsys.readouterr().out
    assert "missing_image" in printed and "f1_macro" in printed
    assert "DataLoader 0" not in printed  # one table, the demo's, not Lightning's three
    # one run directory per demo: the fit, and its three tests inside it
    (run,) = (in_tmp / "results" / "demo" / "runs" / "rlrt").iterdir()
    tests = sorted(p.name for p in (run / "tests").iterdir())
    assert tests == ["complete", "missing_image", "missing_text"]
    for setting in tests:
        written = json.loads((run / "tests" / setting / "metrics.json").read_text())
        assert written["test/f1_macro"] == pytest.approx(rows[setting]["f1_macro"])


def test_every_shipped_yaml_parses():
    files = sorted(CONFIGS.rglob("*.yaml"))
    assert files
    for path in files:
        content = yaml.safe_load(path.read_text())
        assert isinstance(content, dict) and content, path


class ParseOnlyCLI(RLRTCLI):
    """The real parser and links, without building models or data (no weights needed)."""

    def instantiate_classes(self) -> None:
        pass


def config_families():
    groups = {g: sorted((CONFIGS / g).glob("*.yaml")) for g in ("trainer", "data", "model")}
    return [(t, d, m) for t in groups["trainer"] for d in groups["data"] for m in groups["model"]]


@pytest.mark.parametrize("trainer,data,model", config_families(), ids=lambda p: p.stem)
def test_config_families_parse_with_the_cli_parser(trainer, data, model):
    cli = ParseOnlyCLI(
        args=["--config", str(trainer), "--config", str(data), "--config", str(model)],
        run=False,
    )
    config = cli.config
    assert config.model.image_encoder.class_path in {
        "rlrt.encoders.FrozenImageEncoder",
        "rlrt.encoders.FrozenCNNImageEncoder",
    }
    assert config.data.class_path.startswith("data_modules.")
    # the image size is typed once, in the model config, and linked into the data config
    assert config.data.init_args.image_size == config.model.image_encoder.init_args.image_size
