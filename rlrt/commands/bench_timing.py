"""Measuring tools shared by the benchmark sizes of `rlrt bench` (`rlrt.commands.bench`, and
`rlrt.commands.bench_paper` for the paper's): epoch and step timing, a timed `rlrt fit`, caches of
random features of a built cache's shapes, the machine's description."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback

from rlrt.cache.content import cache_identity
from rlrt.cache.format import Shapes
from rlrt.cache.sources import split_sources
from rlrt.cache.writer import SplitCacheWriter
from rlrt.engine.lightning_cli import RLRTCLI

# A measured fit: any device, nothing written, no validation, the epochs and steps timed.
MEASURING_TRAINER_ARGS = (
    "--trainer.accelerator=auto",
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.limit_val_batches=0",
    "--trainer.callbacks=rlrt.commands.bench_timing.EpochTimer",
)


def config_files(configs: Path, *, trainer: str, data: str, model: str) -> list[str]:
    """`--config` arguments of `configs/{trainer,data,model}/<name>.yaml`."""
    chosen = {"trainer": trainer, "data": data, "model": model}
    return [
        arg
        for kind, name in chosen.items()
        for arg in ("--config", str(configs / kind / f"{name}.yaml"))
    ]


class EpochTimer(Callback):
    """Wall time of each training epoch, and per epoch the time spent between steps (`waits`:
    fetching the next batch plus the loop's bookkeeping) and inside them (`steps`)."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.waits: list[float] = []
        self.steps: list[float] = []
        self._mark = 0.0
        self.first_batch_at: float | None = None  # perf_counter() at the first training batch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._mark = time.perf_counter()
        self.waits.append(0.0)
        self.steps.append(0.0)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = now
        self.waits[-1] += now - self._mark
        self._mark = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.steps[-1] += now - self._mark
        self._mark = now

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(time.perf_counter() - self._epoch_start)

    def wait_fraction(self, skip: int = 1) -> float:
        """Share of step time spent waiting, over the epochs after the first `skip`."""
        wait, step = sum(self.waits[skip:]), sum(self.steps[skip:])
        return wait / (wait + step)


def fit_once(args: list[str], epochs: int = 1):
    """Run `rlrt fit`; the CLI, its `EpochTimer`, and the seconds from the command's start
    (config parsed, model and data built, encoders loaded if needed) to its first batch."""
    start = time.perf_counter()
    cli = RLRTCLI(args=["fit", *args, f"--trainer.max_epochs={epochs}"], save_config_callback=None)
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, EpochTimer))
    return cli, timer, timer.first_batch_at - start


def fill_random_rows(array: np.ndarray, rng: np.random.Generator, chunk_mb: int = 64) -> None:
    """Standard-normal values into a (memory-mapped) array, a few MB at a time, so filling a
    cache of many GB never holds more than one chunk in memory."""
    row_bytes = max(int(np.prod(array.shape[1:])) * 4, 1)  # drawn as float32
    rows = max(1, chunk_mb * 2**20 // row_bytes)
    for first in range(0, array.shape[0], rows):
        block = array[first : first + rows]
        block[...] = rng.standard_normal(block.shape, dtype=np.float32)


def fill_random_cache(cache: Path, source: Path, root_args: list[str]) -> None:
    """A cache of `root_args`' train and val splits, random features shaped like `source`'s."""

    manifest = json.loads((source / "train" / "manifest.json").read_text())

    def shape(name: str) -> tuple[int, ...]:
        return np.load(source / "train" / f"{name}.npy", mmap_mode="r").shape

    tokens_i, tokens_t = shape("image_tokens"), shape("text_tokens")
    shapes = Shapes(
        tokens_i[1],
        tokens_i[2],
        tokens_i[3],
        shape("image_embedding")[1],
        tokens_t[2],
        tokens_t[3],
        shape("text_embedding")[1],
    )
    cli = RLRTCLI(args=root_args, run=False, save_config_callback=None)
    data = cli.datamodule
    data.prepare_data()
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        sources = split_sources(data, split)
        build = {
            **{k: manifest[k] for k in ("format_version", "dtype", "encoders")},
            **cache_identity(data, split),
            "content_sha256": sources.content_sha256,
            "root": str(data.root),
            "benchmark": "random",
        }
        folder = cache / split
        SplitCacheWriter.create(
            folder,
            build=build,
            ids=sources.ids,
            sample_image_row=sources.sample_image_row,
            num_images=len(sources.image_paths),
            shapes=shapes,
            image_stats=sources.image_stats,
        )
        writer = SplitCacheWriter(folder).open()
        for name, array in writer.arrays.items():
            if name.endswith("done") or name == "text_mask":
                array[:] = True
            else:
                fill_random_rows(array, rng)
        writer.finalize({**build, "complete": True})
    os.symlink((source / "dummy").resolve(), cache / "dummy")


def say(message: str) -> None:
    """A progress line; the parent process shows these while a size is measured."""
    print(f"rlrt bench: {message}", flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info
