"""Tiny datasets written from raw records, for the bad-input and fuzz tests.

Each writer takes the raw content as a reader would meet it (ids, JSON text, CSV lines, JSONL
lines: possibly malformed) and writes it in the dataset's real layout, with one small valid
image per name that can be a file name. Unlike the `write_fake_*` writers they predict nothing:
the tests compare what the reader kept and dropped with what was written.
"""

from __future__ import annotations

import json
from pathlib import Path

from .common import jpeg_bytes

_JPEG = jpeg_bytes(16, 16)


def _try_write(path: Path, data: bytes, root: Path) -> bool:
    """Write `data` at `path` if it lies inside `root` (an id may be `../x` or absolute) and the
    OS takes that name (it may be too long, hold a NUL, ...)."""
    try:
        if not path.resolve().is_relative_to(root.resolve()):
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except (OSError, ValueError):
        return False
    return True


def write_raw_mmimdb(
    root: Path, split_json: str | bytes, movies: dict[str, str | bytes], images: bool = True
) -> Path:
    """MM-IMDB `dataset/` layout: `split.json` as given, `dataset/<id>.json` with each movie's
    JSON text (and a poster `dataset/<id>.jpeg` when `images`)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset").mkdir(exist_ok=True)
    data = split_json.encode("utf-8") if isinstance(split_json, str) else split_json
    (root / "split.json").write_bytes(data)
    for movie_id, text in movies.items():
        raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        _try_write(root / "dataset" / f"{movie_id}.json", raw, root)
        if images:
            _try_write(root / "dataset" / f"{movie_id}.jpeg", _JPEG, root)
    return root


def mmimdb_split(train: list, dev: list | None = None, test: list | None = None) -> str:
    return json.dumps({"train": train, "dev": dev or [], "test": test or []})


def write_raw_snli_ve(root: Path, train_lines: list[bytes], image_ids: list[str]) -> Path:
    """SNLI-VE layout: `snli_ve_train.jsonl` of the given lines (dev and test empty) and
    `flickr30k_images/<id>.jpg` per image id."""
    (root / "flickr30k_images").mkdir(parents=True, exist_ok=True)
    (root / "snli_ve_train.jsonl").write_bytes(b"\n".join(train_lines) + b"\n")
    for name in ("snli_ve_dev.jsonl", "snli_ve_test.jsonl"):
        (root / name).write_bytes(b"")
    for image_id in image_ids:
        _try_write(root / "flickr30k_images" / f"{image_id}.jpg", _JPEG, root)
    return root


def write_raw_food101(root: Path, train_lines: list[bytes], images: list[tuple[str, str]]) -> Path:
    """UPMC-Food101 layout: `texts/train_titles.csv` of the given lines (test CSV empty) and
    `images/train/<class>/<name>` per (class, file name)."""
    (root / "texts").mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "texts" / "train_titles.csv").write_bytes(b"\n".join(train_lines) + b"\n")
    (root / "texts" / "test_titles.csv").write_bytes(b"")
    for cls, name in images:
        _try_write(root / "images" / "train" / cls / name, _JPEG, root)
    return root


def write_image(path: Path) -> bool:
    """A small valid JPEG at `path`, if the OS takes that name."""
    return _try_write(path, _JPEG, path.parent)
