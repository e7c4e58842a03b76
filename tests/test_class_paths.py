"""Every `class_path` a user may hold keeps resolving: those of the configs in `configs/` (with
the renames of `rlrt.engine.moved` applied, as the CLI reads them), those saved in a version 0.1
checkpoint's hyperparameters, and those the encoders record now (`rlrt.encoders.<Name>`, the same
path as before the encoders became one file each)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch

from rlrt.encoders import FrozenCNNImageEncoder, FrozenImageEncoder, FrozenTextEncoder
from rlrt.encoders.frozen import public_class_path
from rlrt.engine.moved import with_current_names

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "checkpoint_0.1.ckpt"
CLASS_PATH = re.compile(r"""class_path["']?\s*:\s*["']?([A-Za-z_][\w.]*)""")


class Custom(FrozenImageEncoder):
    """A user's subclass, not exported by `rlrt.encoders`: recorded under its own module."""


def resolve(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    found = getattr(importlib.import_module(module), name)
    assert isinstance(found, type), class_path
    return found


def class_paths(value) -> list[str]:
    """The `class_path` values anywhere in nested dicts and lists."""
    if isinstance(value, dict):
        own = [value["class_path"]] if isinstance(value.get("class_path"), str) else []
        return own + [p for v in value.values() for p in class_paths(v)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in class_paths(v)]
    return []


def test_every_class_path_in_the_configs_resolves():
    found = {}
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        text, _ = with_current_names(path.read_text())
        for class_path in CLASS_PATH.findall(text):
            found[class_path] = resolve(class_path)
    assert found["rlrt.encoders.FrozenImageEncoder"] is FrozenImageEncoder
    assert found["rlrt.encoders.FrozenCNNImageEncoder"] is FrozenCNNImageEncoder
    assert found["rlrt.encoders.FrozenTextEncoder"] is FrozenTextEncoder


def test_the_class_paths_of_a_version_0_1_checkpoint_resolve():
    checkpoint = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    paths = class_paths(checkpoint["hyper_parameters"])
    assert sorted(paths) == ["rlrt.encoders.FrozenImageEncoder", "rlrt.encoders.FrozenTextEncoder"]
    assert [resolve(p) for p in sorted(paths)] == [FrozenImageEncoder, FrozenTextEncoder]


def test_an_encoder_records_the_public_class_path(image_encoder, text_encoder):
    assert image_encoder.config["class_path"] == "rlrt.encoders.FrozenImageEncoder"
    assert text_encoder.config["class_path"] == "rlrt.encoders.FrozenTextEncoder"
    assert public_class_path(FrozenCNNImageEncoder) == "rlrt.encoders.FrozenCNNImageEncoder"
    assert public_class_path(Custom) == f"{__name__}.Custom"
