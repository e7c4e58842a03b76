"""A tiny fake UPMC-Food101 in its real layout, optionally with the dirt the reader must handle.

`write_fake_food101(root, dirty=...)` writes `images/{train,test}/<class>/<class>_<n>.jpg` and
the header-less `texts/{train,test}_titles.csv`, plus `<root>-outside/` when dirty.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path

from ..food101 import FOOD101_CLASSES
from .common import (
    FakeDataset,
    class_colour,
    jpeg_bytes,
    outside_dir,
    staged_dir,
    truncated,
)

DEFAULT_CLASSES = ("apple_pie", "breakfast_burrito", "croque_madame", "pizza")
_WORDS = "easy homemade best quick classic crispy healthy recipe with sauce".split()


def write_fake_food101(
    root: str | Path,
    *,
    dirty: bool = True,
    classes: Sequence[str] = DEFAULT_CLASSES,
    train_per_class: int = 6,
    test_per_class: int = 2,
    seed: int = 0,
) -> FakeDataset:
    """Write a fake UPMC-Food101 at `root` (must not exist or be empty); return what to expect.

    Clean rows: `train_per_class` / `test_per_class` images per class of `classes` (all of the
    101 pinned ones), coloured by class, titles naming the class; some titles hold commas, some
    are quoted. `dirty=True` adds to the train CSV: a header row, the unclosed-quote
    `breakfast_burrito_730.jpg` row followed by good rows it would swallow, a `.txt` file name,
    a missing and a truncated image, an unknown class, a two-field row, a file name of another
    class, a file name without a number, a path escaping the root, a symlink out of the root, a
    duplicate row, an empty title (kept), a CRLF line, a Latin-1 line, a quoted title with
    doubled quotes and a blank line; and to the test CSV: a missing image and an unknown class.

    In the result, split "train" stands for the whole train CSV: the reader divides its rows
    (and those of its drops that are found at image level) between train and val.
    """
    root = Path(root)
    for name in classes:
        if name not in FOOD101_CLASSES:
            raise ValueError(f"{name!r} is not one of the 101 Food-101 classes")
    rng = random.Random(seed)
    index = {c: FOOD101_CLASSES.index(c) for c in classes}
    fake = FakeDataset(root=root, kept={"train": [], "test": []})
    lines: dict[str, list[bytes]] = {"train": [], "test": []}
    with staged_dir(root) as tmp:
        for csv_split in ("train", "test"):
            for name in classes:
                (tmp / "images" / csv_split / name).mkdir(parents=True)

        def image(csv_split: str, stem: str, data: bytes | None = None) -> Path:
            path = tmp / "images" / csv_split / stem.rsplit("_", 1)[0] / f"{stem}.jpg"
            if data is None:
                cls = stem.rsplit("_", 1)[0]
                colour = class_colour(index.get(cls, 0), len(classes))
                data = jpeg_bytes(64, 48, seed=seed * 100_003 + len(fake.texts), colour=colour)
            path.write_bytes(data)
            return path

        def good(csv_split: str, stem: str, title: str, line: str | bytes | None = None) -> None:
            image(csv_split, stem)
            cls = stem.rsplit("_", 1)[0]
            raw = line if line is not None else f"{stem}.jpg,{title},{cls}"
            lines[csv_split].append(raw if isinstance(raw, bytes) else raw.encode("utf-8"))
            fake.kept[csv_split].append(stem)
            fake.texts[stem] = title
            fake.labels[stem] = FOOD101_CLASSES.index(cls)

        def refused(csv_split: str, line: str, sample_id: str, kind: str) -> None:
            lines[csv_split].append(line.encode("utf-8"))
            fake.dropped.add((csv_split, sample_id, kind))

        for csv_split, per_class in (("train", train_per_class), ("test", test_per_class)):
            for n in range(per_class):
                for name in classes:
                    words = " ".join(rng.sample(_WORDS, 3))
                    dish = name.replace("_", " ")
                    if n % 3 == 1:  # a comma in an unquoted title
                        good(csv_split, f"{name}_{n}", f"{words}, {dish}")
                    elif n % 3 == 2:  # a quoted title with a comma
                        title = f"{dish}, {words}"
                        good(csv_split, f"{name}_{n}", title, f'{name}_{n}.jpg,"{title}",{name}')
                    else:
                        good(csv_split, f"{name}_{n}", f"{words} {dish}")
        if dirty:
            _add_dirt(root, tmp, lines, fake, image, good, refused)
        (tmp / "texts").mkdir()
        for csv_split, rows in lines.items():
            (tmp / "texts" / f"{csv_split}_titles.csv").write_bytes(b"\n".join(rows) + b"\n")
    return fake


def _add_dirt(root, tmp, lines, fake, image, good, refused) -> None:
    """The dirt of the real CSVs, added to `lines` (see `write_fake_food101`)."""
    outside = outside_dir(root)
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "pizza_737.jpg").write_bytes(jpeg_bytes())
    (outside / "pizza_738.jpg").write_bytes(jpeg_bytes())
    fake.outside = outside
    for name in ("breakfast_burrito", "pizza", "apple_pie", "croque_madame"):
        (tmp / "images" / "train" / name).mkdir(parents=True, exist_ok=True)
    lines["train"].insert(0, b"image_path,text,food")  # a header row: skipped, not a sample
    good(
        "train",
        "breakfast_burrito_730",
        "best breakfast burrito, ever",
        'breakfast_burrito_730.jpg,"best breakfast burrito, ever,breakfast_burrito',
    )
    good("train", "pizza_731", "pizza night", "pizza_731.txt,pizza night,pizza")
    refused("train", "pizza_732.jpg,no such file,pizza", "pizza_732", "missing image")
    image("train", "apple_pie_733", truncated(jpeg_bytes(seed=733)))
    refused("train", "apple_pie_733.jpg,half a pie,apple_pie", "apple_pie_733", "unreadable image")
    refused("train", "apple_pie_734.jpg,tart,apple_tart", "apple_pie_734", "unknown label")
    malformed = "malformed csv row"
    refused("train", "croque_madame_735.jpg,only two fields", "croque_madame_735", malformed)
    refused("train", "pizza_736.jpg,mislabelled,croque_madame", "pizza_736", malformed)
    refused("train", "pizza.jpg,no number,pizza", "pizza.jpg", malformed)
    escape = f"../../../../{outside.name}/pizza_737.jpg"
    refused("train", f"{escape},escape,pizza", escape, "outside dataset root")
    os.symlink(outside / "pizza_738.jpg", tmp / "images" / "train" / "pizza" / "pizza_738.jpg")
    refused("train", "pizza_738.jpg,symlink,pizza", "pizza_738", "outside dataset root")
    first = fake.kept["train"][0]
    refused("train", f"{first}.jpg,again,{first.rsplit('_', 1)[0]}", first, "duplicate id")
    good("train", "pizza_739", "", "pizza_739.jpg,,pizza")
    lines["train"].append(b"")  # a blank line: not a sample
    good("train", "apple_pie_740", "crlf row", b"apple_pie_740.jpg,crlf row,apple_pie\r")
    good(
        "train",
        "croque_madame_741",
        "caf\u00e9 croque",
        "croque_madame_741.jpg,caf\u00e9 croque,croque_madame".encode("latin-1"),
    )
    good(
        "train",
        "pizza_742",
        'the "best", pizza',
        'pizza_742.jpg,"the ""best"", pizza",pizza',
    )
    (tmp / "images" / "test" / "pizza").mkdir(parents=True, exist_ok=True)
    refused("test", "pizza_900.jpg,missing,pizza", "pizza_900", "missing image")
    refused("test", "sushi_roll_1.jpg,roll,sushi_roll", "sushi_roll_1", "unknown label")
