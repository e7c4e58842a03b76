"""A tiny fake MM-IMDB in either real layout, with the dirt the reader must handle.

`write_fake_mmimdb(tmp_path, layout)` writes `tmp_path/mmimdb` (the root) and, next to it,
`tmp_path/outside/` (files that ids and symlinks point to and that must never be read).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

Layout = Literal["dataset", "images_labels"]


@dataclass
class FakeMMIMDB:
    """What was written and what the reader must make of it.

    `movies`: id -> JSON content of the good movies; `kept`: split -> good movie ids, in
    split.json order; `bad`: (split, id, reason kind, level) with level "movie" (rejected while
    reading the JSON, reported under the movie id) or "sample" (rejected per sample, reported
    under the sample id: `<id>#<k>` with `text_unit="all"`).
    """

    root: Path
    movies: dict[str, dict[str, Any]]
    kept: dict[str, list[str]]
    bad: list[tuple[str, str, str, str]] = field(default_factory=list)

    def expected_bad(self, text_unit: str) -> set[tuple[str, str, str]]:
        out = set()
        for split, movie_id, kind, level in self.bad:
            if level == "sample" and text_unit == "all":
                n = len(self.movies.get(movie_id, {}).get("plot") or [""])
                out.update((split, f"{movie_id}#{k}", kind) for k in range(n))
            else:
                out.add((split, movie_id, kind))
        return out


def jpeg_bytes(width: int = 48, height: int = 72, seed: int = 0) -> bytes:
    """A noisy RGB JPEG (noise keeps it large enough to truncate meaningfully)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_fake_mmimdb(base: Path, layout: Layout = "dataset") -> FakeMMIMDB:
    root, outside = base / "mmimdb", base / "outside"
    json_dir = root / ("dataset" if layout == "dataset" else "labels")
    image_dir = root / ("dataset" if layout == "dataset" else "images")
    for folder in (json_dir, image_dir, outside):
        folder.mkdir(parents=True, exist_ok=True)

    def movie(movie_id: str, *, image: bytes | None = b"jpeg", **content: Any) -> None:
        if content:
            (json_dir / f"{movie_id}.json").write_text(json.dumps(content), "utf-8")
        if image is not None:
            (image_dir / f"{movie_id}.jpeg").write_bytes(
                jpeg_bytes() if image == b"jpeg" else image
            )

    good = {
        "0000001": {
            "plot": ["A short plot.", "A much longer second plot about a family."],
            "genres": ["Drama", "Comedy"],
            "title": "One",
            "year": 1999,
        },
        "0000002": {"plot": ["A horror plot."], "genres": ["Talk-Show", "Horror"]},
        "0000003": {"plot": ["Only an unknown genre."], "genres": ["Reality-TV"]},
        "0000004": {"plot": [], "genres": ["Film-Noir"], "cast": ["x"]},
        "0000011": {"plot": [""], "genres": ["Sci-Fi", "Western"]},
        "0000012": {"genres": ["War"]},
        "0000014": {
            "plot": ["First of three.", "The second and longest plot.", "Third."],
            "genres": ["Film-Noir", "Drama", "Music"],
        },
    }
    for movie_id, content in good.items():
        movie(movie_id, **content)
    plain = {"plot": ["p"], "genres": ["Drama"]}
    movie("0000005", image=None, **plain)  # missing image
    data = jpeg_bytes()
    movie("0000006", image=data[: len(data) // 2], **plain)  # truncated in the scan data
    (json_dir / "0000007.json").write_text('{"plot": ["unterminated"', "utf-8")
    movie("0000007")  # malformed JSON
    (outside / "0000008.json").write_text(json.dumps(plain), "utf-8")
    (outside / "0000008.jpeg").write_bytes(jpeg_bytes())
    (outside / "0000015.json").write_text(json.dumps(plain), "utf-8")
    (outside / "0000015.jpeg").write_bytes(jpeg_bytes())
    movie("0000009", image=None, **plain)
    os.symlink(outside / "0000008.jpeg", image_dir / "0000009.jpeg")  # symlink out of root
    movie("0000010")  # image but no JSON
    movie("0000013", image=b"not an image at all", **plain)
    movie("0000016", image=b"jpeg")
    (json_dir / "0000016.json").write_text(json.dumps(["a", "list"]), "utf-8")
    movie("0000017", plot=["p"], genres=["Drama", 5])

    up = "../../outside/0000008"  # relative to dataset/ or labels/, both one level below root
    absolute = str(outside / "0000015")
    split = {
        "train": [
            "0000001",
            "0000002",
            "0000003",
            "0000004",
            "0000005",
            "0000006",
            "0000007",
            up,
            "0000009",
            "0000010",
            "0000001",
        ],
        "dev": ["0000011", "0000012", "0000013"],
        "test": ["0000014", absolute, "0000016", "0000017", 1234567],
    }
    (root / "split.json").write_text(json.dumps(split), "utf-8")
    bad = [
        ("train", "0000005", "missing image", "sample"),
        ("train", "0000006", "unreadable image", "sample"),
        ("train", "0000007", "malformed json", "movie"),
        ("train", up, "outside dataset root", "movie"),
        ("train", "0000009", "outside dataset root", "sample"),
        ("train", "0000010", "missing json", "movie"),
        ("train", "0000001", "duplicate id", "sample"),
        ("val", "0000013", "unreadable image", "sample"),
        ("test", absolute, "outside dataset root", "movie"),
        ("test", "0000016", "malformed json", "movie"),
        ("test", "0000017", "malformed json", "movie"),
        ("test", "1234567", "invalid id", "movie"),
    ]
    movies = dict(good)
    movies.update({i: plain for i in ("0000005", "0000006", "0000009", "0000013")})
    kept = {
        "train": ["0000001", "0000002", "0000003", "0000004"],
        "val": ["0000011", "0000012"],
        "test": ["0000014"],
    }
    return FakeMMIMDB(root=root, movies=movies, kept=kept, bad=bad)
