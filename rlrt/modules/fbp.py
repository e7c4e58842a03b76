"""Factorized bilinear pooling (FBP): the robust representation of one layer pair."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def factorized_bilinear_pooling(x: Tensor, y: Tensor, window: int, eps: float = 1e-8) -> Tensor:
    """`z = L2(signed_sqrt(SumPool_s(x * y)))`.

    Args:
        x, y: `(B, d)` the two modalities' vectors in the common space.
        window: `s`, the width of the non-overlapping sum-pooling windows; must divide `d`.
        eps: keeps the signed square root's gradient finite at zero.

    Returns:
        `(B, d / s)`, unit L2 norm per row (a zero row stays zero).
    """
    if x.shape != y.shape:
        raise ValueError(f"FBP needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    batch, dim = x.shape
    if dim % window:
        raise ValueError(f"FBP window {window} does not divide the common width {dim}")
    pooled = (x * y).view(batch, dim // window, window).sum(dim=-1)  # (B, d/s)
    signed_root = torch.sign(pooled) * (torch.sqrt(pooled.abs() + eps) - eps**0.5)
    return F.normalize(signed_root, dim=-1)


class FactorizedBilinearPooling(nn.Module):
    """Module form of `factorized_bilinear_pooling` (no parameters).

    With `bilinear=False` it concatenates `[x, y]` instead (width `2 d`), an ablation switch.
    """

    def __init__(self, *, window: int = 4, bilinear: bool = True) -> None:
        super().__init__()
        self.window = window
        self.bilinear = bilinear

    def output_dim(self, common_dim: int) -> int:
        return common_dim // self.window if self.bilinear else 2 * common_dim

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """`(B, d), (B, d) -> (B, d/s)` (or `(B, 2d)` without the bilinear product)."""
        if self.bilinear:
            return factorized_bilinear_pooling(x, y, self.window)
        return torch.cat([x, y], dim=-1)
