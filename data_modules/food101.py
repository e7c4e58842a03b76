"""UPMC-Food101 (Wang et al., 2015): food photos and recipe-page titles, 101 classes, multi-class.

Accepted layout (as distributed; nothing is converted or downloaded):

    root/images/train/<class>/<class>_<n>.jpg   root/texts/train_titles.csv
    root/images/test/<class>/<class>_<n>.jpg    root/texts/test_titles.csv

Decisions:
- **Parsing.** The CSVs have no header and three columns: file name, title, class. Each physical
  line is one row (the `breakfast_burrito_730.jpg` row opens a quote it never closes; a CSV
  parser would swallow the lines after it). The file name is the text before the first comma,
  the class the text after the last one, the title everything between (titles hold commas).
  A title wrapped in double quotes is unquoted (`""` -> `"`); a lone opening quote is removed.
  Lines are UTF-8; a line that is not is read as Latin-1 and counted in the log. Blank lines are
  not samples. A first line whose file-name field is not a `.jpg` / `.txt` name is a header row
  (some re-uploads add one) and is skipped with a log line.
- **Validation** per row: three fields; a file name `<class>_<n>.jpg` inside the dataset root;
  the class one of the 101 pinned in `FOOD101_CLASSES` (sorted, as Food-101's `classes.txt`) and
  equal to the file name's prefix (everything before the last `_`); the image exists and is
  readable (checked by the base). A row naming `<class>_<n>.txt` (the text file of the older
  raw-text distribution) is read as the image `<class>_<n>.jpg` and counted in the log. An
  empty title is kept as "" (not a bad sample). Sample ids are the file stems (`pizza_12`).
- **Validation split.** There is no official one: `val_size` rows of the train CSV (an int count,
  or a float fraction in (0, 1); 5,000 is the common choice) are drawn per class in proportion
  to the class sizes (largest-remainder rounding) with a generator seeded by `split_seed`, and
  the rest stay in train, in file order. The draw is over the rows that pass the row checks
  (before image checks), so it is a function of the CSV, `val_size` and `split_seed` only: a
  missing image does not move other rows between train and val. Rows refused while parsing are
  reported under `train`.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from .base import ImageTextDataModule, Task
from .reasons import path_reason
from .records import Rejected, SampleRecord, SampleRejected

log = logging.getLogger(__name__)

FOOD101_CLASSES: tuple[str, ...] = tuple(
    """apple_pie baby_back_ribs baklava beef_carpaccio beef_tartare beet_salad beignets bibimbap
    bread_pudding breakfast_burrito bruschetta caesar_salad cannoli caprese_salad carrot_cake
    ceviche cheese_plate cheesecake chicken_curry chicken_quesadilla chicken_wings chocolate_cake
    chocolate_mousse churros clam_chowder club_sandwich crab_cakes creme_brulee croque_madame
    cup_cakes deviled_eggs donuts dumplings edamame eggs_benedict escargots falafel filet_mignon
    fish_and_chips foie_gras french_fries french_onion_soup french_toast fried_calamari fried_rice
    frozen_yogurt garlic_bread gnocchi greek_salad grilled_cheese_sandwich grilled_salmon
    guacamole gyoza hamburger hot_and_sour_soup hot_dog huevos_rancheros hummus ice_cream lasagna
    lobster_bisque lobster_roll_sandwich macaroni_and_cheese macarons miso_soup mussels nachos
    omelette onion_rings oysters pad_thai paella pancakes panna_cotta peking_duck pho pizza
    pork_chop poutine prime_rib pulled_pork_sandwich ramen ravioli red_velvet_cake risotto samosa
    sashimi scallops seaweed_salad shrimp_and_grits spaghetti_bolognese spaghetti_carbonara
    spring_rolls steak strawberry_shortcake sushi tacos takoyaki tiramisu tuna_tartare
    waffles""".split()
)
_CLASS_INDEX = {c: i for i, c in enumerate(FOOD101_CLASSES)}
_FILE_NAME = re.compile(r"(?P<stem>(?P<cls>\w+)_\d+)\.(?P<ext>jpg|txt)")
_CSV = {"train": "train_titles.csv", "test": "test_titles.csv"}


@dataclass(frozen=True)
class TitleRow:
    """One valid CSV row: sample id (file stem), class index, title and the image path."""

    id: str
    label: int
    title: str
    image_path: Path


@dataclass
class ParsedTitles:
    """A titles CSV after the row checks: valid rows in file order, refused rows, counts."""

    rows: list[TitleRow]
    rejected: list[Rejected]
    header: str | None = None
    txt_names: int = 0
    latin1_lines: int = 0


def split_row(line: str) -> tuple[str, str, str] | None:
    """(file name, title, class) of one physical CSV line, or None with fewer than 3 fields.

    The title is everything between the first and the last comma; quotes are removed as the
    module docstring says. Example: the line `a_1.jpg,"x, ""y"" z",a` gives the title
    `x, "y" z`.
    """
    first, last = line.find(","), line.rfind(",")
    if first < 0 or first == last:
        return None
    name, title, cls = line[:first], line[first + 1 : last], line[last + 1 :]
    return _unquote(name.strip()), _unquote(title.strip()), _unquote(cls.strip())


def _unquote(field: str) -> str:
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1].replace('""', '"')
    return field[1:] if field.startswith('"') else field


def _row_id(line: str, place: str) -> str:
    """Id under which a refused row is reported: its file stem, else its file-name field as
    written, else its place (`train_titles.csv:12`)."""
    name = _unquote(line.split(",", 1)[0].strip())
    match = _FILE_NAME.fullmatch(name)
    return match["stem"] if match else name or place


def stratified_val_indices(labels: list[int], val_count: int, seed: int) -> set[int]:
    """Indices (into `labels`) of a validation draw of `val_count` rows, stratified by class.

    Class `c` with `n_c` of the `n` rows gives `floor(val_count * n_c / n)` rows, plus one for
    the classes with the largest remainders (ties: lower class index first) until the total is
    `val_count`; within a class the rows are a seeded random choice.
    """
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    n = len(labels)
    exact = {c: val_count * len(rows) / n for c, rows in sorted(by_class.items())}
    quota = {c: int(q) for c, q in exact.items()}
    by_remainder = sorted(exact, key=lambda c: (-(exact[c] - quota[c]), c))
    for c in by_remainder[: val_count - sum(quota.values())]:
        quota[c] += 1
    rng = np.random.default_rng(seed)
    chosen: set[int] = set()
    for c, rows in sorted(by_class.items()):
        picked = rng.permutation(len(rows))[: quota[c]]
        chosen.update(rows[i] for i in picked)
    return chosen


class Food101DataModule(ImageTextDataModule):
    """UPMC-Food101 classification (`task="multiclass"`, 101 classes); see the module docstring.

    Args:
        val_size: rows of the train CSV held out for validation: a count (int >= 1) or a
            fraction (float in (0, 1)). The default, 5000, is the common choice on the full
            dataset; small copies need a smaller count or a fraction.
        split_seed: seed of the stratified validation draw (recorded in the run's config).
        **kwargs: the `ImageTextDataModule` arguments (root, image_size, batch_size, ...).
    """

    dataset_name = "UPMC-Food101"
    accepted_layouts = (
        "root/images/{train,test}/<class>/<class>_<n>.jpg + root/texts/{train,test}_titles.csv "
        "(header-less CSV rows: file name, title, class)"
    )
    source = (
        "http://visiir.isir.upmc.fr/ (UPMC Food-101; also mirrored on Kaggle as "
        "gianmarco96/upmcfood101)"
    )
    # The train entry is the whole train CSV; expected_split_sizes() splits it into train + val.
    standard_sizes = {"train": 67_972, "test": 22_716}

    def __init__(self, *, val_size: int | float = 5000, split_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(val_size, bool) or not (
            (isinstance(val_size, int) and val_size >= 1)
            or (isinstance(val_size, float) and 0.0 < val_size < 1.0)
        ):
            raise ValueError(
                f"val_size must be a count >= 1 or a fraction in (0, 1), got {val_size!r}"
            )
        self.val_size = val_size
        self.split_seed = split_seed
        self._parsed_csvs: dict[str, ParsedTitles] = {}

    @property
    def class_names(self) -> list[str]:
        return list(FOOD101_CLASSES)

    @property
    def task(self) -> Task:
        return "multiclass"

    def read_split(self, split: str) -> Iterator[SampleRecord | Rejected]:
        if split == "test":
            parsed, keep = self._parsed("test"), None
        else:
            parsed = self._parsed("train")
            val = self._val_indices
            keep = val if split == "val" else set(range(len(parsed.rows))) - val
        if split != "val":
            yield from parsed.rejected
        for index, row in enumerate(parsed.rows):
            if keep is None or index in keep:
                yield SampleRecord(row.id, row.image_path, row.title, row.label)

    def expected_split_sizes(self) -> dict[str, int]:
        n_val = len(self._val_indices)
        sizes = dict(self.standard_sizes)
        return {"train": sizes["train"] - n_val, "val": n_val, "test": sizes["test"]}

    @cached_property
    def _val_indices(self) -> set[int]:
        """Indices into the train CSV's valid rows that form the validation split."""
        rows = self._parsed("train").rows
        if not rows:  # train and val are empty; the train loader says why (_empty_split_message)
            return set()
        if isinstance(self.val_size, float):
            count = max(1, round(self.val_size * len(rows)))
        else:
            count = self.val_size
        if count >= len(rows):
            raise ValueError(
                f"{self.dataset_name}: val_size={self.val_size!r} leaves no training rows: the "
                f"train CSV has {len(rows)} valid rows; give a smaller count or a fraction "
                f"(e.g. --data.val_size=0.1)"
            )
        val = stratified_val_indices([r.label for r in rows], count, self.split_seed)
        rank_zero_info(
            f"{self.dataset_name}: validation split of {count} of the {len(rows)} valid train "
            f"rows (stratified, split_seed={self.split_seed})"
        )
        return val

    def _empty_split_message(self, split: str) -> str:
        """For a train CSV without a valid row, say so (no `val_size` would help)."""
        parsed = self._parsed("test" if split == "test" else "train")
        if parsed.rows:
            return super()._empty_split_message(split)
        csv_path = self.root / "texts" / _CSV["test" if split == "test" else "train"]
        example = f"; the first: {parsed.rejected[0].reason}" if parsed.rejected else ""
        return (
            f"{self.dataset_name}: the {split} split is empty: the CSV {csv_path} has no valid "
            f"rows ({len(parsed.rejected)} refused{example}); all are listed in "
            f"bad_samples.json in the run directory (or run `rlrt inspect-data`)"
        )

    def _parsed(self, csv_split: str) -> ParsedTitles:
        """The parsed CSV of "train" or "test", read once (train and val share the train CSV)."""
        if csv_split not in self._parsed_csvs:
            self._parsed_csvs[csv_split] = self._parse(csv_split)
        return self._parsed_csvs[csv_split]

    def _parse(self, csv_split: str) -> ParsedTitles:
        csv_path = self.root / "texts" / _CSV[csv_split]
        relative = f"texts/{_CSV[csv_split]}"
        if not csv_path.is_file():
            hint = self.root_hint(relative)
            if not hint and (self.root / "texts_txt").is_dir():
                hint = (
                    " (this root holds texts_txt/, the older raw-web-page distribution; this "
                    "reader takes the titles CSVs, and numbers on the two are not comparable)"
                )
            raise self.not_found(csv_path, relative, hint)
        image_dir = self.root / "images" / csv_split
        if not image_dir.is_dir():
            raise self.not_found(image_dir, f"folder images/{csv_split}/")
        parsed = ParsedTitles(rows=[], rejected=[])
        seen: set[str] = set()
        for number, raw in enumerate(csv_path.read_bytes().split(b"\n"), start=1):
            line = self._decode(raw, number, parsed)
            if not line.strip():
                continue  # blank lines (the last newline gives one) are not samples
            place = f"{_CSV[csv_split]}:{number}"
            fields = split_row(line)
            if not parsed.rows and not parsed.rejected and parsed.header is None:
                name = fields[0] if fields else line
                if not name.lower().endswith((".jpg", ".txt")):
                    parsed.header = line.strip()
                    rank_zero_info(
                        f"{self.dataset_name}: {place} is a header row, skipped: {line!r}"
                    )
                    continue
            try:
                row = self._row(fields, image_dir, place, parsed)
            except SampleRejected as err:
                parsed.rejected.append(Rejected(_row_id(line, place), err.reason))
                continue
            except (OSError, ValueError) as err:  # a name that is no file name (NUL, too long)
                reason = f"{path_reason(err, image_dir / (fields or ('', '', ''))[2])} at {place}"
                parsed.rejected.append(Rejected(_row_id(line, place), reason))
                continue
            if row.id in seen:
                parsed.rejected.append(Rejected(row.id, f"duplicate id: again at {place}"))
                continue
            seen.add(row.id)
            parsed.rows.append(row)
        self._log_parse_counts(csv_split, parsed)
        return parsed

    def _decode(self, raw: bytes, number: int, parsed: ParsedTitles) -> str:
        raw = raw.removesuffix(b"\r")
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # UTF-8 byte-order mark
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            parsed.latin1_lines += 1
            return raw.decode("latin-1")

    def _row(
        self,
        fields: tuple[str, str, str] | None,
        image_dir: Path,
        place: str,
        parsed: ParsedTitles,
    ) -> TitleRow:
        """One valid row, or raise `SampleRejected` with the reason."""
        if fields is None:
            raise SampleRejected(
                f"malformed csv row: {place} does not have 3 fields (file name, title, class)"
            )
        name, title, cls = fields
        if not name:
            raise SampleRejected(f"malformed csv row: {place} has an empty file name")
        if any(sep in name + cls for sep in ("/", "\\")):
            self.inside_root(image_dir / cls / name)  # raises "outside dataset root: ..."
        if cls not in _CLASS_INDEX:
            raise SampleRejected(f"unknown label: {cls!r} at {place}")
        match = _FILE_NAME.fullmatch(name)
        if match is None:
            raise SampleRejected(
                f"malformed csv row: file name {name!r} at {place} is not <class>_<n>.jpg"
            )
        if match["cls"] != cls:
            raise SampleRejected(
                f"malformed csv row: file name {name!r} at {place} is not of class {cls!r}"
            )
        if match["ext"] == "txt":
            parsed.txt_names += 1
        stem = match["stem"]
        return TitleRow(stem, _CLASS_INDEX[cls], title, image_dir / cls / f"{stem}.jpg")

    def _log_parse_counts(self, csv_split: str, parsed: ParsedTitles) -> None:
        notes = {
            "rows naming <class>_<n>.txt, read as the .jpg image": parsed.txt_names,
            "lines that are not UTF-8, read as Latin-1": parsed.latin1_lines,
        }
        for what, n in notes.items():
            if n:
                rank_zero_info(f"{self.dataset_name} {csv_split} CSV: {n} {what}")
        kinds = Counter(r.reason.split(":")[0] for r in parsed.rejected)
        log.info(
            "%s %s CSV: %d valid rows, %d refused (%s)",
            self.dataset_name,
            csv_split,
            len(parsed.rows),
            len(parsed.rejected),
            dict(kinds),
        )
