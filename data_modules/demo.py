"""`DemoMMIMDBDataModule`: MM-IMDB's reader over the synthetic dataset of `fakes.demo`, written on
first use. The generator (genres split between poster and plot, so that fusing helps) is documented
there."""

from __future__ import annotations

from typing import Any

from .fakes.demo import (
    DEFAULT_SHARED_FRACTION,
    check_shared_fraction,
    check_sizes,
    ensure_demo_dataset,
)
from .mmimdb import MMIMDBDataModule


class DemoMMIMDBDataModule(MMIMDBDataModule):
    """`MMIMDBDataModule` over the synthetic data of this module, generated on first use.

    Args:
        num_movies: movies to generate when `root` holds no dataset yet.
        demo_seed: seed of the generator (the training shuffle uses `seed`).
        poster_size: generated posters' (width, height) in px (`image_size` is the model's crop).
        plot_words: generated plots' (min, max) filler words; (128, 160) pass 128 tokens.
        shared_fraction: fraction of the 23 genres shown by both poster and plot, in [0, 1]
            (`round(f * 23)` genres; the rest half image-only, half text-only). Another value
            needs another `root`: a root holds one dataset.
        **kwargs: the `MMIMDBDataModule` arguments (root, text_unit, image_size, ...).
    """

    source = "data_modules.fakes.demo.write_demo_dataset() (generated on prepare_data/setup)"

    def __init__(
        self,
        *,
        num_movies: int = 1500,
        demo_seed: int = 0,
        poster_size: tuple[int, int] = (96, 144),
        plot_words: tuple[int, int] = (12, 24),
        shared_fraction: float = DEFAULT_SHARED_FRACTION,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.num_movies = num_movies
        self.demo_seed = demo_seed
        self.poster_size, self.plot_words = check_sizes(poster_size, plot_words, "poster_size")
        self.shared_fraction = check_shared_fraction(shared_fraction)

    def prepare_data(self) -> None:
        ensure_demo_dataset(
            self.root,
            num_movies=self.num_movies,
            seed=self.demo_seed,
            image_size=self.poster_size,
            plot_words=self.plot_words,
            shared_fraction=self.shared_fraction,
        )

    def setup(self, stage: str | None = None) -> None:
        # Also here so that setup() alone works outside a Trainer; cheap when already written.
        self.prepare_data()
        super().setup(stage)
