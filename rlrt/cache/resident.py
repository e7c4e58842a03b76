"""A cached split held in a device's memory, its batches gathered there.

Training from memory-mapped arrays is bounded by the host: a fancy-index gather of random rows
runs on one thread at a few GB/s, about 2,000 samples/s at the paper's shapes (674 KB per sample),
far below what the head trains at on a GPU. A split that fits in the GPU's memory (MM-IMDB's
training split at the paper's shapes is about 10 GB) is copied there once and each batch is
gathered by the GPU; the loader then only deals out row numbers.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from rlrt.cache.reader import SplitCacheReader
from rlrt.features import Features

ResidentMode = Literal["auto", "always", "never"]
RESIDENT_MODES = ("auto", "always", "never")
# `auto` keeps a split in the GPU's memory when it takes at most this share of the free memory:
# the rest is the model's, its optimiser's and the activations'.
FREE_MEMORY_SHARE = 0.5
COPY_CHUNK_BYTES = 256 * 2**20  # host memory a copy to the device holds at a time


def stored_bytes(reader: SplitCacheReader) -> int:
    """Bytes of a split's stored arrays (what a device copy takes)."""
    return sum(array.nbytes for array in reader.stored.values()) + reader.sample_image_row.nbytes


def check_mode(mode: str) -> None:
    """Refuse, in one line, a `cache_in_device_memory` that is not one of `RESIDENT_MODES`."""
    if mode not in RESIDENT_MODES:
        raise ValueError(f"cache_in_device_memory must be one of {RESIDENT_MODES}, got {mode!r}")


def keep_on_device(
    mode: ResidentMode, device: torch.device, split_bytes: int, free_bytes: int | None
) -> bool:
    """Whether a split of `split_bytes` goes to `device`'s memory: always or never as told;
    `auto`: on a CUDA device when it takes at most `FREE_MEMORY_SHARE` of `free_bytes` (never on
    a CPU, where the memory-mapped reads are already in memory and numpy gathers faster)."""
    check_mode(mode)
    if mode != "auto":
        return mode == "always"
    return (
        device.type == "cuda"
        and free_bytes is not None
        and split_bytes <= (FREE_MEMORY_SHARE * free_bytes)
    )


def free_device_memory(device: torch.device) -> int | None:
    """Free bytes of a CUDA device; None for other devices."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def _to_device(array: np.ndarray, device: torch.device) -> Tensor:
    """A (memory-mapped) array as a tensor on `device`, copied a chunk of rows at a time."""
    dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
    target = torch.empty(array.shape, dtype=dtype, device=device)
    row_bytes = max(array[:1].nbytes, 1)
    rows = max(1, COPY_CHUNK_BYTES // row_bytes)
    for first in range(0, array.shape[0], rows):
        chunk = np.array(array[first : first + rows])  # read into (writable) host memory
        target[first : first + rows].copy_(torch.from_numpy(chunk))
    return target


class ResidentSplit:
    """The arrays of one cached split as tensors on one device, as stored (float16, or int8 with
    float32 scales, dequantised per batch on the device)."""

    def __init__(self, reader: SplitCacheReader, device: torch.device) -> None:
        self.device = device
        self.dtype = reader.dtype
        self.folder = reader.folder
        self.arrays = {name: _to_device(array, device) for name, array in reader.stored.items()}
        self.sample_image_row = torch.from_numpy(reader.sample_image_row).to(device)

    def _rows(self, name: str, index: Tensor) -> Tensor:
        """Rows `index` of feature array `name`, float16."""
        values = self.arrays[name].index_select(0, index)
        if self.dtype != "int8":
            return values
        scale = self.arrays[f"{name}_scale"].index_select(0, index)
        # as `rlrt.cache.format.dequantize`: float32 product, rounded once to float16
        return (values.float() * scale[..., None]).half()

    def gather(self, rows: Tensor) -> tuple[Features, Tensor]:
        """Features of samples `rows` `(B,)` (on this device) and `has_image` bool `(B,)`: the
        values `SplitCacheReader.gather` reads, gathered on the device."""
        image_rows = self.sample_image_row.index_select(0, rows)
        has_image = image_rows >= 0
        image_rows = image_rows.clamp(min=0)  # a sample without an image reads row 0, marked absent
        image_tokens = self._rows("image_tokens", image_rows).transpose(0, 1)  # (L_s, B, N_i, D_i)
        features = Features(
            image_tokens=image_tokens,
            image_mask=torch.ones(image_tokens.shape[1:3], dtype=torch.bool, device=self.device),
            image_embedding=self._rows("image_embedding", image_rows),
            text_tokens=self._rows("text_tokens", rows).transpose(0, 1),
            text_mask=self.arrays["text_mask"].index_select(0, rows),
            text_embedding=self._rows("text_embedding", rows),
        )
        return features, has_image
