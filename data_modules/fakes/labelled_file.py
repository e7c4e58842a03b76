"""An example dataset in the format of `data_modules.labelled_file`, for the worked example of
docs/your_data.md:

    python -m data_modules.fakes.labelled_file data/my_dataset [--format csv] [--multilabel]

writes `OUT_DIR/{train,val,test}.{jsonl,csv}` and `OUT_DIR/images/<n>.jpg` (a few dozen small
JPEGs). Four fruit classes; each image is its class's colour, each text names a cue of its class
(or nothing, one text in four), so both modalities carry signal and fusing them helps. A few rows
show the missing-modality conventions: every 10th has no text, every 15th (from the 8th) no
image. With `--multilabel` a row has one or two classes: the image shows the first, the text names
the last. Deterministic in `--seed`.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path
from typing import Any

from .common import jpeg_bytes, staged_dir

CLASSES = ("apple", "banana", "grape", "lime")
COLOURS = {
    "apple": (200, 30, 30),
    "banana": (230, 210, 40),
    "grape": (110, 40, 140),
    "lime": (60, 200, 60),
}
CUES = {
    "apple": "a crisp red apple",
    "banana": "a ripe yellow banana",
    "grape": "a bunch of purple grapes",
    "lime": "a sour green lime",
}
NEUTRAL = ("a piece of fruit on a table", "something from the market", "a photo from the kitchen")
SIZES = {"train": 48, "val": 16, "test": 16}


def example_rows(split: str, count: int, rng: random.Random, multilabel: bool) -> list[dict]:
    """`count` rows of `split`: id, image name, text (None: absent) and class name(s)."""
    rows = []
    for n in range(count):
        first = CLASSES[n % len(CLASSES)]
        names = [first]
        if multilabel and rng.random() < 0.5:
            names = sorted({first, rng.choice(CLASSES)}, key=CLASSES.index)
        text = CUES[names[-1]] if rng.random() < 0.75 else rng.choice(NEUTRAL)
        row: dict[str, Any] = {"id": f"{split}-{n:03d}", "image": f"images/{split}-{n:03d}.jpg"}
        row["text"] = None if n % 10 == 9 else text
        if n % 15 == 7:  # never a row without text too: that is no sample
            row["image"] = None
        row["labels" if multilabel else "label"] = names if multilabel else first
        rows.append(row)
    return rows


def write_labelled_example(
    out_dir: str | Path,
    *,
    file_format: str = "jsonl",
    multilabel: bool = False,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
) -> dict[str, list[dict]]:
    """Write the example dataset into `out_dir` (must not exist, or be empty); return the rows
    written per split (`image` relative to `out_dir`, `text` None where absent)."""
    if file_format not in ("jsonl", "csv"):
        raise ValueError(f"file_format must be 'jsonl' or 'csv', got {file_format!r}")
    rng = random.Random(seed)
    splits = {s: example_rows(s, n, rng, multilabel) for s, n in (sizes or SIZES).items()}
    with staged_dir(Path(out_dir)) as tmp:
        (tmp / "images").mkdir()
        for index, (split, rows) in enumerate(splits.items()):
            for k, row in enumerate(rows):
                if row["image"] is None:
                    continue
                name = (row["labels"] if multilabel else [row["label"]])[0]
                image = jpeg_bytes(
                    64, 64, seed=seed * 10_000 + index * 1000 + k, colour=COLOURS[name]
                )
                (tmp / row["image"]).write_bytes(image)
            write_rows(tmp / f"{split}.{file_format}", rows)
    return splits


def write_rows(path: Path, rows: list[dict]) -> None:
    """JSON Lines, or CSV with a header (absent values as empty cells, labels joined by `|`)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            cells = {k: "|".join(v) if isinstance(v, list) else v for k, v in row.items()}
            writer.writerow({k: "" if v is None else v for k, v in cells.items()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m data_modules.fakes.labelled_file", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out_dir", help="folder to create (must not exist, or be empty)")
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    parser.add_argument("--multilabel", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        parser.error(f"{out} exists and is not an empty folder; choose a new OUT_DIR")
    splits = write_labelled_example(
        out, file_format=args.format, multilabel=args.multilabel, seed=args.seed
    )
    counts = ", ".join(f"{s} {len(r)}" for s, r in splits.items())
    print(f"wrote {out}/{{train,val,test}}.{args.format} ({counts} rows) and {out}/images/")


if __name__ == "__main__":
    main()
