"""A training loader whose order is a pure function of `(seed, epoch)` and that resumes mid-epoch.

Why: a run killed in the middle of an epoch and resumed from its last checkpoint must see the
same batches, in the same order, as a run that was never interrupted.

- `EpochShuffleSampler` draws epoch `e`'s permutation from `seed + e` (as `DistributedSampler`
  does); Lightning calls `set_epoch(e)` before every epoch, on a resumed run too. A `RandomSampler`
  fed one generator would instead give epoch `e` the permutation after `e` draws, which a resumed
  process cannot reproduce.
- `ResumableDataLoader` has `state_dict` / `load_state_dict` (the epoch and the batches yielded so
  far in it), stored with every checkpoint and restored on a mid-epoch restart (by Lightning,
  and by `rlrt.engine.resume.ExactResume` where Lightning misses it); the next iteration then
  starts where the checkpoint was taken. Lightning does not prefetch from a loader with a length,
  so "yielded" is "trained on" when a checkpoint is written.
- The loader's own generator (worker seeds) is reseeded from `(seed, epoch)` at every iteration,
  and the global RNG is never drawn from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler


class EpochShuffleSampler(RandomSampler):
    """A permutation of `range(len(data_source))` drawn from `seed + epoch`.

    A `RandomSampler` subclass, so Lightning treats the loader as shuffled (and, on several
    devices, replaces it with a `DistributedSampler` that shuffles by epoch as well).

    Args:
        data_source: anything with a length.
        seed: base seed of the permutations.
    """

    def __init__(self, data_source: Sized, *, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_next_at(self, position: int) -> None:
        """Let the next iteration (only) begin `position` indices into the epoch's permutation."""
        self._start = position

    def permutation(self) -> list[int]:
        """The whole order of the current epoch."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(len(self.data_source), generator=generator).tolist()

    def __len__(self) -> int:
        return len(self.data_source)

    def __iter__(self) -> Iterator[int]:
        start, self._start = self._start, 0
        yield from self.permutation()[start:]


class ResumableDataLoader(DataLoader):
    """A `DataLoader` that Lightning can checkpoint and resume mid-epoch.

    Takes the `DataLoader` arguments; with `shuffle=True` the order comes from an
    `EpochShuffleSampler` seeded with `generator.initial_seed()` (0 without a generator). Any other
    sampler works too: resuming then skips the batches already trained on by drawing and
    discarding them (exact for samplers that are deterministic per epoch).

    State: `{"epoch": int | None, "batches": int}`, the batches yielded in the current epoch.
    """

    def __init__(self, dataset: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("shuffle") and kwargs.get("sampler") is None:
            generator = kwargs.get("generator")
            seed = 0 if generator is None else generator.initial_seed()
            kwargs["shuffle"] = None
            kwargs["sampler"] = EpochShuffleSampler(dataset, seed=seed)
        super().__init__(dataset, *args, **kwargs)
        self._yielded = 0
        self._skip = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": getattr(self.sampler, "epoch", None), "batches": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch = state.get("epoch")
        if epoch is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        batches = int(state.get("batches", 0))
        # A checkpoint written after the epoch's last batch resumes at the next epoch's start.
        self._skip = batches if 0 < batches < len(self) else 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing runs before the first batch is asked for, i.e. after Lightning's
        # `set_epoch` for the epoch about to start.
        skip, self._skip = self._skip, 0
        sampler = self.sampler
        if isinstance(sampler, EpochShuffleSampler) and self.generator is not None:
            self.generator.manual_seed(sampler.seed + sampler.epoch)
        in_sampler = skip and isinstance(sampler, EpochShuffleSampler) and self.batch_size
        if in_sampler:
            sampler.start_next_at(skip * self.batch_size)
        iterator = super().__iter__()
        if skip and not in_sampler:
            for _ in range(skip):
                next(iterator, None)
        self._yielded = skip
        for batch in iterator:
            self._yielded += 1
            yield batch
