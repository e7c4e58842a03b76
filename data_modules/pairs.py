"""A user's own (image, text) pairs, for `rlrt predict` with a trained checkpoint.

The file is JSON Lines (`.jsonl`, one object per line) or CSV with a header (`.csv`). Keys /
columns used:

    image   path of the image file, absolute or relative to `image_root` (default: the folder of
            the file); absent, empty or null: the sample has no image (`image_present=False`)
    text    the text; absent or null (or an empty CSV cell): no text (`text_present=False`)
    id      optional; default: the row's line number in the file (1-based, header included)

A row with neither image nor text, or an image file that cannot be read, is a bad sample: with
the default `on_bad_sample="error"` prediction stops at it with one line naming the row; with
`"skip"` it is dropped, reported, and written by `callbacks.PredictionWriter` as an error row.
Image paths are taken as given (they need not lie under `image_root`). A JSONL line that is not
UTF-8 or not JSON (nested too deeply, an integer of over 4300 digits) is a bad row naming its line
and the file; a CSV that is not UTF-8 stops with one line naming the file.

The classes (names, count, task) come from the checkpoint: `checkpoint`, which `rlrt predict`
fills from `--ckpt_path` when left unset.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from rlrt.engine.checkpoints import read_checkpoint

from .base import ImageTextDataModule, Task
from .reasons import json_error, not_a_file, os_reason, short_repr
from .records import Rejected, SampleRecord
from .text_limits import MAX_TEXT_CHARS


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, row dict) per row of a `.jsonl` or `.csv` file, or (line, error) for a row
    that does not parse."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open("rb") as handle:
            line_number = 0
            # readline, not enumerate(handle): enumerate's tuple would keep the previous line
            while raw := handle.readline():
                line_number += 1
                if raw.isspace():  # a blank line (not strip(): no copy of a long line)
                    continue
                try:
                    text = raw.decode("utf-8-sig")  # a leading BOM is not JSON
                    del raw  # a long line (a 100 MB text) is held twice while parsed, not thrice
                    row = json.loads(text)
                    del text
                except (ValueError, RecursionError) as err:  # also not UTF-8, too deep, ...
                    reason = err.msg if isinstance(err, json.JSONDecodeError) else json_error(err)
                    yield line_number, f"malformed row: {reason}"
                    continue
                yield line_number, row if isinstance(row, dict) else "malformed row: not an object"
    elif suffix == ".csv":
        try:
            yield from _csv_rows(path)
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path}: not UTF-8 text (byte {err.start} of a read block is "
                f"{err.object[err.start : err.start + 1]!r}); save the CSV as UTF-8"
            ) from err
    else:
        raise ValueError(f"{path}: pairs must be a .jsonl or a .csv file, got {suffix!r}")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | str]]:
    # utf-8-sig: a CSV saved by Excel starts with a byte-order mark, which would otherwise
    # become part of the first column's name
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not set(reader.fieldnames) & {"image", "text"}:
            raise ValueError(
                f"{path}: the CSV header must name an `image` and/or a `text` column, "
                f"got {short_repr(reader.fieldnames)}"
            )
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as err:  # a field over the size limit, ...: the parser goes on
                # DictReader's line_num is the last good row's; its reader's is this row's
                yield reader.reader.line_num, f"malformed row: {err}{_csv_hint(err)}"
                continue
            yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items()}


def _csv_hint(err: csv.Error) -> str:
    """What to do about a CSV error, where there is something to say."""
    if "field limit" in str(err):
        return (
            f"; a CSV field holds at most {csv.field_size_limit():,} characters: shorten the "
            f"text, or write the file as .jsonl (its texts are cut at {MAX_TEXT_CHARS:,})"
        )
    return ""


def checkpoint_classes(checkpoint: str | Path) -> dict[str, Any]:
    """`{"class_names", "num_classes", "task"}` of a trained `RLRT` checkpoint."""
    hparams = read_checkpoint(checkpoint).get("hyper_parameters", {})  # safe load, checked
    missing = [k for k in ("num_classes", "task") if k not in hparams]
    if missing:
        raise ValueError(f"{checkpoint} holds no {missing} in its hyper_parameters")
    names = hparams.get("class_names") or [str(i) for i in range(hparams["num_classes"])]
    return {
        "class_names": list(names),
        "num_classes": hparams["num_classes"],
        "task": hparams["task"],
    }


class PairsDataModule(ImageTextDataModule):
    """Predict-only DataModule over a JSONL/CSV file of (image path, text) pairs.

    Args:
        path: the `.jsonl` or `.csv` file (see the module docstring for its keys).
        checkpoint: the trained checkpoint whose classes are predicted (`rlrt predict` fills it
            from `--ckpt_path`).
        image_root: folder that relative image paths start from (default: the file's folder).
        on_bad_sample: "error" (default) stops at the first bad row; "skip" drops and reports it.
        **kwargs: the `ImageTextDataModule` arguments (image_size, batch_size, num_workers, ...).
    """

    dataset_name = "pairs"
    predict_split = "predict"  # the only split: logs and reports say "pairs predict"
    accepted_layouts = "a .jsonl or .csv file with `image` and/or `text` (and optional `id`)"
    source = "your own data"

    def __init__(
        self,
        *,
        path: str,
        checkpoint: str | None = None,
        image_root: str | None = None,
        on_bad_sample: Literal["skip", "error"] = "error",
        **kwargs: Any,
    ) -> None:
        root = image_root if image_root is not None else str(Path(path).expanduser().parent)
        super().__init__(root=root, on_bad_sample=on_bad_sample, **kwargs)
        self.path = Path(path).expanduser()
        self.checkpoint = checkpoint

    @cached_property
    def _classes(self) -> dict[str, Any]:
        if self.checkpoint is None:
            raise ValueError(
                "PairsDataModule predicts the classes of a checkpoint: give --ckpt_path to "
                "`rlrt predict` (or --data.init_args.checkpoint)"
            )
        return checkpoint_classes(self.checkpoint)

    @property
    def class_names(self) -> list[str]:
        return self._classes["class_names"]

    @property
    def task(self) -> Task:
        return self._classes["task"]

    def inside_root(self, path: Path) -> Path:
        """A user's file list may point anywhere: paths are taken as given."""
        return path

    def read_split(self, split: str) -> Iterator[SampleRecord | Rejected]:
        if split != self.predict_split:
            raise ValueError(
                f"PairsDataModule holds unlabelled pairs for `rlrt predict`, not a {split} split"
            )
        try:
            found = self.path.is_file()
        except (OSError, ValueError) as err:  # a name too long, a NUL byte
            raise ValueError(f"pairs file {str(self.path)!r}: {os_reason(err)}") from err
        kind = None if found else not_a_file(self.path)  # only stat: a FIFO is never opened
        if kind is not None:
            raise ValueError(f"pairs file {self.path} is {kind}: give a .jsonl or .csv file")
        if not found:
            raise self.not_found(self.path, "pairs file")
        placeholder = [] if self.task == "multilabel" else 0  # unlabelled: never used
        for line_number, row in read_rows(self.path):
            sample_id = str(line_number)
            where = f"line {line_number} of {self.path}"
            if isinstance(row, str):
                yield Rejected(sample_id, f"{row} ({where})")
                continue
            given_id = row.get("id")
            if given_id not in (None, ""):
                if isinstance(given_id, bool) or not isinstance(given_id, str | int):
                    yield Rejected(sample_id, f"invalid id: {short_repr(given_id)} ({where})")
                    continue
                sample_id = str(given_id)
            image, text = row.get("image"), row.get("text")
            if image in (None, "") and text is None:
                yield Rejected(sample_id, f"empty row: neither image nor text ({where})")
                continue
            if text is not None and not isinstance(text, str):
                yield Rejected(sample_id, f"invalid text: not a string ({where})")
                continue
            if image is not None and not isinstance(image, str):
                yield Rejected(sample_id, f"invalid image: not a path string ({where})")
                continue
            yield SampleRecord(
                id=sample_id,
                image_path=None if image in (None, "") else self.root / image,
                text=text or "",
                label=placeholder,
                text_present=text is not None,
            )
