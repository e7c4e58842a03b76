"""The basis that removes the ones direction from features (MoLT's LayerNorm makes it constant)."""

from __future__ import annotations

import torch
from torch import Tensor


def ones_complement_basis(
    dim: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
) -> Tensor:
    """`(dim, dim - 1)`: an orthonormal basis of the vectors orthogonal to the ones vector.

    Column `k` (from 1) is the Helmert vector `(1, ..., 1, -k, 0, ..., 0) / sqrt(k (k + 1))` with
    `k` ones: fixed, so the projected features do not depend on a decomposition's signs.

    Why the ones vector: LayerNorm leaves `sum_k (h_k - b_k) / g_k = 0` (gain `g`, bias `b`), so
    `h` lies in a hyperplane. Projecting onto the complement of the ones vector maps that
    hyperplane one-to-one onto `R^{dim - 1}` whenever `sum_k 1 / g_k != 0` (always, in practice:
    the gains start at 1), so no information is lost, only the constant direction.
    """
    k = torch.arange(1, dim, dtype=dtype, device=device)  # (dim - 1,)
    rows = torch.arange(dim, dtype=dtype, device=device)[:, None]  # (dim, 1)
    basis = (rows < k).to(dtype) - k * (rows == k).to(dtype)
    return basis / torch.sqrt(k * (k + 1))
