"""The frozen-feature cache: pooled `Features` stored once, read by every later epoch.

Layout of a cache folder (plain `.npy` arrays and JSON; nothing is pickled):

    <cache>/dummy/            the dummy inputs' features (all-ones image, empty text), one row each
    <cache>/<split>/
        manifest.json         written last: its presence marks the split complete
        build.json            what is being built (checked before a killed build is resumed)
        ids.json              sample ids, in row order
        sample_image_row.npy  (N,) int64: each sample's row in the image arrays (-1: no image)
        image_stats.npy       (M, 2) int64: each image file's size and mtime (ns) when built
        image_tokens.npy      (M, L_s, N_i, D_i) float16, one row per distinct image
        image_embedding.npy   (M, E_i) float16
        image_done.npy        (M,) bool: rows written and flushed
        text_tokens.npy       (N, L_s, N_t, D_t) float16, one row per sample
        text_mask.npy         (N, N_t) bool
        text_embedding.npy    (N, E_t) float16
        text_done.npy         (N,) bool

Arrays are memory-mapped for reading. Images are stored once per distinct image file (SNLI-VE
serves ~18 hypotheses per image). The image mask is all True by construction and not stored.

Storage dtype (the manifest's `dtype`, chosen by `rlrt cache --storage_dtype`): `float16` as
above, or `int8`, about half the bytes: each of the four feature arrays is stored as int8 values
`round(x / s)` with one float32 scale `s = max|x| / 127` per feature vector (the last axis) in
`<name>_scale.npy`, shaped like the array without its last axis (e.g. `image_tokens_scale.npy`
`(M, L_s, N_i)`); a zero vector has `s = 0` and reads back as zeros. A value is off by at most
`s / 2`. Readers dequantize when they gather rows: they see float16 either way.

`<cache>/.rlrt-cache.lock` is held (`flock`, exclusive) by the `rlrt cache` writing the folder;
it holds `{"pid": N}` of that process while held, `{}` after. A reader refuses an incomplete
split while it is held.

Opening a split checks what is cheap: the manifest's fields, that every array file opens with the
shape and dtype the others imply, that `sample_image_row` is in range, and that a few sampled rows
are finite. `verify_split` (`rlrt cache --verify`) checks every row.

The manifest's `content_sha256` (`rlrt.cache.content.content_fingerprint`) hashes what the
features depend on: every sample's text and the size and modification time of its image file.
Training from the cache recomputes it (one `stat` per image file, no decoding) and refuses a cache
whose dataset files changed since it was built (`check_content`).

This module holds the layout's constants, the errors, the storage dtypes' arithmetic and the
manifest comparisons; `reader` and `writer` open and fill a split, `lock` is the write lock, and
`rlrt.cache.content` computes and checks the content fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# int8 caches keep version 1: an rlrt that predates them refuses their manifest's dtype
FORMAT_VERSION = 1


STORAGE_DTYPES = {"float16": np.dtype(np.float16), "int8": np.dtype(np.int8)}


SCALE_DTYPE = np.dtype(np.float32)


REBUILD = "rebuild it with `rlrt cache` (same config) and --overwrite"


CONTENT_FIELD = "content_sha256"  # the manifest field of `rlrt.cache.content.content_fingerprint`
FEATURE_ARRAYS = ("image_tokens", "image_embedding", "text_tokens", "text_embedding")


class CacheMismatchError(ValueError):
    """A cache built for another configuration than the run's."""


class CacheStaleError(CacheMismatchError):
    """A cache built from dataset files that changed since (same ids, other contents)."""


class CacheCorruptError(ValueError):
    """A cache file that is damaged: unreadable, of the wrong shape or type, or non-finite."""


class CacheBusyError(ValueError):
    """The cache folder is being written by another `rlrt cache`."""


class CacheSpaceError(ValueError):
    """The cache would not fit in the free space of its disk (found before any work)."""


class CacheMemoryError(ValueError):
    """A cached split asked to stay in a device's memory (`cache_in_device_memory: always`) does
    not fit there."""


def damaged(path: Path, what: str) -> CacheCorruptError:
    return CacheCorruptError(f"feature cache file {path} is damaged ({what}); {REBUILD}")


