"""Decoding an image file into the uint8 tensor every model input starts from, and the cheap check
that a file is an image at all (header, JPEG end marker)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .reasons import one_line

_JPEG_TAIL = 1024  # bytes searched for the end-of-image marker
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def load_image(path: Path, size: int, *, draft: bool = True) -> Tensor:
    """Decode `path` to RGB, resize the shorter side to `size` (bicubic), centre-crop.

    Returns uint8 `(3, size, size)`. Raises OSError (or another `IMAGE_ERRORS`) on bad files.
    `draft=False` turns off JPEG draft mode (benchmarks compare the two).
    """
    with Image.open(path) as img:
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
    try:
        with Image.open(path) as img:
            fmt = img.format
        if fmt == "JPEG":
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - _JPEG_TAIL))
                if b"\xff\xd9" not in fh.read():
                    return "unreadable image: truncated JPEG (no end-of-image marker)"
    except IMAGE_ERRORS as err:
        return f"unreadable image: {one_line(err)}"
    return None
