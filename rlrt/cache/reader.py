"""Reading one split of the cache (`rlrt.cache.format` has the layout): opened with the cheap checks
(manifest, array shapes and dtypes, row ranges, a few sampled rows finite), rows gathered into
`Features`; `verify_split` checks every row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rlrt.cache.format import (
    CONTENT_FIELD,
    FEATURE_ARRAYS,
    FORMAT_VERSION,
    SCALE_DTYPE,
    STORAGE_DTYPES,
    CacheMismatchError,
    Dequantized,
    damaged,
    ids_digest,
    load_array,
    read_json,
)
from rlrt.cache.lock import lock_holder
from rlrt.features import Features

_OPEN_SAMPLE_ROWS = 8  # rows per float array checked for finite values when a split is opened


_VERIFY_CHUNK_BYTES = 64 * 2**20


class SplitCacheReader:
    """Read-only, memory-mapped access to one complete split (or the `dummy` folder).

    The feature attributes (`image_tokens`, `image_embedding`, `text_tokens`, `text_embedding`)
    read as float16 whatever the storage dtype: the float16 memmaps themselves, or `Dequantized`
    views of an int8 cache. `stored` holds the arrays as stored (values and `<name>_scale`).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        manifest_file = self.folder / "manifest.json"
        if not manifest_file.is_file():
            state = "an unfinished build" if (self.folder / "build.json").is_file() else "nothing"
            writer = lock_holder(self.folder.parent)
            if writer is not None:
                raise FileNotFoundError(
                    f"feature cache {self.folder} is not complete: `rlrt cache` ({writer}) is "
                    "building it now; wait for it to finish, then rerun"
                )
            raise FileNotFoundError(
                f"feature cache {self.folder} is not complete (found {state}); "
                "run `rlrt cache` with this config to build or resume it"
            )
        self.manifest: dict[str, Any] = read_json(manifest_file, dict)
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise CacheMismatchError(
                f"feature cache {self.folder} has format version "
                f"{self.manifest.get('format_version')}, this rlrt reads {FORMAT_VERSION}; "
                "rebuild it"
            )
        _check_manifest(self.manifest, manifest_file)
        self.ids: list[str] = read_json(self.folder / "ids.json", list)
        self.dtype: str = self.manifest["dtype"]
        names = [*FEATURE_ARRAYS, "text_mask"]
        if self.dtype == "int8":
            names += [f"{name}_scale" for name in FEATURE_ARRAYS]
        self.stored = {name: load_array(self.path(name)) for name in names}
        self.text_mask = self.stored["text_mask"]
        self.sample_image_row = load_array(self.folder / "sample_image_row.npy", mmap_mode=None)
        self._check_shapes()
        for name in FEATURE_ARRAYS:
            array = self.stored[name]
            if self.dtype == "int8":
                array = Dequantized(array, self.stored[f"{name}_scale"])
            setattr(self, name, array)
        self.check_rows(_sample_rows)

    def path(self, name: str) -> Path:
        return self.folder / (f"{name}.npy" if name != "ids" else "ids.json")

    def _check_shapes(self) -> None:
        """Every array has the shape and dtype the manifest and the other arrays imply (an int8
        cache's scales: the shape of their array without its last axis, float32)."""
        stored = self.stored
        n, m = len(self.ids), stored["image_tokens"].shape[0] if stored["image_tokens"].ndim else 0
        if not all(isinstance(i, str) for i in self.ids):
            raise damaged(self.path("ids"), "not a list of strings")
        if "num_samples" in self.manifest and self.manifest["num_samples"] != n:
            said = self.manifest["num_samples"]
            raise damaged(self.path("ids"), f"{n} ids, the manifest says {said}")
        tokens = stored["text_tokens"]
        layers = tokens.shape[1] if tokens.ndim == 4 else None
        pooling = self.manifest.get("token_pooling", {})
        kind = STORAGE_DTYPES[self.dtype]
        expected = {  # name: (shape with None where any size goes, dtype)
            "text_tokens": ((n, None, pooling.get("text_tokens"), None), kind),
            "text_mask": ((n, tokens.shape[2] if tokens.ndim == 4 else None), np.bool_),
            "text_embedding": ((n, None), kind),
            "image_tokens": ((None, layers, pooling.get("image_tokens"), None), kind),
            "image_embedding": ((m, None), kind),
        }
        if self.dtype == "int8":
            for name in FEATURE_ARRAYS:
                values = stored[name].shape if stored[name].ndim else (None,)
                expected[f"{name}_scale"] = (values[:-1], SCALE_DTYPE)
        expected["sample_image_row"] = ((n,), np.int64)
        for name, (shape, dtype) in expected.items():
            array = self.sample_image_row if name == "sample_image_row" else stored[name]
            fits = array.ndim == len(shape) and all(
                want is None or have == want for have, want in zip(array.shape, shape)
            )
            if not fits or array.dtype != dtype:
                want = "(" + ", ".join("*" if d is None else str(d) for d in shape) + ")"
                raise damaged(
                    self.path(name),
                    f"{array.dtype}{list(array.shape)}, expected {np.dtype(dtype)}{want}",
                )
        if m < 1:
            raise damaged(self.path("image_tokens"), "no image rows")
        rows = self.sample_image_row
        bad = np.flatnonzero((rows < -1) | (rows >= m))
        if len(bad):
            raise damaged(
                self.path("sample_image_row"),
                f"row {bad[0]} is {rows[bad[0]]}, outside -1..{m - 1}",
            )

    def check_rows(self, which) -> int:
        """Check the float arrays' rows `which(num_rows)` (an iterable of index arrays) are
        finite as read (dequantized), and an int8 cache's scales not negative; raise
        `CacheCorruptError` naming the first bad file and row (the scale file of an int8
        cache: its values cannot be non-finite). Returns the number of rows checked."""
        checked = 0
        for name in FEATURE_ARRAYS:
            array = getattr(self, name)
            scaled = isinstance(array, Dequantized)
            path = self.path(f"{name}_scale" if scaled else name)
            for index in which(array):
                block = np.asarray(array[index])
                finite = np.isfinite(block).reshape(len(index), -1).all(axis=1)
                if not finite.all():
                    row = int(index[int(np.argmin(finite))])
                    raise damaged(path, f"row {row} holds NaN or infinite values")
                if scaled:
                    signs = (np.asarray(array.scale[index]) >= 0).reshape(len(index), -1)
                    if not signs.all():
                        row = int(index[int(np.argmin(signs.all(axis=1)))])
                        raise damaged(path, f"row {row} holds a negative scale")
                checked += len(index)
        return checked

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


