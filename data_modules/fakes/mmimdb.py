"""A tiny fake MM-IMDB in either real layout, optionally with the dirt the reader must handle.

`write_fake_mmimdb(root, layout=..., dirty=..., num_movies=...)` writes the dataset at `root` and,
when dirty, files beside it (`<root>-outside/`) that ids and symlinks point to and that must
never be read.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..mmimdb import MMIMDB_GENRES
from .common import class_colour, jpeg_bytes, outside_dir, staged_dir, truncated

Layout = Literal["dataset", "images_labels"]
_WORDS = "a man woman town night road house letter friend secret years family".split()


@dataclass
class FakeMMIMDB:
    """What was written and what the reader must make of it.

    `movies`: id -> JSON content of the movies with a readable JSON; `kept`: split -> good movie
    ids, in split.json order; `bad`: (split, id, reason kind, level) with level "movie" (rejected
    while reading the JSON, reported under the movie id) or "sample" (rejected per sample,
    reported under the sample id: `<id>#<k>` with `text_unit="all"`).
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


def write_fake_mmimdb(
    root: str | Path,
    *,
    layout: Layout = "dataset",
    dirty: bool = True,
    num_movies: int = 0,
    seed: int = 0,
    poster_size: tuple[int, int] = (48, 72),
) -> FakeMMIMDB:
    """Write a fake MM-IMDB at `root` (must not exist or be empty) and return what to expect.

    `num_movies` clean generated movies (1-3 genres, 1-2 plots naming the genres, a poster of
    `poster_size = (W, H)` coloured by the first genre; 60/20/20 over train/dev/test, at least
    one each when `num_movies >= 3`) are listed after the hand-written ones. `dirty=True` adds
    hand-written movies: good ones with edge cases (several plots, empty or missing plots,
    genres outside the 23) and bad ones (missing and truncated images, malformed JSON, ids
    escaping the root, a symlink out of the root, an image without JSON, a duplicate id, a
    non-string id).
    """
    root = Path(root)
    rng = random.Random(seed)
    movies: dict[str, dict[str, Any]] = {}
    kept: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    split = {"train": [], "dev": [], "test": []}
    bad: list[tuple[str, str, str, str]] = []
    with staged_dir(root) as tmp:
        json_dir = tmp / ("dataset" if layout == "dataset" else "labels")
        image_dir = tmp / ("dataset" if layout == "dataset" else "images")
        json_dir.mkdir(parents=True, exist_ok=True)
        image_dir.mkdir(parents=True, exist_ok=True)
        if dirty:
            _write_dirt(root, json_dir, image_dir, movies, kept, split, bad)
        for i in range(num_movies):
            movie_id = f"{1_000_000 + i:07d}"
            genres = rng.sample(MMIMDB_GENRES[:8], rng.randint(1, 3))
            plots = [
                " ".join(rng.choices(_WORDS, k=8) + [g.lower() for g in genres])
                for _ in range(rng.randint(1, 2))
            ]
            content = {"title": f"Movie {i}", "plot": plots, "genres": genres}
            (json_dir / f"{movie_id}.json").write_text(json.dumps(content), "utf-8")
            colour = class_colour(MMIMDB_GENRES.index(genres[0]), 8)
            poster = jpeg_bytes(*poster_size, seed=seed * 100_003 + i, colour=colour)
            (image_dir / f"{movie_id}.jpeg").write_bytes(poster)
            movies[movie_id] = content
            key, ours = _clean_split(i, num_movies)
            split[key].append(movie_id)
            kept[ours].append(movie_id)
        (tmp / "split.json").write_text(json.dumps(split), "utf-8")
    return FakeMMIMDB(root=root, movies=movies, kept=kept, bad=bad)


def _clean_split(i: int, n: int) -> tuple[str, str]:
    """(split.json key, our split) of the i-th of n clean movies: 60/20/20, none empty."""
    n_dev = n_test = max(1, round(0.2 * n)) if n >= 3 else 0
    if i < n - n_dev - n_test:
        return "train", "train"
    return ("dev", "val") if i < n - n_test else ("test", "test")


def _write_dirt(
    root: Path,
    json_dir: Path,
    image_dir: Path,
    movies: dict[str, dict[str, Any]],
    kept: dict[str, list[str]],
    split: dict[str, list[Any]],
    bad: list[tuple[str, str, str, str]],
) -> None:
    outside = outside_dir(root)
    outside.mkdir(parents=True, exist_ok=True)

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
    movie("0000006", image=truncated(jpeg_bytes()), **plain)  # truncated in the scan data
    (json_dir / "0000007.json").write_text('{"plot": ["unterminated"', "utf-8")
    movie("0000007")  # malformed JSON
    for name in ("0000008", "0000015"):
        (outside / f"{name}.json").write_text(json.dumps(plain), "utf-8")
        (outside / f"{name}.jpeg").write_bytes(jpeg_bytes())
    movie("0000009", image=None, **plain)
    os.symlink(outside / "0000008.jpeg", image_dir / "0000009.jpeg")  # symlink out of root
    movie("0000010")  # image but no JSON
    movie("0000013", image=b"not an image at all", **plain)
    movie("0000016", image=b"jpeg")
    (json_dir / "0000016.json").write_text(json.dumps(["a", "list"]), "utf-8")
    movie("0000017", plot=["p"], genres=["Drama", 5])

    up = f"../../{outside.name}/0000008"  # relative to dataset/ or labels/, one below root
    absolute = str(outside / "0000015")
    split["train"] += [
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
    ]
    split["dev"] += ["0000011", "0000012", "0000013"]
    split["test"] += ["0000014", absolute, "0000016", "0000017", 1234567]
    bad += [
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
    movies.update(good)
    movies.update({i: plain for i in ("0000005", "0000006", "0000009", "0000013")})
    kept["train"] += ["0000001", "0000002", "0000003", "0000004"]
    kept["val"] += ["0000011", "0000012"]
    kept["test"] += ["0000014"]