def read_json(path: Path, kind: type | None = None) -> Any:
    """The JSON in `path` (of type `kind` if given); a damaged file raises `CacheCorruptError`."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise damaged(Path(path), "missing") from None
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise damaged(Path(path), f"not valid JSON: {' '.join(str(err).split())}") from None
    if kind is not None and not isinstance(value, kind):
        raise damaged(Path(path), f"a JSON {type(value).__name__}, not a JSON {kind.__name__}")
    return value


def read_json_or_none(path: Path) -> Any:
    """`read_json(path)`, or None when the file is missing, unreadable or damaged."""
    try:
        return read_json(path)
    except (OSError, CacheCorruptError):
        return None


def load_array(path: Path, mmap_mode: str | None = "r") -> np.ndarray:
    """`np.load` of a cache array; a missing or unreadable file raises `CacheCorruptError`."""
    path = Path(path)
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise damaged(path, "missing") from None
    except (OSError, ValueError, EOFError) as err:
        what = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, EOFError) or (path.is_file() and path.stat().st_size == 0):
            what = "empty or truncated file"
        raise damaged(path, f"not a readable .npy array: {what}") from None


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


def quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature vectors `(..., D)` (any float dtype) -> int8 values `(..., D)` and float32 scales
    `(...)`: `s = max|x| / 127` per vector, values `round(x / s)`. A zero vector gets `s = 0` and
    values 0; a vector holding NaN or inf gets a non-finite `s` (found by the reader's checks)."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.abs(x).max(axis=-1) / np.float32(127)
    usable = (np.isfinite(scale) & (scale > 0))[..., None]
    ratio = np.divide(x, scale[..., None], out=np.zeros_like(x), where=usable)
    return np.clip(np.rint(ratio), -127, 127).astype(np.int8), scale


def dequantize(values: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int8 values `(..., D)` and scales `(...)` -> float16 `(..., D)`."""
    return (values.astype(np.float32) * scale[..., None]).astype(np.float16)


class Dequantized:
    """An int8 feature array `(R, ..., D)` with its scales `(R, ...)`, read as float16: indexing
    the first axis (an int, slice or index array) returns the float16 rows; `np.asarray` gives
    the whole array (as `np.asarray` of a float16 memmap would)."""

    dtype = np.dtype(np.float16)

    def __init__(self, values: np.ndarray, scale: np.ndarray) -> None:
        self.values = values
        self.scale = scale

    @property
    def shape(self) -> tuple[int, ...]:
        return self.values.shape

    @property
    def ndim(self) -> int:
        return self.values.ndim

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: Any) -> np.ndarray:
        return dequantize(np.asarray(self.values[index]), np.asarray(self.scale[index]))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def array_specs(
    num_samples: int, num_images: int, shapes: Shapes, dtype: str = "float16"
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """`{file stem: (shape, dtype)}` of the arrays `SplitCacheWriter.create` allocates for
    `num_samples` samples and `num_images` image rows stored as `dtype` (float16 or int8)."""
    n, m, s, stored = num_samples, num_images, shapes, STORAGE_DTYPES[dtype]
    specs = {
        "image_tokens": ((m, s.layers, s.image_tokens, s.image_width), stored),
        "image_embedding": ((m, s.image_embed), stored),
        "image_done": ((m,), np.dtype(np.bool_)),
        "text_tokens": ((n, s.layers, s.text_tokens, s.text_width), stored),
        "text_mask": ((n, s.text_tokens), np.dtype(np.bool_)),
        "text_embedding": ((n, s.text_embed), stored),
        "text_done": ((n,), np.dtype(np.bool_)),
    }
    if dtype == "int8":
        for name in FEATURE_ARRAYS:
            specs[f"{name}_scale"] = (specs[name][0][:-1], SCALE_DTYPE)
    return specs


_BLOCK = 4096


_SMALL_FILES = 16 * 2**10  # build.json and manifest.json: a few KiB each


def estimated_split_bytes(
    num_samples: int, num_images: int, shapes: Shapes, dtype: str, ids_bytes: int = 0
) -> int:
    """Disk bytes of one split folder as `SplitCacheWriter.create` lays it out: every array
    (rows x per-row bytes, a 128-byte `.npy` header, rounded up to whole 4 KiB blocks), the
    sample-row and image-stats arrays, `ids_bytes` of `ids.json` and the small JSON files."""

    def on_disk(nbytes: int) -> int:
        return -(-(nbytes + 128) // _BLOCK) * _BLOCK

    arrays = array_specs(num_samples, num_images, shapes, dtype).values()
    total = sum(on_disk(int(np.prod(shape)) * kind.itemsize) for shape, kind in arrays)
    total += on_disk(8 * num_samples) + on_disk(16 * num_images)  # sample_image_row, image_stats
    return total + on_disk(ids_bytes) + _SMALL_FILES
