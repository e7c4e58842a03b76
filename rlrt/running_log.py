"""`train/cca_corr_running`: logged for the training batches that have at least two complete
pairs, without making the host wait for the device on the steps nothing is written."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def logs_this_step(module: Any) -> bool:
    """Whether the trainer writes this step's values to a logger (every `log_every_n_steps`
    steps, with a logger): only then must the host know a step value (no trainer: always)."""
    if module._trainer is None:
        return True
    trainer = module.trainer
    if not trainer.loggers:
        return False
    connector = getattr(trainer, "_logger_connector", None)
    return bool(getattr(connector, "should_update_logs", True))


class RunningCorrelationLog:
    """The epoch mean of the running correlation over the training batches with at least two
    complete pairs (weighted by batch size, as Lightning's own epoch means), kept on the device.

    A batch with fewer pairs has a zero loss and no value of its own (the loss is 0, so `1 - loss`
    would read as a perfect 1.0): it counts for nothing here, and the step log skips it.
    """

    def __init__(self) -> None:
        self.total: Tensor | None = None  # sum of value * batch size, valid batches only
        self.weight: Tensor | None = None  # sum of batch sizes of the valid batches

    def update(self, value: Tensor, pairs: Tensor, batch_size: int) -> None:
        """value: `()` the step's running correlation; pairs: `()` its complete pairs."""
        valid = (pairs >= 2).to(torch.float64)
        if self.total is None:
            self.total = torch.zeros((), dtype=torch.float64, device=value.device)
            self.weight = torch.zeros((), dtype=torch.float64, device=value.device)
        self.total += valid * value.detach().to(torch.float64) * batch_size
        self.weight += valid * batch_size

    def step(self, module: Any, loss: Tensor, both: Tensor, batch_size: int) -> Tensor | None:
        """Add a training step's running correlation `1 - loss` (`loss ()`: `L_CCA`; `both (B,)`:
        the complete pairs). Returns it when the step logs it: a batch of at least 2 complete
        pairs, at a step a logger writes (only then is the count asked of the device)."""
        pairs = both.sum()
        self.update(1.0 - loss, pairs, batch_size)
        if logs_this_step(module) and int(pairs) >= 2:
            return 1.0 - loss
        return None

    def compute_and_reset(self) -> float | None:
        """The epoch mean (None when no batch counted), then start over (asks the device)."""
        total, weight = self.total, self.weight
        self.total = self.weight = None
        if weight is None or weight.item() == 0:
            return None
        return (total / weight).item()
