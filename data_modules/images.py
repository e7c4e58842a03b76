"""Decoding an image file into the uint8 tensor every model input starts from, and the cheap check
that a file is an image at all (header, JPEG end marker)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .reasons import not_a_file, one_line

_JPEG_TAIL = 1024  # bytes searched for the end-of-image marker
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: Path, size: int, *, draft: bool = True) -> Tensor:
    """Decode `path` to RGB, resize the shorter side to `size` (bicubic), centre-crop.

    Returns uint8 `(3, size, size)`. Raises OSError (or another `IMAGE_ERRORS`) on bad files.
    `draft=False` turns off JPEG draft mode (benchmarks compare the two).
    """
    with open_image(path) as (img, _):
        is_jpeg = img.format == "JPEG"
        if draft and is_jpeg:
            img.draft("RGB", (size, size))  # DCT-domain downscale, never below `size`
        img = img.convert("RGB")
        if is_jpeg and _grey_filled(img):
            raise OSError(_GREY_FILL)
        w, h = img.size
        side = min(w, h)
        left, top = (w - side) / 2, (h - side) / 2
        # Resizing the centred square is resize-shorter-side-then-crop in one resampling pass.
        img = img.resize(
            (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
        )
        array = np.asarray(img, dtype=np.uint8)  # (S, S, 3)
    # The copies are numpy's (one thread): torch's intra-op threads, idle-spinning beside a busy
    # process, made the same copies 100x slower in a DataLoader without workers.
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))  # (3, S, S)


_GREY_FILL = (
    "truncated (the bottom rows decode as the grey fill of missing JPEG data: the file was cut "
    "and ends with an end-of-image marker)"
)


def _grey_filled(img: Image.Image) -> bool:
    """Whether a decoded RGB JPEG ends in libjpeg's fill for missing scan data.

    A JPEG cut in its scan data and closed by an end-of-image marker decodes without an error:
    libjpeg zero-fills the missing blocks, which decode as exactly (128, 128, 128). A last row of
    only that value, under a first row that is not, is taken as such a cut (a photo whose bottom
    row is exactly uniform mid-grey is dropped too; a cut progressive JPEG is not caught).
    """
    w, h = img.size
    if h < 2:
        return False
    last = np.asarray(img.crop((0, h - 1, w, h)))
    if not (last == 128).all():
        return False
    return not (np.asarray(img.crop((0, 0, w, 1))) == 128).all()


def probe_image(path: Path) -> str | None:
    """Cheap image check: header parses; JPEGs end with the end-of-image marker.

    Returns None when fine, else a reason ("unreadable image: ...").
    """
    kind = not_a_file(path)
    if kind is not None:
        return f"unreadable image: {kind}, not an image file: {path}"
    try:
        with open_image(path) as (img, handle):
            if img.format == "JPEG":
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - _JPEG_TAIL))
                if b"\xff\xd9" not in handle.read():
                    return "unreadable image: truncated JPEG (no end-of-image marker)"
    except IMAGE_ERRORS as err:
        return f"unreadable image: {one_line(err)}"
    return None


@contextmanager
def open_image(path: Path) -> Iterator[tuple[Image.Image, BinaryIO]]:
    """`Image.open` of `path` (lazy: the header is read) and the open file, which must be a
    regular one (`open_regular`); closed on leaving."""
    with open_regular(path) as handle:
        try:
            img = Image.open(handle)
        except Image.UnidentifiedImageError as err:  # say the path, not the handle's repr
            raise Image.UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from err
        with img:
            yield img, handle


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading in binary, or OSError when it is no regular file.

    Opened without blocking: a FIFO put where an image was (after the set-up checks, say) would
    otherwise wait for a writer forever, in a DataLoader worker. A regular file reads as usual.
    """
    handle = open(path, "rb", opener=_open_nonblocking)  # noqa: SIM115 - returned open
    try:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(f"not a regular file: {path}")
        os.set_blocking(handle.fileno(), True)
    except BaseException:
        handle.close()
        raise
    return handle


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)
