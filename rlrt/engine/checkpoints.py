"""Checkpoints that may come from anywhere: safe loading, integrity, compatibility, `last`.

- **Safe loading**: `torch.load(weights_only=True)` only; a checkpoint holding anything but
  tensors and plain values is refused, never unpickled.
- **Integrity**: the zip container of a checkpoint catches truncation but not flipped bytes inside
  a tensor. `add_digest` stores a SHA-256 over the checkpoint's sections when it is written;
  `verify_digest` recomputes it when it is read. Checkpoints without a digest are accepted.
- **Compatibility**: `check_same` names the first field that differs between what a checkpoint
  was trained with and what the config builds.
- **`--ckpt_path last`**: `find_intact_last_checkpoint` picks the newest `last*.ckpt` of every
  run under the logger's directory that reads intact, so a resumed run (which gets a run directory
  of its own) finds the checkpoint of the run it resumes, and a truncated one is skipped.
  `RunCheckpoint` keeps `last.ckpt` the latest state and writes every checkpoint atomically.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from weakref import proxy

import torch
from lightning import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor

DIGEST_KEY = "rlrt_digest"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what is wrong and what to do."""


def _feed(hasher: Any, value: Any) -> None:
    """Hash `value` (nested dicts, lists, tuples, tensors and scalars) in a stable way."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        hasher.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        hasher.update(b"{")
        for key, item in value.items():
            _feed(hasher, key)
            _feed(hasher, item)
        hasher.update(b"}")
    elif isinstance(value, (list, tuple)):
        hasher.update(b"[")
        for item in value:
            _feed(hasher, item)
        hasher.update(b"]")
    elif isinstance(value, (set, frozenset)):
        _feed(hasher, sorted(value, key=repr))
    else:
        hasher.update(f"{type(value).__name__}:{value!r};".encode())


def checkpoint_digest(checkpoint: Mapping[str, Any], keys: Iterable[str]) -> str:
    """SHA-256 hex digest of the given top-level sections of a checkpoint dict."""
    hasher = hashlib.sha256()
    for key in keys:
        _feed(hasher, key)
        _feed(hasher, checkpoint.get(key))
    return hasher.hexdigest()


def add_digest(checkpoint: dict[str, Any]) -> None:
    """Store the digest of every section present now (call last, just before saving)."""
    keys = sorted(k for k in checkpoint if k != DIGEST_KEY)
    checkpoint[DIGEST_KEY] = {"sha256": checkpoint_digest(checkpoint, keys), "keys": keys}


def verify_digest(checkpoint: Mapping[str, Any], source: object = "checkpoint") -> None:
    """Raise `CheckpointError` when the stored digest does not match the content."""
    stored = checkpoint.get(DIGEST_KEY)
    if stored is None:
        return
    if checkpoint_digest(checkpoint, stored["keys"]) != stored["sha256"]:
        raise CheckpointError(
            f"{source} is corrupted (its content does not match the digest written with it); "
            "use another checkpoint, e.g. an earlier one of the same run"
        )


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (`weights_only=True`, on the CPU) and check it.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable checkpoint (truncated, corrupted, holding pickled
            objects, not a Lightning checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give the path of a .ckpt file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err):
            raise CheckpointError(
                f"checkpoint {path} holds pickled objects, not only tensors and plain values, "
                "so it is not loaded (untrusted pickles can run code); re-save it with rlrt"
            ) from err
        raise CheckpointError(_unreadable(path, err)) from err
    except (RuntimeError, EOFError, OSError, ValueError, UnicodeDecodeError, KeyError) as err:
        raise CheckpointError(_unreadable(path, err)) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a Lightning checkpoint (no state_dict); give a .ckpt written by rlrt"
        )
    verify_digest(checkpoint, f"checkpoint {path}")
    return checkpoint


def _unreadable(path: Path, err: BaseException) -> str:
    first = " ".join(str(err).split()).split(". ")[0] or type(err).__name__
    return (
        f"checkpoint {path} is truncated or corrupted ({first}); "
        "use another checkpoint, e.g. an earlier one of the same run"
    )


def check_same(
    saved: Mapping[str, Any], ours: Mapping[str, Any], keys: Iterable[str], what: str, hint: str
) -> None:
    """Raise `CheckpointError` naming the first of `keys` whose values differ.

    A key missing or None on either side (an older checkpoint, an unknown value) is not compared.
    """
    for key in keys:
        if saved.get(key) is None or ours.get(key) is None:
            continue
        if saved[key] != ours[key]:
            raise CheckpointError(
                f"checkpoint was trained with {what}{key}={saved[key]!r} but the config gives "
                f"{ours.get(key)!r}; {hint}"
            )


CLASS_HPARAMS = ("num_classes", "task", "class_names")


def other_classes_hint(saved: Mapping[str, Any], ours: Mapping[str, Any], source: object) -> str:
    """What to do about a checkpoint whose classes (`CLASS_HPARAMS`) differ from the data's
    (the `hint` of `check_same`): the checkpoint `source` belongs to another dataset."""

    def classes(hparams: Mapping[str, Any]) -> str:
        names = list(hparams.get("class_names") or [])
        shown = ", ".join(map(str, names[:5])) + (", ..." if len(names) > 5 else "")
        return f"{hparams.get('num_classes')} {hparams.get('task')} classes" + (
            f" ({shown})" if shown else ""
        )

    return (
        f"{source} was trained on another dataset: {classes(saved)}, where this data has "
        f"{classes(ours)}; evaluate it on the data it was trained on (its run's config.yaml "
        "names it), or fit a model on this data"
    )


def last_checkpoint_candidates(folders: Iterable[Path]) -> list[Path]:
    """Every `last*.ckpt` directly in any of `folders`, the most recently written first."""
    candidates = [p for folder in folders for p in Path(folder).glob("last*.ckpt") if p.is_file()]
    return sorted(candidates, key=lambda p: (p.stat().st_mtime_ns, str(p)), reverse=True)


def find_last_checkpoint(folders: Iterable[Path]) -> Path | None:
    """The most recently written `last*.ckpt` directly in any of `folders`, or None."""
    candidates = last_checkpoint_candidates(folders)
    return candidates[0] if candidates else None


def find_intact_last_checkpoint(
    folders: Iterable[Path],
) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The most recently written `last*.ckpt` that reads intact (`read_checkpoint`), and the
    newer ones skipped as `(path, why)`: a truncated file (a full disk, a killed copy) does not
    block resuming from the checkpoint before it."""
    skipped: list[tuple[Path, str]] = []
    for candidate in last_checkpoint_candidates(folders):
        try:
            read_checkpoint(candidate)
        except (CheckpointError, FileNotFoundError) as err:
            skipped.append((candidate, _why_unusable(err)))
            continue
        return candidate, skipped
    return None, skipped


