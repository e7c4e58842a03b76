"""The console: Lightning's lines that tell a user nothing are left out, and only those."""

from __future__ import annotations

import logging
import warnings

from rlrt.engine.console import LIGHTNING_LOGGER, SEED_LOGGER, quiet_lightning, quiet_restores


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_only_the_named_lines_are_left_out(caplog):
    quiet_lightning()
    quiet_lightning()  # idempotent: one filter per logger
    logger = logging.getLogger(LIGHTNING_LOGGER)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO):
        logger.info("💡 Tip: install something")
        logger.info("GPU available: False, used: False")
        logger.info("TPU available: False, using: 0 TPU cores")
        logger.info("GPU available: True (cuda), used: False")  # actionable: kept
        logger.info("Loading `train_dataloader` to estimate number of stepping batches.")
        logger.info("`Trainer.fit` stopped: `max_epochs=3` reached.")
        logging.getLogger(SEED_LOGGER).info("Seed set to 0")
        logging.getLogger(SEED_LOGGER).info("[rank: 1] Seed set to 0")
    assert messages(caplog) == [
        "GPU available: True (cuda), used: False",
        "`Trainer.fit` stopped: `max_epochs=3` reached.",
    ]


def test_restore_lines_are_left_out_only_inside_quiet_restores(caplog):
    logger = logging.getLogger(LIGHTNING_LOGGER)
    with caplog.at_level(logging.INFO):
        with quiet_restores():
            logger.info("Restoring states from the checkpoint path at a.ckpt")
            logger.info("Loaded model weights from the checkpoint at a.ckpt")
        logger.info("Restoring states from the checkpoint path at b.ckpt")
    assert messages(caplog) == ["Restoring states from the checkpoint path at b.ckpt"]


def test_the_known_warnings_are_ignored_and_others_kept():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        warnings.warn("Found 173 module(s) in eval mode at the start of training.", stacklevel=1)
        warnings.warn("something else", stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]
