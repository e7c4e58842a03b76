"""DataModules for image-text classification: a shared base, MM-IMDB and synthetic demo data."""

from .base import (
    BadSample,
    BadSampleError,
    DatasetNotFoundError,
    ImageTextDataModule,
    ImageTextDataset,
    Rejected,
    SampleRecord,
    SampleRejected,
    collate_samples,
    load_image,
)
from .demo import DemoMMIMDBDataModule, ensure_demo_dataset, write_demo_dataset
from .mmimdb import MMIMDB_GENRES, MMIMDBDataModule

__all__ = [
    "MMIMDB_GENRES",
    "BadSample",
    "BadSampleError",
    "DatasetNotFoundError",
    "DemoMMIMDBDataModule",
    "ImageTextDataModule",
    "ImageTextDataset",
    "MMIMDBDataModule",
    "Rejected",
    "SampleRecord",
    "SampleRejected",
    "collate_samples",
    "ensure_demo_dataset",
    "load_image",
    "write_demo_dataset",
]
