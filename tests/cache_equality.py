"""What two feature caches built from one dataset and one config promise to share.

Manifests and everything that is not a feature (ids, masks, done flags) are equal. Feature
arrays are equal to within one float16 rounding step per element: the encoders' float32 results
depend, in their last bits, on which samples share a batch (padding length, matmul blocking), and
a cache built by another number of processes batches the samples differently. A last-bit
difference crosses a float16 rounding boundary in a small share of the elements, and then by
exactly one step; anything more is a real difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rlrt.cache.format import FEATURE_ARRAYS, first_difference

EXACT_ARRAYS = ("text_mask", "image_done", "text_done", "sample_image_row", "image_stats")
MAX_FLOAT16_STEPS = 1


def float16_steps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How many representable float16 values lie between `a` and `b`, element by element (0 where
    equal; +0 and -0 are equal). Both arrays are float16 of one shape."""

    def ordered(x: np.ndarray) -> np.ndarray:
        # float16 bit patterns as integers that sort like the values they encode
        bits = x.view(np.uint16).astype(np.int64)
        return np.where(bits & 0x8000, 0x8000 - bits, bits)

    return np.abs(ordered(a) - ordered(b))


def cache_differences(one: Path, two: Path) -> list[str]:
    """Every way two cache folders differ beyond the promise above, one line each (empty when
    they keep it)."""
    problems = []
    for split in ("train", "val", "test"):
        first = json.loads((one / split / "manifest.json").read_text())
        second = json.loads((two / split / "manifest.json").read_text())
        field = first_difference(first, second)
        if field is not None:
            problems.append(f"{split}/manifest.json: field {field!r} differs")
        if json.loads((one / split / "ids.json").read_text()) != json.loads(
            (two / split / "ids.json").read_text()
        ):
            problems.append(f"{split}/ids.json differs")
        for name in (*EXACT_ARRAYS, *FEATURE_ARRAYS):
            a, b = np.load(one / split / f"{name}.npy"), np.load(two / split / f"{name}.npy")
            where = f"{split}/{name}.npy"
            if a.shape != b.shape or a.dtype != b.dtype:
                problems.append(f"{where}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}")
            elif name in EXACT_ARRAYS or a.dtype != np.float16:
                if not np.array_equal(a, b):
                    problems.append(f"{where}: {int((a != b).sum())} elements differ")
            else:
                steps = float16_steps(a, b)
                if steps.max(initial=0) > MAX_FLOAT16_STEPS:
                    worst = tuple(
                        int(i) for i in np.unravel_index(int(steps.argmax()), steps.shape)
                    )
                    problems.append(
                        f"{where}: {int((steps > MAX_FLOAT16_STEPS).sum())} elements differ by "
                        f"more than {MAX_FLOAT16_STEPS} float16 step (worst {int(steps.max())} "
                        f"steps at {worst}: {a[worst]} vs {b[worst]})"
                    )
    return problems


def assert_same_cache(one: Path, two: Path) -> None:
    """`one` and `two` keep the promise of this module; the failure lists every difference."""
    problems = cache_differences(one, two)
    assert not problems, "caches differ:\n" + "\n".join(problems)
