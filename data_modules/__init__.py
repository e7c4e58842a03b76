"""DataModules for image-text classification: a shared base, MM-IMDB, UPMC-Food101, SNLI-VE, a
user's own labelled JSONL/CSV files and synthetic demo data."""

from .base import ImageTextDataModule, ImageTextDataset, collate_samples
from .demo import DemoMMIMDBDataModule
from .fakes.demo import ensure_demo_dataset, write_demo_dataset
from .food101 import FOOD101_CLASSES, Food101DataModule
from .images import load_image
from .labelled_file import LabelledFileDataModule
from .mmimdb import MMIMDB_GENRES, MMIMDBDataModule
from .pairs import PairsDataModule
from .records import (
    BadSample,
    BadSampleError,
    DatasetNotFoundError,
    Rejected,
    SampleRecord,
    SampleRejected,
)
from .snli_ve import SNLI_VE_LABELS, SNLIVEDataModule

__all__ = [
    "FOOD101_CLASSES",
    "MMIMDB_GENRES",
    "SNLI_VE_LABELS",
    "BadSample",
    "BadSampleError",
    "DatasetNotFoundError",
    "DemoMMIMDBDataModule",
    "Food101DataModule",
    "ImageTextDataModule",
    "ImageTextDataset",
    "LabelledFileDataModule",
    "MMIMDBDataModule",
    "PairsDataModule",
    "SNLIVEDataModule",
    "Rejected",
    "SampleRecord",
    "SampleRejected",
    "collate_samples",
    "ensure_demo_dataset",
    "load_image",
    "write_demo_dataset",
]
