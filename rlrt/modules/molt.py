"""Modality latent translation (MoLT): both modalities into one common space, by cross-attention."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def masked_softmax_attention(query: Tensor, key: Tensor, value: Tensor, key_mask: Tensor) -> Tensor:
    """Scaled dot-product attention that ignores padded keys.

    `softmax(Q K^T / sqrt(d)) V` over the real keys only. A query whose keys are all padding gets a
    zero output (not NaN), and gradients stay finite.

    Args:
        query: `(B, H, N_q, d)`; key, value: `(B, H, N_k, d)`; key_mask: `(B, N_k)` bool.

    Returns:
        `(B, H, N_q, d)`.
    """
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1])  # (B, H, N_q, N_k)
    keep = key_mask[:, None, None, :]
    scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1) * keep  # exact zeros on padding, all-zero if nothing is real
    return weights @ value


def masked_token_mean(tokens: Tensor, mask: Tensor) -> Tensor:
    """`(B, N, D), (B, N) -> (B, D)`: the mean over real tokens (zeros when there are none)."""
    weights = mask.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class CrossAttention(nn.Module):
    """Queries from one sequence, keys and values from the other; multi-head, no output mixing
    beyond a linear map when `num_heads > 1` (with one head it is exactly the paper's
    `softmax(Q K^T / sqrt(d_c)) V`)."""

    def __init__(self, *, dim: int, num_heads: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"common_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim) if num_heads > 1 else nn.Identity()

    def _split(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, H, N, d/H)

    def forward(self, queries: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        """queries `(B, N_q, D)`, context `(B, N_k, D)`, mask `(B, N_k)` -> `(B, N_q, D)`."""
        attended = masked_softmax_attention(
            self._split(self.query(queries)),
            self._split(self.key(context)),
            self._split(self.value(context)),
            context_mask,
        )  # (B, H, N_q, D/H)
        b, h, n, d = attended.shape
        return self.out(attended.transpose(1, 2).reshape(b, n, h * d))


class ModalityLatentTranslation(nn.Module):
    """One layer pair's MoLT block.

    `I' = W_i I + b_i`, `T' = W_t T + b_t`; `H_i = CrossAttn(I' -> T')`,
    `H_t = CrossAttn(T' -> I')`;
    `H'_i = LN(H_i + I')`, `H'_t = LN(H_t + T')`; a masked mean over tokens gives `h_i`, `h_t`.

    Args:
        image_dim: width `D_i` of the image layer's tokens.
        text_dim: width `D_t` of the text layer's tokens.
        common_dim: width `d_c` of the common space.
        num_heads: attention heads (the paper's formulation is one head).
        cross_attention: False skips the attention (`H' = LN(I')`), an ablation switch.
        dropout: dropout on the attention output.
    """

    def __init__(
        self,
        *,
        image_dim: int,
        text_dim: int,
        common_dim: int = 256,
        num_heads: int = 1,
        cross_attention: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, common_dim)
        self.text_proj = nn.Linear(text_dim, common_dim)
        self.cross_attention = cross_attention
        if cross_attention:
            self.image_to_text = CrossAttention(dim=common_dim, num_heads=num_heads)
            self.text_to_image = CrossAttention(dim=common_dim, num_heads=num_heads)
        self.dropout = nn.Dropout(dropout)
        self.image_norm = nn.LayerNorm(common_dim)
        self.text_norm = nn.LayerNorm(common_dim)

    def forward(
        self, image_tokens: Tensor, image_mask: Tensor, text_tokens: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Translate one layer pair into the common space.

        Args:
            image_tokens: `(B, N_i, D_i)`; image_mask: `(B, N_i)` bool.
            text_tokens: `(B, N_t, D_t)`; text_mask: `(B, N_t)` bool.

        Returns:
            `h_i`, `h_t`: `(B, d_c)` each.
        """
        image = self.image_proj(image_tokens)  # (B, N_i, d_c)
        text = self.text_proj(text_tokens)  # (B, N_t, d_c)
        if self.cross_attention:
            image_attended = self.image_to_text(image, text, text_mask)
            text_attended = self.text_to_image(text, image, image_mask)
            image = image + self.dropout(image_attended)
            text = text + self.dropout(text_attended)
        image = self.image_norm(image)
        text = self.text_norm(text)
        return masked_token_mean(image, image_mask), masked_token_mean(text, text_mask)
