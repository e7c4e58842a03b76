"""Untrusted files: checkpoints are never unpickled, remote code is never trusted by default,
file names from dataset files cannot reach outside the dataset root."""

from __future__ import annotations

import functools
import io
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from data_modules import MMIMDBDataModule
from rlrt.cli import main
from rlrt.encoders import FrozenTextEncoder
from rlrt.engine.checkpoints import (
    CheckpointError,
    add_digest,
    find_last_checkpoint,
    read_checkpoint,
    verify_digest,
)
from rlrt.system import RLRT

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def leave_a_mark(path: str) -> None:
    Path(path).write_text("unpickled")


class Payload:
    """Unpickling this runs `leave_a_mark`: what a hostile checkpoint would do."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self):
        return leave_a_mark, (str(self.mark),)


@pytest.fixture()
def hostile_checkpoint(tmp_path):
    mark = tmp_path / "was_unpickled"
    path = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "extra": Payload(mark)}, path)
    return path, mark


def test_read_checkpoint_refuses_pickled_objects(hostile_checkpoint):
    path, mark = hostile_checkpoint
    with pytest.raises(CheckpointError, match="holds pickled objects"):
        read_checkpoint(path)
    assert not mark.exists()


def test_load_from_checkpoint_refuses_pickled_objects(hostile_checkpoint):
    path, mark = hostile_checkpoint
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        RLRT.load_from_checkpoint(path)
    assert not mark.exists()


def demo_args(tmp_path: Path, vit_config: Path, llama_dir: Path) -> list[str]:
    return [
        *("--config", str(CONFIGS / "trainer" / "demo.yaml")),
        *("--config", str(CONFIGS / "data" / "demo.yaml")),
        *("--config", str(CONFIGS / "model" / "demo.yaml")),
        f"--data.init_args.root={tmp_path / 'demo'}",
        "--data.init_args.num_movies=20",
        f"--model.image_encoder.init_args.config_file={vit_config}",
        "--model.image_encoder.init_args.image_size=32",
        "--model.image_encoder.init_args.layers=2",
        f"--model.text_encoder.init_args.model_name_or_path={llama_dir}",
        "--model.text_encoder.init_args.layers=2",
    ]


def test_cli_refuses_a_hostile_checkpoint_in_one_line(
    hostile_checkpoint, tmp_path, monkeypatch, capsys, tiny_vit_config, tiny_llama_dir
):
    path, mark = hostile_checkpoint
    monkeypatch.chdir(tmp_path)
    argv = ["test", *demo_args(tmp_path, tiny_vit_config, tiny_llama_dir), "--ckpt_path", str(path)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"rlrt: error: checkpoint {path} holds pickled")
    assert "Traceback" not in err
    assert not mark.exists()


def test_cli_runs_lightning_with_weights_only(
    tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir
):
    """`--weights_only` is unset on the command line; Lightning's restore still gets True."""
    from lightning import Trainer

    seen = {}

    @functools.wraps(Trainer.test)  # the CLI reads the subcommand's arguments off its signature
    def recording_test(self, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(Trainer, "test", recording_test)
    monkeypatch.setattr(
        "rlrt.engine.lightning_cli.read_checkpoint", lambda path: {}
    )  # no checkpoint needed
    monkeypatch.chdir(tmp_path)
    argv = ["test", *demo_args(tmp_path, tiny_vit_config, tiny_llama_dir)]
    main([*argv, "--ckpt_path", str(tmp_path / "some.ckpt")])
    assert seen["weights_only"] is True and seen["ckpt_path"] == str(tmp_path / "some.ckpt")


def test_digest_detects_any_changed_value():
    checkpoint = {"state_dict": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "loops": [1, "a"]}
    add_digest(checkpoint)
    verify_digest(checkpoint)
    for change in (
        lambda c: c["state_dict"]["w"].view(-1).__setitem__(4, 4.5),
        lambda c: c.__setitem__("epoch", 4),
        lambda c: c["loops"].append(None),
    ):
        copy = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in checkpoint.items()}
        copy["state_dict"] = {"w": checkpoint["state_dict"]["w"].clone()}
        copy["loops"] = list(checkpoint["loops"])
        change(copy)
        with pytest.raises(CheckpointError, match="is corrupted"):
            verify_digest(copy)
    del checkpoint["rlrt_digest"]
    verify_digest(checkpoint)  # checkpoints without a digest are accepted


def test_digest_survives_a_weights_only_round_trip(tmp_path):
    checkpoint = {
        "state_dict": {"w": torch.randn(3, 2, dtype=torch.bfloat16), "m": torch.ones(2).bool()},
        "hyper_parameters": {"class_names": ["a", "b"], "lr": 1e-4, "top_k": None},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": []}],
    }
    add_digest(checkpoint)
    torch.save(checkpoint, tmp_path / "c.ckpt")
    read_checkpoint(tmp_path / "c.ckpt")  # no error


