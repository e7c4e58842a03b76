"""SNLI-VE (Xie et al., 2019): visual entailment of a hypothesis by a Flickr30k image, 3 classes.

Accepted layout (as distributed; nothing is converted or downloaded):

    root/snli_ve_train.jsonl  root/snli_ve_dev.jsonl  root/snli_ve_test.jsonl
    root/flickr30k_images/<image id>.jpg

Decisions:
- Our `val` split is `snli_ve_dev.jsonl`.
- One JSON object per line; blank lines are not samples. The text is `sentence2` (the
  hypothesis) and nothing else: `sentence1` is the premise caption of the same image, and
  feeding it would turn the task into text entailment. A `sentence2` that is present but empty
  is kept as ""; a missing or non-string one is a bad sample ("missing text").
- The image id is read from the first present of `IMAGE_ID_KEYS` (`Flikr30kID` [sic], often
  `"<digits>.jpg"`; `Flickr30K_ID`, without suffix; `Flickr30kID`), as a string or bare digits
  (a JSON number); a `.jpg` suffix is stripped and the image is `flickr30k_images/<id>.jpg`.
- Labels pinned: entailment 0, neutral 1, contradiction 2. A `gold_label` of `-` or "" (the
  annotators did not agree) is dropped as "no gold label"; any other string is "unknown label".
- Sample ids are `pairID` (unique per pair in the official files), or `<file>:<line>` when a
  row has none.
- Each image serves about 18 hypotheses. The base validates each image file once per split and
  decodes each distinct image once per batch (`ImageTextDataset.__getitems__`); in random
  training batches sharing is rare, so for training at scale the feature cache (image features
  computed once per image) is the tool.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .base import ImageTextDataModule, Task
from .reasons import json_error, os_reason, path_reason, short_repr
from .records import Rejected, SampleRecord, SampleRejected

SNLI_VE_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
IMAGE_ID_KEYS: tuple[str, ...] = ("Flikr30kID", "Flickr30K_ID", "Flickr30kID")
_LABEL_INDEX = {name: i for i, name in enumerate(SNLI_VE_LABELS)}
_FILES = {"train": "snli_ve_train.jsonl", "val": "snli_ve_dev.jsonl", "test": "snli_ve_test.jsonl"}
IMAGE_DIR = "flickr30k_images"


class SNLIVEDataModule(ImageTextDataModule):
    """SNLI-VE visual entailment (`task="multiclass"`, 3 classes); see the module docstring.

    Args:
        **kwargs: the `ImageTextDataModule` arguments (root, image_size, batch_size, ...).
    """

    dataset_name = "SNLI-VE"
    accepted_layouts = "root/snli_ve_{train,dev,test}.jsonl + root/flickr30k_images/<image id>.jpg"
    source = (
        "https://github.com/necla-ml/SNLI-VE (the jsonl files) and the Flickr30k images "
        "(https://shannon.cs.illinois.edu/DenotationGraph/)"
    )
    standard_sizes = {"train": 529_527, "val": 17_858, "test": 17_901}

    @property
    def class_names(self) -> list[str]:
        return list(SNLI_VE_LABELS)

    @property
    def task(self) -> Task:
        return "multiclass"

    def read_split(self, split: str) -> Iterator[SampleRecord | Rejected]:
        name = _FILES[split]
        path = self.root / name
        if not path.is_file():
            raise self.not_found(path, name, self.root_hint(name))
        image_dir = self.root / IMAGE_DIR
        if not image_dir.is_dir():
            raise self.not_found(image_dir, f"folder {IMAGE_DIR}/", self.root_hint(IMAGE_DIR))
        with open(path, "rb") as lines:
            for number, raw in enumerate(lines, start=1):
                if raw.isspace():  # (not strip(): no copy of a long line)
                    continue  # blank lines are not samples
                place = f"{name}:{number}"
                try:
                    row = json.loads(raw)
                except (ValueError, RecursionError) as err:  # also too deep, too long an int
                    yield Rejected(place, f"malformed json row: {json_error(err)} at {place}")
                    continue
                if not isinstance(row, dict):
                    yield Rejected(place, "malformed json row: not an object")
                    continue
                pair_id = row.get("pairID")
                sample_id = pair_id if isinstance(pair_id, str) and pair_id else place
                try:
                    yield self._record(row, sample_id, place)
                except SampleRejected as err:
                    yield Rejected(sample_id, err.reason)
                except (OSError, ValueError) as err:  # an image id that is no file name
                    yield Rejected(sample_id, f"{path_reason(err, path)} at {place}")

    def _record(self, row: dict[str, Any], sample_id: str, place: str) -> SampleRecord:
        """The record of one JSON row, or raise `SampleRejected` with the reason."""
        key = next((k for k in IMAGE_ID_KEYS if row.get(k) not in (None, "")), None)
        if key is None:
            raise SampleRejected(
                f"malformed json row: {place} has no image id (keys {', '.join(IMAGE_ID_KEYS)})"
            )
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise SampleRejected(f"malformed json row: {key}={short_repr(value)} at {place}")
        image_id = str(value)
        if image_id.lower().endswith(".jpg"):
            image_id = image_id[: -len(".jpg")]
        image_path = self.root / IMAGE_DIR / f"{image_id}.jpg"
        try:
            self.inside_root(image_path)
        except (OSError, ValueError) as err:  # too long a name, a NUL byte
            raise SampleRejected(
                f"invalid image id: {os_reason(err)}: {key}={short_repr(value)} at {place}"
            ) from err

        gold = row.get("gold_label")
        if gold in ("-", "", None):
            raise SampleRejected(
                f"no gold label: {short_repr(gold)} at {place} (the annotators did not agree)"
            )
        if not isinstance(gold, str) or gold not in _LABEL_INDEX:
            raise SampleRejected(f"unknown label: {short_repr(gold)} at {place}")
        text = row.get("sentence2")
        if not isinstance(text, str):
            raise SampleRejected(f"missing text: 'sentence2' is {short_repr(text)} at {place}")
        return SampleRecord(
            id=sample_id, image_path=image_path, text=text, label=_LABEL_INDEX[gold]
        )
