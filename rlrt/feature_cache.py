"""The frozen-feature cache: pooled `Features` stored once, read by every later epoch.

Layout of a cache folder (plain `.npy` arrays and JSON; nothing is pickled):

    <cache>/dummy/            the dummy inputs' features (all-ones image, empty text), one row each
    <cache>/<split>/
        manifest.json         written last: its presence marks the split complete
        build.json            what is being built (checked before a killed build is resumed)
        ids.json              sample ids, in row order
        sample_image_row.npy  (N,) int64: each sample's row in the image arrays (-1: no image)
        image_tokens.npy      (M, L_s, N_i, D_i) float16, one row per distinct image
        image_embedding.npy   (M, E_i) float16
        image_done.npy        (M,) bool: rows written and flushed
        text_tokens.npy       (N, L_s, N_t, D_t) float16, one row per sample
        text_mask.npy         (N, N_t) bool
        text_embedding.npy    (N, E_t) float16
        text_done.npy         (N,) bool

Arrays are memory-mapped for reading. Images are stored once per distinct image file (SNLI-VE
serves ~18 hypotheses per image). The image mask is all True by construction and not stored.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlrt.features import Features
from rlrt.io import atomic_write_json

FORMAT_VERSION = 1
STORAGE_DTYPE = np.float16


class CacheMismatchError(ValueError):
    """A cache built for another configuration than the run's."""


