"""What the fake-dataset writers share: JPEG bytes, staged writing, the expected outcome."""

from __future__ import annotations

import colorsys
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass
class FakeDataset:
    """What a fake writer wrote and what the reader must make of it.

    `kept`: split -> ids the reader keeps, in file order; `dropped`: `(split, id, reason kind)`
    of each sample the reader must report (the kind is the reason up to its first colon);
    `texts` / `labels`: id -> text and class index of each kept sample; `outside`: the folder
    beside the root that path-escaping entries point to (it must never be read).
    """

    root: Path
    kept: dict[str, list[str]]
    dropped: set[tuple[str, str, str]] = field(default_factory=set)
    texts: dict[str, str] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    outside: Path | None = None


def class_colour(index: int, num_classes: int) -> tuple[int, int, int]:
    """A saturated RGB colour per class, hues spread around the circle."""
    r, g, b = colorsys.hsv_to_rgb(index / max(num_classes, 1), 0.9, 0.9)
    return round(255 * r), round(255 * g), round(255 * b)


def jpeg_bytes(
    width: int = 48,
    height: int = 72,
    seed: int = 0,
    colour: tuple[int, int, int] | None = None,
) -> bytes:
    """A `width x height` RGB JPEG: uniform noise (large, so that cutting it in half cuts the
    scan data), or `colour` (a class signal a tiny encoder can pick up) plus smooth shading and
    mild noise, which compresses like a photo (about 47 KB at 500 x 750)."""
    rng = np.random.default_rng(seed)
    if colour is None:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    else:
        coarse = rng.normal(0.0, 40.0, (3, 6, 4)).astype(np.float32)  # (3, 6, 4): channel, h, w
        shading = np.stack(
            [
                np.asarray(
                    Image.fromarray(c, "F").resize((width, height), Image.Resampling.BICUBIC)
                )
                for c in coarse
            ],
            axis=-1,
        )  # (H, W, 3)
        noisy = np.asarray(colour, np.float64) + shading + rng.normal(0, 3.0, (height, width, 3))
        pixels = np.clip(noisy, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def truncated(data: bytes) -> bytes:
    """The first half of a file: a JPEG cut in its scan data, as an interrupted download."""
    return data[: len(data) // 2]


def outside_dir(root: Path) -> Path:
    """The folder beside `root` that path-escaping entries of a fake point to."""
    return root.parent / f"{root.name}-outside"


@contextmanager
def staged_dir(root: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `root` to write into; rename it to `root` on success.

    A half-written fake never appears at `root`; `root` must not exist or be an empty folder.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        yield tmp
        os.rename(tmp, root)  # fails if root is a non-empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
