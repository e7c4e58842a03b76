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

`SaveOnTerminate` makes a `fit` stopped by SIGTERM (a batch scheduler preempting the job) resumable:
Lightning stops the loops after the batch in progress; the callback writes `last.ckpt` at the step
reached, mid-epoch, and `rlrt` exits with 143 (128 + SIGTERM), which schedulers read as "requeue".
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rlrt.engine.checkpoints import save_checkpoint_atomically


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


class SaveOnTerminate(Callback):
    """Save a resumable `last.ckpt` when a `fit` is stopped by SIGTERM.

    On one device, the checkpoint is written at the end of the batch during which the signal
    came (the point where the step checkpoints are written, so `--ckpt_path last` resumes exactly
    there); under DDP, where Lightning stops all ranks together before the next batch, and when
    the signal came during validation, it is written when the loops stop. The path goes with the
    `SIGTERMException` (`rlrt_checkpoint`) for the one line `rlrt` prints before exiting with 143.
    Nothing is saved when checkpointing is off or before the first training step.
    """

    def __init__(self) -> None:
        self.saved: str | None = None
        self._saved_step: int | None = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.received_sigterm and trainer.world_size == 1:
            self._save(trainer)

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        try:
            if self._saved_step != trainer.global_step and not trainer.sanity_checking:
                self._save(trainer)
        except Exception as err:  # say so in the exit line rather than hide the termination
            exception.rlrt_checkpoint_error = " ".join(str(err).split())  # type: ignore[attr-defined]
        exception.rlrt_checkpoint = self.saved  # type: ignore[attr-defined]
        exception.rlrt_step = self._saved_step  # type: ignore[attr-defined]

    def _save(self, trainer: Trainer) -> None:
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or trainer.global_step == 0:
            return
        if callback.save_last is True and not callback.save_weights_only:
            callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
            path = callback.last_model_path
        else:  # no `last.ckpt` kept, a link to the best one, or weights only: a full one
            path = callback.format_checkpoint_name({}, ModelCheckpoint.CHECKPOINT_NAME_LAST)
            save_checkpoint_atomically(trainer, path, weights_only=False)
            callback._last_global_step_saved = trainer.global_step
        self.saved, self._saved_step = str(path), trainer.global_step


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
