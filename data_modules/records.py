"""The records a dataset reader yields, and the errors and reports about bad samples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


@dataclass
class SampleRecord:
    """One sample as read from disk, before decoding.

    `label` is a list of class indices (multilabel) or one class index (multiclass).
    `image_path=None` means the sample has no image (decoded as zeros, `image_present=False`).
    """

    id: str
    image_path: Path | None
    text: str
    label: list[int] | int
    text_present: bool = True  # False: the sample has no text (then `text` is "")


class Rejected(NamedTuple):
    """A sample a reader refused, with the reason ("kind: detail")."""

    id: str
    reason: str


class BadSample(NamedTuple):
    """A dropped sample as reported by the DataModule."""

    split: str
    id: str
    reason: str


class SampleRejected(Exception):
    """Raised by reader helpers; readers turn it into a `Rejected` item."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadSampleError(ValueError):
    """A bad sample met with `on_bad_sample="error"`."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset root or one of its required files is missing."""
