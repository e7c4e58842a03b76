"""What the commands print: Lightning's lines that tell a user of `rlrt` nothing they can act on
or learn from are left out, each named here with the reason; everything else Lightning says stays.

- "💡 Tip: ..." product adverts, at every Trainer start;
- "GPU available: False, used: False" (and TPU, HPU): said when there is nothing to use. A GPU
  that is available but unused is still said: that one a user can act on;
- "Seed set to N", at every command: the seed is in the run's `config.yaml`;
- "Loading `train_dataloader` to estimate number of stepping batches": the learning-rate schedule
  asks for the number of steps; an implementation detail;
- "Detected KeyboardInterrupt, attempting graceful shutdown ...": after Ctrl-C `rlrt` says
  itself, in one line, that the command was interrupted and what to do next;
- the warnings that the frozen encoders are in eval mode at the start of training (they are, on
  purpose) and Lightning's own use of a deprecated torch `_pytree` API (Lightning's to fix).

`quiet_restores()` also leaves out "Restoring states from the checkpoint path at ..." for
commands that evaluate one checkpoint many times (the robustness grid, the demo's tests), which
name the checkpoint once themselves.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

LIGHTNING_LOGGER = "lightning.pytorch.utilities.rank_zero"
SEED_LOGGER = "lightning.fabric.utilities.seed"

NOT_NEWS = (
    "💡 Tip:",
    "GPU available: False",
    "TPU available: False",
    "HPU available: False",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "\nDetected KeyboardInterrupt",
)
RESTORE_LINES = ("Restoring states from the checkpoint path at", "Loaded model weights from")

# (message regex, why it is left out); matched with `warnings.filterwarnings`.
KNOWN_WARNINGS = (
    (r"Found \d+ module\(s\) in eval mode at the start of training", "frozen encoders, on purpose"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", "inside Lightning, for Lightning to fix"),
)


class DropLines(logging.Filter):
    """Drops the records whose message starts with one of `prefixes`."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("[rank: "):  # a launched job's processes prefix their rank
            message = message.split("] ", 1)[-1]
        return not message.startswith(self.prefixes)


def _install(logger_name: str, prefixes: tuple[str, ...]) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropLines) and f.prefixes == prefixes for f in logger.filters):
        logger.addFilter(DropLines(prefixes))


def quiet_lightning() -> None:
    """Leave out the lines and warnings of the module docstring (idempotent)."""
    _install(LIGHTNING_LOGGER, NOT_NEWS)
    _install(SEED_LOGGER, ("Seed set to",))
    for message, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


@contextlib.contextmanager
def quiet_restores() -> Iterator[None]:
    """Within: no "Restoring states from the checkpoint path at ..." lines."""
    logger = logging.getLogger(LIGHTNING_LOGGER)
    drop = DropLines(RESTORE_LINES)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
