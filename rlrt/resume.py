"""Exact resumption: what Lightning's checkpoints leave out, kept with them.

Lightning restores weights, optimiser, schedulers and loop counters, but
- not the random number generators, so dropout after a resume would differ from an
  uninterrupted run;
- not, in practice, the training loader's position: it restores a stateful loader only when the
  loader is built after the checkpoint is read, and `configure_optimizers` asking for
  `trainer.estimated_stepping_batches` builds it before (Lightning 2.6).

`ExactResume` stores the torch (CPU and CUDA), NumPy and Python RNG states and the training
loader's `state_dict()` (when it has one, e.g. `data_modules.resumable.ResumableDataLoader`) with
every checkpoint, as plain tensors and numbers (loadable with `weights_only=True`), and puts both
back when a `fit` resumes, at `on_train_start`: after everything the restore runs (sanity check,
loader set-up) and before the first batch is drawn.

Under DDP every process has its own RNG states (each draws its own dropout masks) while only
rank 0 writes the checkpoint, so the states of all ranks are gathered into it, and each rank of a
resumed run takes its own back. A checkpoint from another number of processes cannot be resumed
exactly: every rank then takes rank 0's states, with a warning.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states as tensors, ints and floats."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


class ExactResume(Callback):
    """Save the RNG states and the training loader's position with every checkpoint; restore
    them when a `fit` resumes."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._trainer: Trainer | None = None

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        """Called on every rank when a checkpoint is written (Lightning builds the checkpoint
        everywhere and rank 0 saves it), so gathering here is a collective all ranks join."""
        loader = _train_loader(self._trainer)
        rng = capture_rng_state()
        state = {"rng": rng, "train_loader": None if loader is None else loader.state_dict()}
        if _world_size() > 1:
            by_rank: list[Any] = [None] * _world_size()
            torch.distributed.all_gather_object(by_rank, rng)
            state["rng_by_rank"] = by_rank
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._pending is None:
            return
        loader = _train_loader(trainer)
        if loader is not None and self._pending.get("train_loader") is not None:
            loader.load_state_dict(self._pending["train_loader"])
        by_rank = self._pending.get("rng_by_rank")
        if by_rank is not None and len(by_rank) == trainer.world_size:
            restore_rng_state(by_rank[trainer.global_rank])
        else:
            saved_by = 1 if by_rank is None else len(by_rank)
            if saved_by != trainer.world_size:
                rank_zero_warn(
                    f"the checkpoint was written by {saved_by} process(es), this "
                    f"run has {trainer.world_size}: every rank takes rank 0's RNG states, so the "
                    "resumed run will not repeat an uninterrupted one exactly"
                )
            restore_rng_state(self._pending["rng"])
        self._pending = None


def _world_size() -> int:
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return torch.distributed.get_world_size() if distributed else 1


def _train_loader(trainer: Trainer | None) -> Any:
    """The fit's training loader when it is a single loader with `state_dict`, else None."""
    if trainer is None or trainer.state.fn != "fit":
        return None
    loader = trainer.train_dataloader
    stateful = hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")
    return loader if stateful else None
