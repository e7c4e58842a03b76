"""Your own labelled image-text data: one JSON Lines or CSV file per split, no code to write.

    train: data/my_dataset/train.jsonl     (or .csv; one file per split, the three required)
    val:   data/my_dataset/val.jsonl
    test:  data/my_dataset/test.jsonl

Keys (JSONL: one object per line) or header columns (CSV):

    image   image path, relative to `image_root` (default: the folder of the split files); it
            must lie inside that folder (`../` and symlinks out of it are refused). Absent,
            empty or null: the sample has no image (`image_present=False`).
    text    the text; absent or null (or an empty CSV cell): no text (`text_present=False`);
            an empty JSON string is a present, empty text.
    label   multiclass: the class name (a JSON whole number, `2` or `2.0`, is read as "2").
    labels  multilabel: a JSON list of class names in JSONL; one string joined by
            `label_separator` (default `|`) in CSV, whose empty cell is an empty list. A
            sample without any class is kept with an all-zero label.
    id      optional; default `<file name>:<line number>`. Unique per split (ids equal after
            Unicode normalisation, NFC, are repeats), and a val or test row may not give an
            id the train file gives: that sample would be evaluated after training on it.

Other keys are ignored. Decisions:
- **Splits**: one file per split. Train, val and test files lie in one folder unless
  `image_root` is given (relative image paths need one starting point).
- **Task**: given (`multilabel: true|false`), or from the train file: a `labels` key/column means
  multilabel, a `label` one multiclass (both, or neither: one line asking to set `multilabel`).
- **Classes**: given (`classes`, in label-index order), or the sorted unique labels of the
  train file's rows (numerically sorted when every label is an integer), so that the class list
  is a function of the train file alone. A val/test label outside them is an "unknown label".
- **Bad rows** are reported with their line number and file (never dropped silently): a line
  that is not JSON or not an object, a CSV row with more fields than its header, a missing,
  null or ill-typed label, an unknown class (the reason says to list it in `classes`), a
  repeated id, a row with neither image nor text, an image path that is not a string, leaves
  the image root, names no file, or names a directory, a FIFO or a symlink loop. Unreadable
  images are found by the base's checks (reported under the sample's id, which by default
  holds the line number).
- **Bad files**: a missing file, a suffix other than `.jsonl` / `.csv`, a CSV that is not UTF-8
  or whose header lacks the label column (or both `image` and `text`) end in one line naming it.
"""

from __future__ import annotations

import contextlib
import csv
import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from .base import SPLITS, ImageTextDataModule, Task
from .ids import id_key, same_as
from .pairs import read_rows
from .reasons import not_a_file, os_reason, short_repr
from .records import DatasetNotFoundError, Rejected, SampleRecord, SampleRejected

LABEL_KEYS: dict[str, str] = {"multiclass": "label", "multilabel": "labels"}
SUFFIXES = (".jsonl", ".csv")
_INTEGER = re.compile(r"[+-]?\d+")
_EXACT_FLOATS = 2.0**53  # beyond it a float is no longer one integer


