"""MM-IMDB (Arevalo et al., 2017): movie posters and plots, 23 genres, multi-label.

Accepted layouts (both with `split.json` = `{"train": [ids], "dev": [ids], "test": [ids]}`):

    root/split.json  root/dataset/<id>.json  root/dataset/<id>.jpeg
    root/split.json  root/labels/<id>.json   root/images/<id>.jpeg

Decisions:
- Our `val` split is the file's `dev` list (`val` is accepted as a key too).
- Labels are the 23 pinned genres in `MMIMDB_GENRES` order; other genre tags (News, Adult,
  Talk-Show, Reality-TV, ...) are dropped from the label vector and counted in the log. A movie
  with no known genre is kept with an all-zero label; a JSON without a `genres` list is malformed.
- `plot` may be missing, null, a string or a list of strings; missing or empty gives text "".
- `text_unit`: "longest" plot (MMBT), "first" plot (MMF), or "all": one sample per (movie, plot)
  with ids `<id>#<k>` (a movie without plots gives one sample `<id>#0` with text "").
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from .base import ImageTextDataModule, Task
from .reasons import json_error, path_reason, short_repr
from .records import Rejected, SampleRecord, SampleRejected

log = logging.getLogger(__name__)

MMIMDB_GENRES: tuple[str, ...] = (
    "Drama",
    "Comedy",
    "Romance",
    "Thriller",
    "Crime",
    "Action",
    "Adventure",
    "Horror",
    "Documentary",
    "Mystery",
    "Sci-Fi",
    "Fantasy",
    "Family",
    "Biography",
    "War",
    "History",
    "Music",
    "Animation",
    "Musical",
    "Western",
    "Sport",
    "Short",
    "Film-Noir",
)
_GENRE_INDEX = {g: i for i, g in enumerate(MMIMDB_GENRES)}
_SPLIT_KEYS = {"train": ("train",), "val": ("dev", "val"), "test": ("test",)}


class MMIMDBDataModule(ImageTextDataModule):
    """MM-IMDB multi-label genre classification (`task="multilabel"`, 23 classes).

    Args:
        text_unit: which plot(s) become the text: "longest", "first" or "all" (see module doc).
        **kwargs: the `ImageTextDataModule` arguments (root, image_size, batch_size, ...).
    """

    dataset_name = "MM-IMDB"
    accepted_layouts = (
        "root/split.json + root/dataset/<id>.json + root/dataset/<id>.jpeg, or "
        "root/split.json + root/labels/<id>.json + root/images/<id>.jpeg"
    )
    source = (
        "http://lisi1.unal.edu.co/mmimdb/ (mmimdb.tar.gz; "
        "see https://github.com/johnarevalo/gmu-mmimdb)"
    )
    standard_sizes = {"train": 15_552, "val": 2_608, "test": 7_799}  # movies

    def __init__(
        self, *, text_unit: Literal["longest", "first", "all"] = "longest", **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if text_unit not in ("longest", "first", "all"):
            raise ValueError(f"text_unit must be 'longest', 'first' or 'all', got {text_unit!r}")
        self.text_unit = text_unit

    @property
    def class_names(self) -> list[str]:
        return list(MMIMDB_GENRES)

    @property
    def task(self) -> Task:
        return "multilabel"

    def source_count(self, split: str) -> int:
        """Movie ids listed for `split` in split.json (samples differ with `text_unit="all"`)."""
        return len(self._split_ids[split])

    def read_split(self, split: str) -> Iterator[SampleRecord | Rejected]:
        ids = self._split_ids[split]
        json_dir, image_dir = self._layout
        dropped_tags: Counter[str] = Counter()
        for movie_id in ids:
            if not isinstance(movie_id, str) or not movie_id:
                shown = short_repr(movie_id)
                yield Rejected(shown, f"invalid id: {shown} in {self.root / 'split.json'}")
                continue
            try:
                records = self._read_movie(movie_id, json_dir, image_dir, dropped_tags)
            except SampleRejected as err:
                yield Rejected(movie_id, err.reason)
                continue
            except (OSError, ValueError) as err:  # a name too long, a NUL byte in the id, ...
                yield Rejected(movie_id, path_reason(err, json_dir / f"{movie_id}.json"))
                continue
            yield from records
        if dropped_tags:
            log.info(
                "MM-IMDB %s: genre tags outside the 23 labels, dropped from the label vector: %s",
                split,
                dict(dropped_tags),
            )

    @cached_property
    def _layout(self) -> tuple[Path, Path]:
        """(folder of <id>.json, folder of <id>.jpeg) of the layout found under root."""
        if (self.root / "dataset").is_dir():
            return self.root / "dataset", self.root / "dataset"
        if (self.root / "labels").is_dir() and (self.root / "images").is_dir():
            return self.root / "labels", self.root / "images"
        raise self.not_found(self.root / "dataset", "folder dataset/ (or labels/ + images/)")

    @cached_property
    def _split_ids(self) -> dict[str, list[Any]]:
        path = self.root / "split.json"
        if not path.is_file():
            hint = ""
            if not self.root.is_dir():
                hint = f" (the root folder {self.root} does not exist)"
            elif (self.root / "mmimdb" / "split.json").is_file():
                hint = f" (did you mean root={self.root / 'mmimdb'}?)"
            raise self.not_found(path, "split.json", hint)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # also too deep, or a too long integer
            raise ValueError(f"MM-IMDB: {path} is not valid JSON: {json_error(err)}") from err
        splits = {}
        for split, keys in _SPLIT_KEYS.items():
            key = next((k for k in keys if isinstance(raw, dict) and k in raw), None)
            if key is None or not isinstance(raw[key], list):
                raise ValueError(
                    f"MM-IMDB: {path} must map {keys[0]!r} to a list of ids "
                    f"(expected keys: train, dev, test)"
                )
            splits[split] = raw[key]
        return splits

    def _read_movie(
        self, movie_id: str, json_dir: Path, image_dir: Path, dropped_tags: Counter[str]
    ) -> list[SampleRecord]:
        json_path = self.inside_root(json_dir / f"{movie_id}.json")
        if not json_path.is_file():
            raise SampleRejected(f"missing json: {json_path}")
        try:
            meta = json.loads(json_path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as err:  # also too deep, or a too long integer
            raise SampleRejected(f"malformed json: {json_error(err)} ({json_path})") from err
        if not isinstance(meta, dict):
            raise SampleRejected("malformed json: not an object")
        genres = meta.get("genres")
        if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
            raise SampleRejected("malformed json: 'genres' is not a list of strings")
        plots = meta.get("plot")
        plots = [] if plots is None else [plots] if isinstance(plots, str) else plots
        if not isinstance(plots, list) or not all(isinstance(p, str) for p in plots):
            raise SampleRejected("malformed json: 'plot' is not a list of strings")

        dropped_tags.update(g for g in genres if g not in _GENRE_INDEX)
        label = sorted({_GENRE_INDEX[g] for g in genres if g in _GENRE_INDEX})
        image_path = image_dir / f"{movie_id}.jpeg"
        if self.text_unit == "all":
            texts = [(f"{movie_id}#{k}", p) for k, p in enumerate(plots or [""])]
        elif self.text_unit == "first":
            texts = [(movie_id, plots[0] if plots else "")]
        else:  # longest; max() keeps the first of equally long plots
            texts = [(movie_id, max(plots, key=len) if plots else "")]
        return [
            SampleRecord(id=sid, image_path=image_path, text=text, label=label)
            for sid, text in texts
        ]
