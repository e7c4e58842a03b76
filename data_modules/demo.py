"""`DemoMMIMDBDataModule`: MM-IMDB's reader over the synthetic dataset of `fakes.demo`, written on
first use. The generator (genres split between poster and plot, so that fusing helps) is documented
there."""

from __future__ import annotations

from typing import Any

from .fakes.demo import ensure_demo_dataset
from .mmimdb import MMIMDBDataModule


class DemoMMIMDBDataModule(MMIMDBDataModule):
    """`MMIMDBDataModule` over the synthetic data of this module, generated on first use.

    Args:
        num_movies: movies to generate when `root` holds no dataset yet.
        demo_seed: seed of the generator (the training shuffle uses `seed`).
        **kwargs: the `MMIMDBDataModule` arguments (root, text_unit, image_size, ...).
    """

    source = "data_modules.fakes.demo.write_demo_dataset() (generated on prepare_data/setup)"

    def __init__(self, *, num_movies: int = 1500, demo_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_movies = num_movies
        self.demo_seed = demo_seed

    def prepare_data(self) -> None:
        ensure_demo_dataset(self.root, num_movies=self.num_movies, seed=self.demo_seed)

    def setup(self, stage: str | None = None) -> None:
        # Also here so that setup() alone works outside a Trainer; cheap when already written.
        self.prepare_data()
        super().setup(stage)