def _why_unusable(err: BaseException) -> str:
    text = str(err)
    for reason in ("truncated or corrupted", "corrupted", "pickled objects", "not a Lightning"):
        if reason in text:
            return reason
    return "unreadable"


def save_checkpoint_atomically(trainer: Trainer, filepath: str | Path, weights_only: bool) -> None:
    """`trainer.save_checkpoint` into a temporary name beside `filepath`, renamed into place when
    complete: `filepath` is either the earlier checkpoint or the new one, never a part of one.

    A failed write (a full disk, ...) removes the temporary file and raises `OSError` with the
    same `errno`, naming the folder and what to do.
    """
    filepath = Path(filepath)
    temporary = filepath.with_name(f".{filepath.name}.tmp")
    try:
        trainer.save_checkpoint(temporary, weights_only)
        if trainer.is_global_zero:
            if temporary.is_dir() and filepath.is_dir():  # a sharded checkpoint: a folder
                shutil.rmtree(filepath)
            os.replace(temporary, filepath)
        trainer.strategy.barrier("rlrt.save_checkpoint_atomically")
    except BaseException as err:
        if trainer.is_global_zero:
            _remove(temporary)
        if isinstance(err, OSError) and not isinstance(err, CheckpointWriteError):
            raise CheckpointWriteError(
                err.errno,
                f"{err.strerror or err} while writing checkpoint {filepath.name}: nothing partial "
                "was left, the earlier checkpoints are intact and `--ckpt_path last` resumes from "
                "the newest",
                str(filepath.parent),
            ) from err
        raise


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; `filename` is its folder."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint` with `last.ckpt` always the latest state, across resumes.

    - Since Lightning 2.6, `save_last=True` rewrites `last.ckpt` at an epoch's end only when a
      top-k checkpoint is written at the same step, so with `save_top_k=1` it is a copy of the
      best, and resuming from it would go back in time. Here `last.ckpt` is rewritten whenever the
      top-k checkpoints are considered (as before 2.6).
    - A resumed run writes into a new run directory; Lightning then forgets the best score so
      far (it reloads it only for an unchanged directory). Here it is kept, so "best" still means
      best over the whole training; the earlier run's files are never deleted (Lightning removes
      only files inside the current directory).
    - `monitor: task_metric` (the shipped configs' choice) selects on the task's own metric,
      whatever the dataset: `val/f1_macro` for a multi-label model, `val/acc` otherwise (with
      `mode: max`). A loss that includes `beta * L_CCA` would select on the alignment as much as
      on the task.
    """

    TASK_METRIC = "task_metric"

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self.monitor == self.TASK_METRIC:
            task = getattr(pl_module, "task", None)
            self.monitor = "val/f1_macro" if task == "multilabel" else "val/acc"
        super().setup(trainer, pl_module, stage)

    def _save_topk_checkpoint(
        self, trainer: Trainer, monitor_candidates: dict[str, Tensor]
    ) -> None:
        super()._save_topk_checkpoint(trainer, monitor_candidates)
        if self.save_last and self.save_top_k != 0:
            self._last_global_step_saved = trainer.global_step  # lets `last.ckpt` follow

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})

    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        """Lightning's, writing atomically (`save_checkpoint_atomically`): a full disk leaves the
        earlier `last.ckpt` as it was, not a truncated one."""
        save_checkpoint_atomically(trainer, filepath, self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
