"""Writing one split of the cache (`rlrt.cache.format` has the layout): arrays allocated once, rows
written and marked done as the encoders produce them, the manifest written last."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from rlrt.cache.format import (
    FEATURE_ARRAYS,
    Shapes,
    array_specs,
    load_array,
    quantize,
    read_json_or_none,
)
from rlrt.engine.files import atomic_write_json


def _allocate(path: Path, shape: tuple[int, ...], dtype: Any) -> np.memmap:
    """Create a `.npy` file of `shape` and reserve its disk blocks now.

    A sparse file would only fail when a page is first written (SIGBUS, mid-build); reserving up
    front turns a full disk into one clear error before any work is done.
    """
    array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    size = path.stat().st_size
    try:
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as err:
        del array
        path.unlink(missing_ok=True)
        if err.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"not enough disk space for the feature cache: {path.name} needs "
                f"{size / 2**20:.1f} MiB in {path.parent}; free space or choose another folder",
            ) from err
        raise
    return array


class SplitCacheWriter:
    """Creates (or reopens, to resume) one split's arrays and writes rows by index.

    Several processes may write disjoint (or identical) rows of the same files; `create` runs on
    one process first, the others `open` after a barrier.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.arrays: dict[str, np.memmap] = {}

    @staticmethod
    def create(
        folder: Path,
        *,
        build: dict[str, Any],
        ids: list[str],
        sample_image_row: np.ndarray,
        num_images: int,
        shapes: Shapes,
        image_stats: np.ndarray | None = None,
    ) -> None:
        """Allocate every array, unless an identical build was started before (resume), stored
        as `build["dtype"]` (float16 when absent; see `array_specs`). `image_stats` (`(M, 2)`
        sizes and mtimes of the image files) is stored to count the files that changed when a
        stale cache is refused."""
        folder = Path(folder)
        build_file = folder / "build.json"
        if build_file.is_file() and read_json_or_none(build_file) == build:
            return  # same build interrupted earlier: keep the rows already done
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)
        specs = array_specs(len(ids), num_images, shapes, build.get("dtype", "float16"))
        for name, (shape, dtype) in specs.items():
            array = _allocate(folder / f"{name}.npy", shape, dtype)
            array.flush()
            del array
        np.save(folder / "sample_image_row.npy", sample_image_row.astype(np.int64))
        if image_stats is not None:
            np.save(folder / "image_stats.npy", np.asarray(image_stats, dtype=np.int64))
        (folder / "ids.json").write_text(json.dumps(ids))
        atomic_write_json(build_file, build)  # last: the allocation is complete

    def open(self) -> SplitCacheWriter:
        """Open the arrays for writing; int8 feature arrays (as allocated) with their scales."""
        for name in (
            "image_tokens",
            "image_embedding",
            "image_done",
            "text_tokens",
            "text_mask",
            "text_embedding",
            "text_done",
        ):
            self.arrays[name] = load_array(self.folder / f"{name}.npy", mmap_mode="r+")
        for name in FEATURE_ARRAYS:
            if self.arrays[name].dtype == np.int8:
                scale = f"{name}_scale"
                self.arrays[scale] = load_array(self.folder / f"{scale}.npy", mmap_mode="r+")
        return self

    def _put(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Store feature `values` `(B, ..., D)` in rows `rows` of array `name`, quantized when
        the array is int8."""
        if f"{name}_scale" in self.arrays:
            values, self.arrays[f"{name}_scale"][rows] = quantize(values)
        self.arrays[name][rows] = values

    def pending(self, kind: str) -> np.ndarray:
        """Row indices of `kind` (`image` or `text`) not written yet."""
        return np.flatnonzero(~np.asarray(self.arrays[f"{kind}_done"]))

    def write_images(self, rows: np.ndarray, tokens: Tensor, embedding: Tensor) -> None:
        """rows `(B,)`, tokens `(L_s, B, N_i, D_i)`, embedding `(B, E_i)`."""
        self._put("image_tokens", rows, tokens.transpose(0, 1).cpu().numpy())
        self._put("image_embedding", rows, embedding.cpu().numpy())
        self._mark("image", rows)

    def write_texts(
        self, rows: np.ndarray, tokens: Tensor, mask: Tensor, embedding: Tensor
    ) -> None:
        """rows `(B,)`, tokens `(L_s, B, N_t, D_t)`, mask `(B, N_t)`, embedding `(B, E_t)`."""
        self._put("text_tokens", rows, tokens.transpose(0, 1).cpu().numpy())
        self.arrays["text_mask"][rows] = mask.cpu().numpy()
        self._put("text_embedding", rows, embedding.cpu().numpy())
        self._mark("text", rows)

    def _mark(self, kind: str, rows: np.ndarray) -> None:
        for name, array in self.arrays.items():
            if name.startswith(kind) and not name.endswith("done"):
                array.flush()
        self.arrays[f"{kind}_done"][rows] = True  # only after the rows are on disk
        self.arrays[f"{kind}_done"].flush()

    def finalize(self, manifest: dict[str, Any]) -> None:
        """Check every row is done, then write the manifest (the split is complete from here)."""
        for kind in ("image", "text"):
            missing = len(self.pending(kind))
            if missing:
                raise RuntimeError(
                    f"feature cache {self.folder}: {missing} {kind} rows not written"
                )
        self.arrays.clear()
        atomic_write_json(self.folder / "manifest.json", manifest)
