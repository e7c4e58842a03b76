"""Test-only callbacks for faults: `KillAtStep` kills with SIGKILL, as an OOM killer or a
preempted node would (no exception, no `finally`, no checkpoint on the way out); `DesyncRanks`
gives DDP ranks RNG streams of their own."""

from __future__ import annotations

import os
import signal

import torch
from lightning import Callback, LightningModule, Trainer


class KillAtStep(Callback):
    """SIGKILL this process when the training batch of global step `step` starts (after the
    checkpoints of the earlier steps were written); with `group`, its whole process group (every
    DDP rank of a job started in its own session), as a lost node takes all of them."""

    def __init__(self, step: int, group: bool = False) -> None:
        self.step = step
        self.group = group

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int
    ) -> None:
        if trainer.global_step == self.step:
            if self.group:
                os.killpg(os.getpgid(0), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)


class DesyncRanks(Callback):
    """Make each DDP rank's torch RNG stream its own at the start of training (rank r draws r+1
    numbers), as uneven batches (dropped bad samples) would: a resume that handed every rank
    rank 0's RNG states would then draw other dropout masks on rank 1."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        torch.rand(trainer.global_rank + 1)
