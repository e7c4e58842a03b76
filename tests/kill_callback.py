"""A test-only callback that kills its own process with SIGKILL, as an OOM killer or a preempted
node would: no exception, no `finally`, no checkpoint on the way out."""

from __future__ import annotations

import os
import signal

from lightning import Callback, LightningModule, Trainer


class KillAtStep(Callback):
    """SIGKILL this process when the training batch of global step `step` starts (after the
    checkpoints of the earlier steps were written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