def test_find_last_checkpoint_picks_the_newest(tmp_path):
    older, newer = tmp_path / "version_0", tmp_path / "version_1"
    for i, folder in enumerate((older, newer)):
        folder.mkdir()
        (folder / "last.ckpt").write_bytes(b"x")
        os.utime(folder / "last.ckpt", ns=(10**18 + i, 10**18 + i))
    (older / "epoch=3.ckpt").write_bytes(b"x")
    assert find_last_checkpoint([older, newer]) == newer / "last.ckpt"
    assert find_last_checkpoint([tmp_path / "nothing"]) is None


# ---------------------------------------------------------------- trust_remote_code


@pytest.fixture()
def recorded_from_pretrained(monkeypatch):
    """Record the keyword arguments of every `transformers` entry that may run a model's code:
    `AutoConfig/AutoTokenizer/AutoModel.from_pretrained` and `AutoModel.from_config` (and run
    them)."""
    import transformers

    calls = []
    for name, method in (
        ("AutoConfig", "from_pretrained"),
        ("AutoTokenizer", "from_pretrained"),
        ("AutoModel", "from_pretrained"),
        ("AutoModel", "from_config"),
    ):
        cls = getattr(transformers, name)
        original = getattr(cls, method)

        def recording(*args, _original=original, _name=f"{name}.{method}", **kwargs):
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, method, recording)
    return calls


def test_trust_remote_code_is_off_unless_set(recorded_from_pretrained, tiny_llama_dir):
    encoder = FrozenTextEncoder(model_name_or_path=str(tiny_llama_dir), layers=1)
    encoder.load()  # the weights, read on first use
    assert {name for name, _ in recorded_from_pretrained} == {
        "AutoConfig.from_pretrained",
        "AutoTokenizer.from_pretrained",
        "AutoModel.from_config",  # the architecture alone, on the meta device
        "AutoModel.from_pretrained",
    }
    assert all(kwargs["trust_remote_code"] is False for _, kwargs in recorded_from_pretrained)

    recorded_from_pretrained.clear()
    encoder = FrozenTextEncoder(
        model_name_or_path=str(tiny_llama_dir), layers=1, trust_remote_code=True
    )
    encoder.load()
    assert len({name for name, _ in recorded_from_pretrained}) == 4
    assert all(kwargs["trust_remote_code"] is True for _, kwargs in recorded_from_pretrained)


def test_no_shipped_config_trusts_remote_code():
    for path in sorted(CONFIGS.rglob("*.yaml")):
        assert "trust_remote_code: true" not in path.read_text().lower(), path
        text_encoder = (yaml.safe_load(path.read_text()).get("model") or {}).get("text_encoder")
        if text_encoder:
            assert not text_encoder.get("init_args", {}).get("trust_remote_code", False), path


# ---------------------------------------------------------------- file names out of the root


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_file_names_cannot_leave_the_dataset_root(tmp_path, monkeypatch):
    """`../`, absolute paths and symlinks out of the root (to a JSON or to an image) are reported
    as bad samples and skipped; the files outside are never read."""
    root, outside = tmp_path / "mmimdb", tmp_path / "outside"
    (root / "dataset").mkdir(parents=True)
    outside.mkdir()
    movie = {"plot": ["a plot"], "genres": ["Drama"]}
    for name in ("0000001", "0000002", "0000003"):
        (root / "dataset" / f"{name}.json").write_text(json.dumps(movie))
        (root / "dataset" / f"{name}.jpeg").write_bytes(jpeg())
    for name in ("0000009", "secret"):
        (outside / f"{name}.json").write_text(json.dumps(movie))
        (outside / f"{name}.jpeg").write_bytes(jpeg())
    os.symlink(outside / "secret.json", root / "dataset" / "0000004.json")  # JSON out of root
    (root / "dataset" / "0000005.json").write_text(json.dumps(movie))
    os.symlink(outside / "secret.jpeg", root / "dataset" / "0000005.jpeg")  # image out of root
    escapes = {
        "up": "../../outside/0000009",
        "absolute": str(outside / "0000009"),
        "json symlink": "0000004",
        "image symlink": "0000005",
    }
    split = {"train": ["0000001", *escapes.values()], "dev": ["0000002"], "test": ["0000003"]}
    (root / "split.json").write_text(json.dumps(split))

    opened = []
    real_open = Path.open

    def watching_open(self, *args, **kwargs):
        opened.append(self.resolve())
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", watching_open)
    dm = MMIMDBDataModule(root=str(root), image_size=16, batch_size=2)
    with pytest.warns(UserWarning, match="dropped 4 bad sample"):
        dm.dataset("train")
    assert [r.id for r in dm.dataset("train").records] == ["0000001"]
    bad = {b.id: b.reason for b in dm.bad_samples}
    assert set(bad) == set(escapes.values())
    assert all(reason.startswith("outside dataset root") for reason in bad.values())
    assert opened and not any(outside.resolve() in p.parents for p in opened)