class LabelledFileDataModule(ImageTextDataModule):
    """Labelled (image, text) samples from one `.jsonl` or `.csv` file per split.

    Args:
        train, val, test: the split files (see the module docstring for their keys).
        image_root: folder relative image paths start from (default: the split files' folder).
        classes: the class names in label-index order (default: from the train file).
        multilabel: the task, multilabel (True) or multiclass (False); default: from the train
            file's label key. (Not `class_names` / `task`: those are the model's hyperparameters,
            which Lightning refuses to log beside a data module's that differ.)
        label_separator: what joins a CSV row's `labels` (multilabel only).
        **kwargs: the `ImageTextDataModule` arguments (image_size, batch_size, ...).
    """

    dataset_name = "labelled file"
    accepted_layouts = (
        "one .jsonl or .csv file per split with `image` and/or `text`, and `label` (multiclass) "
        "or `labels` (multilabel) keys or columns; see data_modules/labelled_file.py"
    )
    source = "your own data (docs/your_data.md)"

    def __init__(
        self,
        *,
        train: str,
        val: str,
        test: str,
        image_root: str | None = None,
        classes: list[str] | None = None,
        multilabel: bool | None = None,
        label_separator: str = "|",
        **kwargs: Any,
    ) -> None:
        files = {s: Path(p).expanduser() for s, p in zip(SPLITS, (train, val, test))}
        if image_root is None:
            folders = sorted({str(f.parent) for f in files.values()})
            if len(folders) > 1:
                raise ValueError(
                    f"the train, val and test files lie in different folders "
                    f"({', '.join(folders)}): give image_root, the folder relative image paths "
                    "start from"
                )
            image_root = folders[0]
        super().__init__(root=image_root, **kwargs)
        if multilabel not in (None, True, False):
            raise ValueError(f"multilabel must be true, false or null, got {multilabel!r}")
        if classes is not None:
            _check_classes(classes)
        if not label_separator:
            raise ValueError("label_separator must be a non-empty string")
        self.files = files
        self.given_task: Task | None = None
        if multilabel is not None:
            self.given_task = "multilabel" if multilabel else "multiclass"
        self.given_classes = None if classes is None else list(classes)
        self.label_separator = label_separator

    # ---- classes and task -------------------------------------------------------------------

    @property
    def task(self) -> Task:
        return self.given_task or self._task_from_train

    @property
    def class_names(self) -> list[str]:
        if self.given_classes is not None:
            return self.given_classes
        return self._classes_from_train

    @cached_property
    def _class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}

    @cached_property
    def _task_from_train(self) -> Task:
        path = self._checked_file("train")
        if path.suffix.lower() == ".csv":
            keys = set(self._csv_header(path, None))
        else:
            keys = set()
            for _, row in read_rows(path):
                if isinstance(row, dict):
                    keys.update(k for k in LABEL_KEYS.values() if k in row)
        found = [task for task, key in LABEL_KEYS.items() if key in keys]
        if len(found) != 1:
            has = "both a `label` and a `labels`" if found else "neither a `label` nor a `labels`"
            raise ValueError(
                f"{path}: has {has} key; set multilabel: false (`label`, one class name per row) "
                "or true (`labels`, a list of class names)"
            )
        return found[0]

    @cached_property
    def _classes_from_train(self) -> list[str]:
        """Sorted unique labels of the train file's rows whose label parses."""
        path = self._checked_file("train")
        names: set[str] = set()
        for _, row in read_rows(path):
            if isinstance(row, dict) and not _extra_fields(row):
                try:
                    names.update(self._label_names(row, path))
                except SampleRejected:
                    continue  # reported when the split is read
        if not names:
            raise ValueError(
                f"{path}: no row has a valid `{LABEL_KEYS[self.task]}`, so there are no classes; "
                "fix the labels or give classes"
            )
        if all(_INTEGER.fullmatch(n) for n in names):
            return sorted(names, key=lambda n: (int(n), n))  # "01" and "1" stay in one order
        return sorted(names)

    # ---- reading ----------------------------------------------------------------------------

    def read_split(self, split: str) -> Iterator[SampleRecord | Rejected]:
        path = self._checked_file(split)
        if path.suffix.lower() == ".csv":
            self._csv_header(path, self.task)  # a missing label column is one line, not one per row
        # id_key(id) -> (line, id); the base refuses repeats too, without a line
        seen: dict[str, tuple[int, str]] = {}
        in_train = {} if split == "train" else self._train_ids
        for line_number, row in read_rows(path):
            where = f"line {line_number} of {path}"
            sample_id = f"{path.name}:{line_number}"
            if isinstance(row, str):
                yield Rejected(sample_id, f"{row} ({where})")
                continue
            try:
                sample_id = _row_id(row, sample_id)
                key = id_key(sample_id)
                if key in seen:
                    line, first = seen[key]
                    raise SampleRejected(
                        f"duplicate id: first at line {line}{same_as(sample_id, first)}"
                    )
                if row.get("id") not in (None, "") and key in in_train:
                    line, first = in_train[key]
                    raise SampleRejected(
                        f"duplicate id: also in the train split (line {line} of "
                        f"{self.files['train']}){same_as(sample_id, first)}: a model is never "
                        "evaluated on a sample it was trained on; keep each sample in one split"
                    )
                record = self._record(row, sample_id, path)
            except SampleRejected as err:
                yield Rejected(sample_id, f"{err.reason} ({where})")
                continue
            seen[key] = (line_number, sample_id)
            yield record

    @cached_property
    def _train_ids(self) -> dict[str, tuple[int, str]]:
        """The ids given in the train file's rows (`id_key(id)` -> (line, id)): a val or test
        sample with one of them is refused. Default ids name a place in a file, not a sample."""
        ids: dict[str, tuple[int, str]] = {}
        for line_number, row in read_rows(self._checked_file("train")):
            if isinstance(row, dict) and row.get("id") not in (None, ""):
                with contextlib.suppress(SampleRejected):
                    sample_id = _row_id(row, "")
                    ids.setdefault(id_key(sample_id), (line_number, sample_id))
        return ids

    def _record(self, row: dict[str, Any], sample_id: str, path: Path) -> SampleRecord:
        """The record of one parsed row, or raise `SampleRejected` with the reason."""
        if _extra_fields(row):
            raise SampleRejected("malformed row: more fields than the CSV header names")
        indices = []
        for name in self._label_names(row, path):
            if name not in self._class_index:
                origin = "classes" if self.given_classes else "the train file's labels"
                raise SampleRejected(
                    f"unknown label: {short_repr(name)} is not in {origin}; to keep such samples,"
                    " list every class in `classes` (the model then has an output for it)"
                )
            indices.append(self._class_index[name])
        image, text = row.get("image"), row.get("text")
        if image in (None, "") and text is None:
            raise SampleRejected("empty row: neither image nor text")
        if text is not None and not isinstance(text, str):
            raise SampleRejected(f"invalid text: not a string: {short_repr(text)}")
        image_path = None if image in (None, "") else self._image_path(image)
        label = sorted(set(indices)) if self.task == "multilabel" else indices[0]
        return SampleRecord(
            id=sample_id,
            image_path=image_path,
            text=text or "",
            label=label,
            text_present=text is not None,
        )

    def _label_names(self, row: dict[str, Any], path: Path) -> list[str]:
        """The class names of a row (one for multiclass), or raise `SampleRejected`."""
        key = LABEL_KEYS[self.task]
        value = row.get(key)
        if self.task == "multiclass":
            if value in (None, ""):
                raise SampleRejected(f"missing label: no `{key}`")
            return [_class_name(value, key)]
        if value is None and path.suffix.lower() == ".csv":
            return []  # an empty cell: no class
        if isinstance(value, str) and path.suffix.lower() == ".csv":
            parts = (p.strip() for p in value.split(self.label_separator))
            return [p for p in parts if p]
        if value is None:
            raise SampleRejected(f"missing label: no `{key}` (a list, [] for no class)")
        if not isinstance(value, list):
            raise SampleRejected(f"invalid label: `{key}` is not a list: {short_repr(value)}")
        return [_class_name(v, key) for v in value]

    def _image_path(self, image: Any) -> Path:
        """The image file of a row, checked to lie inside the root and to exist (so that the
        report names the line; the base checks again and probes the file)."""
        if not isinstance(image, str):
            raise SampleRejected(f"invalid image: not a path string: {short_repr(image)}")
        path = self.root / image
        try:
            kind = not_a_file(path)  # only stat: a FIFO is never opened
            if kind is not None:
                raise SampleRejected(f"unreadable image: {kind}, not an image file: {path}")
            self.inside_root(path)  # raises SampleRejected("outside dataset root: ...")
            found = path.is_file()
        except (OSError, ValueError) as err:  # a name too long, a NUL byte
            reason = f"invalid image path: {os_reason(err)}: {short_repr(image)}"
            raise SampleRejected(reason) from err
        if not found:
            raise SampleRejected(f"missing image: {path}")
        return path

    # ---- files ------------------------------------------------------------------------------

    def _checked_file(self, split: str) -> Path:
        """The split's file, or one line saying why it cannot be read."""
        path = self.files[split]
        if path.suffix.lower() not in SUFFIXES:
            raise ValueError(
                f"{path}: the {split} file must be a .jsonl or a .csv file, got {path.suffix!r}"
            )
        try:
            found = path.is_file()
        except (OSError, ValueError) as err:  # a name too long, a NUL byte
            raise ValueError(f"{split} file {str(path)!r}: {os_reason(err)}") from err
        kind = None if found else not_a_file(path)  # only stat: a FIFO is never opened
        if kind is not None:
            raise ValueError(
                f"{split} file {path} is {kind}: give a .jsonl or .csv file (--data.{split} FILE)"
            )
        if not found:
            hint = f" (the folder {path.parent} does not exist)" if not path.parent.is_dir() else ""
            raise self.not_found(path, f"{split} file", hint)
        return path

    def not_found(self, missing: Path, what: str, hint: str = "") -> DatasetNotFoundError:
        """A missing split file: no dataset layout or download to point to, but the option."""
        split = what.split()[0]
        return DatasetNotFoundError(
            f"{self.dataset_name}: {what} not found; looked for {missing}{hint}. Give the path "
            f"of your {split} .jsonl or .csv file (--data.{split} FILE); the format is in "
            "docs/your_data.md"
        )

    def _csv_header(self, path: Path, task: str | None) -> list[str]:
        """The header of a CSV split file, checked: an `image` or a `text` column, and the label
        column of `task` (of either task when None)."""
        try:
            with path.open(encoding="utf-8-sig", newline="") as handle:  # Excel's BOM too
                header = next(csv.reader(handle), [])
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{path}: not UTF-8 text (byte {err.start}); save the CSV as UTF-8"
            ) from err
        except csv.Error as err:
            raise ValueError(f"{path}: the CSV header does not parse: {err}") from err
        wanted = [LABEL_KEYS[task]] if task else list(LABEL_KEYS.values())
        problems = []
        if not set(header) & {"image", "text"}:
            problems.append("an `image` and/or a `text` column")
        if not set(header) & set(wanted):
            problems.append(" or ".join(f"a `{k}` column" for k in wanted))
        if problems:
            raise ValueError(
                f"{path}: the CSV header must name {' and '.join(problems)}, "
                f"got {short_repr(header)}"
            )
        return header


def _class_name(value: Any, key: str) -> str:
    """A label value as a class name: a non-empty string (stripped) or a whole number (`2` and
    `2.0` are one JSON number: a column of integers with a gap is written so by pandas)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOATS:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise SampleRejected(
        f"invalid label: `{key}` holds {short_repr(value)}, not a class name (a string or a "
        "whole number)"
    )


def _row_id(row: dict[str, Any], default: str) -> str:
    given = row.get("id")
    if given in (None, ""):
        return default
    if isinstance(given, bool) or not isinstance(given, str | int):
        raise SampleRejected(f"invalid id: {short_repr(given)}")
    return str(given)


def _extra_fields(row: dict[Any, Any]) -> bool:
    """Whether a CSV row had more fields than its header (`csv.DictReader` files them under
    the key None)."""
    return None in row


def _check_classes(names: Any) -> None:
    if not isinstance(names, list) or not names:
        raise ValueError(f"classes must be a non-empty list of names, got {short_repr(names)}")
    bad = [n for n in names if not isinstance(n, str) or not n.strip() or n != n.strip()]
    if bad:
        raise ValueError(f"classes must be non-empty names without edge spaces, got {bad[:3]}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"classes lists {repeated} more than once")