def _check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """The fields every manifest has, and the optional ones, of the right types."""
    required = {"format_version": int, "dtype": str, "encoders": dict, "complete": bool}
    optional = {
        "num_samples": int,
        "token_pooling": dict,
        "ids_sha256": str,
        "split": str,
        CONTENT_FIELD: str,
    }
    for key, kind in {**required, **optional}.items():
        if key not in manifest:
            if key in required:
                raise damaged(where, f"no {key!r} field")
            continue
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool) != (kind is bool):
            raise damaged(where, f"{key!r} is {manifest[key]!r}, not a {kind.__name__}")
    if manifest["complete"] is not True:
        raise damaged(where, f"complete={manifest['complete']!r}")
    if manifest["dtype"] not in STORAGE_DTYPES:
        known = " or ".join(STORAGE_DTYPES)
        raise damaged(where, f"dtype={manifest['dtype']!r}, this rlrt stores {known}")
    for key, value in manifest.get("token_pooling", {}).items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise damaged(where, f"token_pooling.{key} is {value!r}, not an int")


def _sample_rows(array: np.ndarray) -> Iterator[np.ndarray]:
    """A few rows, cheap for any size: the first, the last and some evenly spaced between."""
    n = len(array)
    if n:
        yield np.unique(np.linspace(0, n - 1, num=min(n, _OPEN_SAMPLE_ROWS)).round().astype(int))


def _all_rows(array: np.ndarray) -> Iterator[np.ndarray]:
    """Every row, in chunks of about `_VERIFY_CHUNK_BYTES`."""
    n = len(array)
    row_bytes = max(array[0].nbytes if n else 1, 1)
    step = max(1, _VERIFY_CHUNK_BYTES // row_bytes)
    for start in range(0, n, step):
        yield np.arange(start, min(start + step, n))


def verify_split(folder: Path) -> SplitCacheReader:
    """Open `folder` (the cheap checks) then check every row: finite values, rows flagged done,
    ids as the manifest's digest. Raises `CacheCorruptError` naming the first bad file/row."""
    reader = SplitCacheReader(folder)
    reader.check_rows(_all_rows)
    for kind in ("image", "text"):
        path = reader.folder / f"{kind}_done.npy"
        done = load_array(path)
        expected = len(reader.image_tokens if kind == "image" else reader.ids)
        if done.shape != (expected,) or done.dtype != np.bool_:
            raise damaged(path, f"{done.dtype}{list(done.shape)}, expected bool({expected},)")
        missing = np.flatnonzero(~np.asarray(done))
        if len(missing):
            raise damaged(path, f"{kind} row {missing[0]} was never written")
    digest = reader.manifest.get("ids_sha256")
    if digest is not None and ids_digest(reader.ids) != digest:
        raise damaged(reader.path("ids"), "the ids differ from the manifest's ids_sha256")
    return reader