def ids_digest(ids: list[str]) -> str:
    """A short hash of the sample ids in order (detects a different or partial dataset)."""
    digest = hashlib.sha256()
    for sample_id in ids:
        digest.update(sample_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def first_difference(saved: Any, expected: Any, prefix: str = "") -> str | None:
    """The dotted path of the first field where two JSON-like values differ, or None."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        for key in sorted(set(saved) | set(expected)):
            found = first_difference(saved.get(key), expected.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if saved == expected else prefix.rstrip(".")


def _lookup(value: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def check_fields(manifest: dict[str, Any], expected: dict[str, Any], where: Path) -> None:
    """Raise `CacheMismatchError` naming the first field of `expected` where `manifest` differs."""
    subset = {key: manifest.get(key) for key in expected}
    field = first_difference(subset, expected)
    if field is not None:
        raise CacheMismatchError(
            f"feature cache {where} was built with {field}={_lookup(subset, field)!r} but this run "
            f"has {_lookup(expected, field)!r}; rebuild it with `rlrt cache` for this config or "
            "point data.feature_cache elsewhere"
        )


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


@dataclass(frozen=True)
class Shapes:
    """Per-row shapes of the stored features."""

    layers: int
    image_tokens: int
    image_width: int
    image_embed: int
    text_tokens: int
    text_width: int
    text_embed: int


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
    ) -> None:
        """Allocate every array, unless an identical build was started before (resume)."""
        folder = Path(folder)
        build_file = folder / "build.json"
        if build_file.is_file() and json.loads(build_file.read_text()) == build:
            return  # same build interrupted earlier: keep the rows already done
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "manifest.json").unlink(missing_ok=True)
        n, m, s = len(ids), num_images, shapes
        specs = {
            "image_tokens": ((m, s.layers, s.image_tokens, s.image_width), STORAGE_DTYPE),
            "image_embedding": ((m, s.image_embed), STORAGE_DTYPE),
            "image_done": ((m,), np.bool_),
            "text_tokens": ((n, s.layers, s.text_tokens, s.text_width), STORAGE_DTYPE),
            "text_mask": ((n, s.text_tokens), np.bool_),
            "text_embedding": ((n, s.text_embed), STORAGE_DTYPE),
            "text_done": ((n,), np.bool_),
        }
        for name, (shape, dtype) in specs.items():
            array = _allocate(folder / f"{name}.npy", shape, dtype)
            array.flush()
            del array
        np.save(folder / "sample_image_row.npy", sample_image_row.astype(np.int64))
        (folder / "ids.json").write_text(json.dumps(ids))
        atomic_write_json(build_file, build)  # last: the allocation is complete

    def open(self) -> SplitCacheWriter:
        for name in (
            "image_tokens",
            "image_embedding",
            "image_done",
            "text_tokens",
            "text_mask",
            "text_embedding",
            "text_done",
        ):
            self.arrays[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r+")
        return self

    def pending(self, kind: str) -> np.ndarray:
        """Row indices of `kind` (`image` or `text`) not written yet."""
        return np.flatnonzero(~np.asarray(self.arrays[f"{kind}_done"]))

    def write_images(self, rows: np.ndarray, tokens: Tensor, embedding: Tensor) -> None:
        """rows `(B,)`, tokens `(L_s, B, N_i, D_i)`, embedding `(B, E_i)`."""
        self.arrays["image_tokens"][rows] = tokens.transpose(0, 1).cpu().numpy()
        self.arrays["image_embedding"][rows] = embedding.cpu().numpy()
        self._mark("image", rows)

    def write_texts(
        self, rows: np.ndarray, tokens: Tensor, mask: Tensor, embedding: Tensor
    ) -> None:
        """rows `(B,)`, tokens `(L_s, B, N_t, D_t)`, mask `(B, N_t)`, embedding `(B, E_t)`."""
        self.arrays["text_tokens"][rows] = tokens.transpose(0, 1).cpu().numpy()
        self.arrays["text_mask"][rows] = mask.cpu().numpy()
        self.arrays["text_embedding"][rows] = embedding.cpu().numpy()
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


class SplitCacheReader:
    """Read-only, memory-mapped access to one complete split (or the `dummy` folder)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest_file = self.folder / "manifest.json"
        if not manifest_file.is_file():
            state = "an unfinished build" if (self.folder / "build.json").is_file() else "nothing"
            raise FileNotFoundError(
                f"feature cache {self.folder} is not complete (found {state}); "
                "run `rlrt cache` with this config to build or resume it"
            )
        self.manifest = json.loads(manifest_file.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheMismatchError(
                f"feature cache {self.folder} has format version "
                f"{self.manifest.get('format_version')}, this rlrt reads {FORMAT_VERSION}; "
                "rebuild it"
            )

        def load(name: str) -> np.ndarray:
            return np.load(self.folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)

        self.image_tokens = load("image_tokens")
        self.image_embedding = load("image_embedding")
        self.text_tokens = load("text_tokens")
        self.text_mask = load("text_mask")
        self.text_embedding = load("text_embedding")
        self.sample_image_row = np.load(self.folder / "sample_image_row.npy", allow_pickle=False)
        self.ids: list[str] = json.loads((self.folder / "ids.json").read_text())

    def __len__(self) -> int:
        return len(self.ids)

    def gather(self, rows: np.ndarray) -> tuple[Features, Tensor]:
        """Features of the samples `rows` `(B,)` in float16 as stored, and `has_image` bool `(B,)`.

        Kept float16: the model casts to its own dtype on its own device (half the bytes to move
        to a GPU, and no float32 copy made here). A sample without an image file gets image row
        0's values; the caller marks it absent.
        """
        image_rows = self.sample_image_row[rows]
        has_image = image_rows >= 0
        image_rows = np.where(has_image, image_rows, 0)

        def tensor(array: np.ndarray, index: np.ndarray) -> Tensor:
            return torch.from_numpy(np.ascontiguousarray(array[index]))

        def layers_first(array: np.ndarray, index: np.ndarray) -> Tensor:
            """Stored rows `(B, L_s, N, D)` -> `(L_s, B, N, D)`, a transposed view: no second
            copy here (the model's dtype cast makes the one it needs, per layer slices work on
            strides)."""
            return torch.from_numpy(array[index]).transpose(0, 1)

        image_tokens = layers_first(self.image_tokens, image_rows)  # (L_s, B, N_i, D_i)
        features = Features(
            image_tokens=image_tokens,
            image_mask=torch.ones(image_tokens.shape[1:3], dtype=torch.bool),
            image_embedding=tensor(self.image_embedding, image_rows),
            text_tokens=layers_first(self.text_tokens, rows),
            text_mask=torch.from_numpy(np.ascontiguousarray(self.text_mask[rows])),
            text_embedding=tensor(self.text_embedding, rows),
        )
        return features, torch.from_numpy(has_image)
