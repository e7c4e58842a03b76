"""`ResultsTable`: every run's settings as hyperparameters, every test's metrics as one table row.

Attach it to fits and tests (e.g. in a sweep's command) and the runs collect into one CSV without
extra code: each `test` appends one row holding the model's switches (`model.*`, with the layer
pairs as `model.layer_pairs`), the data module's settings (`data.*`), the perturbation protocol
of every perturbation callback attached (`MissingModality`, `ModalityNoise`: anything with a
`protocol()` method), the seed, the run directory and checkpoint, and the test metrics.

Appending is safe with concurrent runs on one machine: under an exclusive lock on
`<path>.lock`, the table is read, extended (new columns are added, older rows get blanks) and
written to a temporary file that is renamed into place, so a reader never sees half a table.
"""

from __future__ import annotations

import fcntl
import io
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
from lightning import Callback

from rlrt.engine.files import atomic_write_text

SKIPPED_HPARAMS = ("class_names",)  # and every `_`-prefixed field (jsonargparse's own)


def public(hparams: Any) -> dict[str, Any]:
    """The hyperparameters a person set: no `_instantiator` and the like, no class names."""
    return {
        k: v
        for k, v in dict(hparams).items()
        if k not in SKIPPED_HPARAMS and not str(k).startswith("_")
    }


def flatten(values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"<prefix>.a.b": 1}`; lists and None become strings / blanks."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        elif isinstance(value, (list, tuple)):
            flat[name] = " ".join(str(v) for v in value)
        else:
            flat[name] = value
    return flat


def run_settings(trainer: Any, pl_module: Any) -> dict[str, Any]:
    """The switches, data settings, perturbation protocol and seed of a run, flat."""
    settings = flatten(public(pl_module.hparams), "model")
    encoder = getattr(pl_module, "image_encoder", None)
    if encoder is not None and hasattr(encoder, "layer_indices"):
        settings["model.layer_pairs"] = len(encoder.layer_indices)
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        settings["data.class"] = type(datamodule).__name__
        settings.update(flatten(public(getattr(datamodule, "hparams", {})), "data"))
    for callback in trainer.callbacks:
        protocol = getattr(callback, "protocol", None)
        if callable(protocol):
            settings.update(protocol(pl_module))
    settings["seed"] = os.environ.get("PL_GLOBAL_SEED", "")
    return settings


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `<path>.lock` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append_row(path: str | Path, row: dict[str, Any]) -> pd.DataFrame:
    """Append `row` to the CSV table at `path` (created if absent), atomically; returns it."""
    path = Path(path)
    with locked(path):
        new = pd.DataFrame([row])
        if path.is_file() and path.stat().st_size:
            table = pd.concat([pd.read_csv(path), new], ignore_index=True)
        else:
            table = new
        buffer = io.StringIO()
        table.to_csv(buffer, index=False)
        atomic_write_text(path, buffer.getvalue())
    return table


class ResultsTable(Callback):
    """Log the run's settings as hyperparameters and append each test's metrics to a CSV.

    Args:
        path: the shared results table (CSV).
        log_hyperparams: also send the settings to the trainer's loggers (wandb, CSV, ...).
    """

    def __init__(self, *, path: str = "results/results.csv", log_hyperparams: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.log_hyperparams = log_hyperparams

    def _log_settings(self, trainer: Any, pl_module: Any) -> None:
        if not self.log_hyperparams:
            return
        settings = run_settings(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams(settings)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._log_settings(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._log_settings(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {
            key: float(value)
            for key, value in trainer.callback_metrics.items()
            if key.startswith("test/")
        }
        row = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "run_dir": str(trainer.log_dir or ""),
            "checkpoint": str(trainer.ckpt_path or ""),
            **run_settings(trainer, pl_module),
            **metrics,
        }
        append_row(self.path, row)
