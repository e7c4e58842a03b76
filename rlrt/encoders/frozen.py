"""What the frozen encoders share: `FrozenEncoder` (weights loaded on first use, freezing,
eval-mode pinning, the identity record), where a tap reads (`TAP`), bf16 autocast on GPU."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# Where a tap reads the token states, recorded in the identities: caches and checkpoints made when
# a decoder's last text tap was post-final-norm (transformers' `hidden_states[-1]`) are refused.
TAP = "block_output"


class FrozenEncoder(nn.Module):
    """Base of the frozen encoders: weights loaded on first use, freezing, eval-mode pinning, and
    an identity record.

    A subclass reads its architecture at construction without the weights (built on PyTorch's
    meta device: shapes, layer count, widths), so the trained head can be built around it, and
    implements `_build()`, which makes the real model and reads the weights. `load()` calls it
    once, on first use or when the model's `setup` needs online encoding; a fit, test or
    robustness run from the feature cache never does, and never reads the weight files (a 7B text
    model is 13.5 GB). The weights' content fingerprint is likewise read on first need, or taken
    from the cache manifest whose features this model trains on (`adopt_weights_fingerprint`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._loaded: nn.Module | None = None
        self._fingerprint: str | None = None
        self._fingerprint_from: str | None = None  # "files" once read, "cache" once adopted
        # Moves with the encoder (`.to(device)`): where `load()` puts the weights.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    # -- the weights
    def _build(self) -> nn.Module:
        """The real model with its weights read (on the CPU)."""
        raise NotImplementedError

    def _read_weights_fingerprint(self) -> str | None:
        """The content fingerprint of the files that hold the weights (see `identity`)."""
        raise NotImplementedError

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    def load(self, device: torch.device | str | None = None) -> nn.Module:
        """The frozen model with its weights, built on first call and put on `device` (default:
        the encoder's own; a model's `setup` passes the trainer's, so that a 13.5 GB model goes
        to the GPU once instead of to the CPU first)."""
        if self._loaded is None:
            model = self._build()
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            model.train(False)
            if self._fingerprint_from == "cache":  # set up from a cache: same weights?
                files = self._read_weights_fingerprint()
                if files != self._fingerprint:
                    raise ValueError(
                        f"{type(self).__name__}: the weight files now differ from those that "
                        f"made the cached features this model was set up with "
                        f"({self._fingerprint}); rebuild the cache with `rlrt cache "
                        "--overwrite`, or restore the weights"
                    )
                self._fingerprint_from = "files"
            self._loaded = model.to(device=self._anchor.device if device is None else device)
        return self._loaded

    def weights_fingerprint(self) -> str | None:
        """The weights' content fingerprint: adopted from a cache manifest, else read once."""
        if self._fingerprint_from is None:
            self._fingerprint = self._read_weights_fingerprint()
            self._fingerprint_from = "files"
        return self._fingerprint

    def adopt_weights_fingerprint(self, fingerprint: str | None) -> None:
        """Take the fingerprint a feature cache recorded: the features trained on are the cache's,
        so the checkpoint records the weights that made them, without reading the files."""
        self._fingerprint, self._fingerprint_from = fingerprint, "cache"

    # -- freezing and identity
    def train(self, mode: bool = True) -> FrozenEncoder:
        # A LightningModule's train() recurses into children: dropout etc. must stay off here.
        return super().train(False)

    def _record_config(self, **init_args: Any) -> None:
        """Keep a `class_path` config of this encoder, so hparams never hold the module itself."""
        self.config = {"class_path": public_class_path(type(self)), "init_args": init_args}

    def identity_fields(self) -> dict[str, Any]:
        """The identity without the weights' fingerprint: read from the config and the
        architecture alone."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What makes this encoder's features what they are (stored in checkpoints and caches)."""
        return {**self.identity_fields(), "weights_fingerprint": self.weights_fingerprint()}


def public_class_path(cls: type) -> str:
    """`rlrt.encoders.<Name>` for a class the package exports (the path configs name, and the one
    checkpoints saved before the encoders were one file each), else the class's own module."""
    package = sys.modules.get(__package__ or "")
    if getattr(package, cls.__qualname__, None) is cls:
        return f"{__package__}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def autocast(device: torch.device):
    """bf16 autocast for the frozen encoders on GPU; a no-op elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def without_random_init_notice(random_on_purpose: bool) -> Iterator[None]:
    """open_clip logs "No pretrained weights loaded ... initialized randomly" on the root logger
    for every model built without weights. Asked for (`pretrained=None`: the demo's and the
    tests' random towers, recorded in the encoder identity), it is not news, five times a demo."""
    if not random_on_purpose:
        yield
        return
    root = logging.getLogger()
    notice = _DropRecords("No pretrained weights loaded")
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)
