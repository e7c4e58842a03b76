"""Small fake copies of the three datasets in their real on-disk layouts, written by code.

Each writer takes the dataset root to create and returns what a reader must make of it. With
`dirty=True` the copy carries the known dirt of the real distribution (reader tests); with
`dirty=False` it is clean and slightly learnable (smoke runs through the CLI). Deterministic in
`seed`. Used by the tests and at run time (smoke reproductions), hence a package module.
"""

from .common import FakeDataset, jpeg_bytes
from .demo import ensure_demo_dataset, write_demo_dataset
from .food101 import write_fake_food101
from .mmimdb import FakeMMIMDB, write_fake_mmimdb
from .snli_ve import write_fake_snli_ve

__all__ = [
    "FakeDataset",
    "FakeMMIMDB",
    "ensure_demo_dataset",
    "jpeg_bytes",
    "write_fake_food101",
    "write_fake_mmimdb",
    "write_demo_dataset",
    "write_fake_snli_ve",
]
