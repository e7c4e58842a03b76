"""The optimiser and its schedule: AdamW, a linear warm-up, then a cosine decay to 0."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn


def warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    """The learning rate's factor at each of `total` optimiser steps (for `LambdaLR`): from
    `1 / (warmup + 1)` up to 1 over the first `warmup` steps, then half a cosine down to 0."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return schedule


def adamw_warmup_cosine(
    parameters: Iterable[nn.Parameter], hparams: Mapping[str, Any], total: int
) -> dict[str, Any]:
    """Lightning's `configure_optimizers` answer: AdamW on `parameters` (RLRT's `hparams`: `lr`,
    `weight_decay`), its learning rate stepped every optimiser step by `warmup_cosine` over
    `total` steps (the first `warmup_fraction` of them warming up)."""
    optimizer = torch.optim.AdamW(
        parameters, lr=hparams["lr"], weight_decay=hparams["weight_decay"]
    )
    schedule = warmup_cosine(total, int(hparams["warmup_fraction"] * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {
        "optimizer": optimizer,
        "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
    }
