"""Whether a cache build fits on its disk: each split's size from its counts and the encoders'
shapes (`bytes_needed`, less what a resumed build holds already), refused in one line when the
free space is short (`check_disk_space`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from rlrt.cache.content import image_table
from rlrt.cache.format import (
    CacheSpaceError,
    Shapes,
    estimated_split_bytes,
)
from rlrt.engine.units import human_bytes


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


@dataclass(frozen=True)
class SplitCount:
    """What a split's size depends on besides the encoders' shapes: samples, image rows (at
    least 1, as `prepare_split` allocates) and the bytes of its `ids.json`."""

    num_samples: int
    num_images: int
    ids_bytes: int


DUMMY_COUNT = SplitCount(1, 1, len(json.dumps(["<dummy>"])))


def count_split(records) -> SplitCount:
    """The `SplitCount` of a split's records, without touching their files."""
    paths, _ = image_table(records)
    return SplitCount(len(records), max(len(paths), 1), len(json.dumps([r.id for r in records])))


def allocated_bytes(folder: Path) -> int:
    """Disk bytes held by the files in `folder` now (0 when it does not exist)."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_blocks * 512 for p in folder.iterdir() if p.is_file())


def bytes_needed(
    cache_dir: Path,
    counts: dict[str, SplitCount],
    shapes: Shapes,
    dtype: str,
    overwrite: bool = False,
) -> dict[str, int]:
    """`{folder name: bytes}` the folders `counts` (name -> count) of `cache_dir` still need,
    stored as `dtype`, where more than 0: each one's estimated size less the blocks its files
    hold now. A resumed build's arrays are allocated already (`_allocate` reserves them), and the
    files of a folder rebuilt are deleted before the new ones are allocated. A complete folder
    (with a manifest) needs nothing unless `overwrite`: it is either reused or refused (another
    config) by `claim`."""
    needed = {}
    for name, c in counts.items():
        folder = Path(cache_dir) / name
        if not overwrite and (folder / "manifest.json").is_file():
            continue
        size = estimated_split_bytes(c.num_samples, c.num_images, shapes, dtype, c.ids_bytes)
        held = allocated_bytes(folder)
        if size > held:
            needed[name] = size - held
    return needed


def existing_ancestor(path: Path) -> Path:
    """`path` if it exists, else its nearest existing parent folder."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


MARGIN_FRACTION = 0.05  # of the bytes needed: file-system overhead, estimates off by a little


MARGIN_BYTES = 64 * 2**20  # logs and checkpoints written beside the cache, other writers


def check_disk_space(
    cache_dir: Path,
    counts: dict[str, SplitCount],
    shapes: Shapes,
    dtype: str,
    overwrite: bool = False,
) -> None:
    """Refuse (`CacheSpaceError`, one line) a build whose remaining bytes (`bytes_needed`) plus
    a margin (`MARGIN_FRACTION` of them and `MARGIN_BYTES`) exceed the free space of the disk
    of `cache_dir` (or of its nearest existing parent); a float16 build is told the size of the
    int8 one when smaller. Nothing needed (every folder complete): no check."""
    folders = bytes_needed(cache_dir, counts, shapes, dtype, overwrite)
    needed = sum(folders.values())
    if needed == 0:
        return
    margin = int(needed * MARGIN_FRACTION) + MARGIN_BYTES
    folder = existing_ancestor(cache_dir)
    free = shutil.disk_usage(folder).free
    if needed + margin <= free:
        return
    advice = "free space or choose another --cache_dir"
    compact = sum(bytes_needed(cache_dir, counts, shapes, "int8", overwrite).values())
    if dtype == "float16" and compact < needed:
        advice = (
            "free space, choose another --cache_dir, or pass --storage_dtype int8 "
            f"(about {human_bytes(compact)})"
        )
    raise CacheSpaceError(
        f"not enough disk space for the feature cache {cache_dir}: {', '.join(folders)} need "
        f"about {human_bytes(needed)} ({dtype}) plus a margin of {human_bytes(margin)}, and "
        f"{human_bytes(free)} is free on the disk of {folder}; {advice}"
    )
