"""Fusion: aggregate the per-layer robust representations, add the modality embeddings, classify."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LayerAggregation(nn.Module):
    """`H_r = mean_q(M [z_1 .. z_Ls])` with a learnable `M` of shape `(Q, L_s)`.

    `M` starts at `1 / L_s`, i.e. the plain mean over layers.
    """

    def __init__(self, *, num_layers: int, num_queries: int = 4) -> None:
        super().__init__()
        self.mixing = nn.Parameter(torch.full((num_queries, num_layers), 1.0 / num_layers))

    def forward(self, representations: Tensor) -> Tensor:
        """`(L_s, B, R) -> (B, R)`."""
        mixed = torch.einsum("ql,lbr->qbr", self.mixing, representations)  # (Q, B, R)
        return mixed.mean(dim=0)


class FusionHead(nn.Module):
    """Robust representation plus the frozen encoders' own modality embeddings, then an MLP.

    Each input is projected to `fusion_dim` (Linear + LayerNorm); the projections are concatenated
    and an MLP gives the logits.

    Args:
        num_layers: `L_s`.
        representation_dim: width `R` of each `z_l`.
        image_embed_dim, text_embed_dim: widths of the modality embeddings.
        num_classes: logits out.
        fusion_dim: width of each projection.
        hidden_dim: the MLP's hidden width.
        num_queries: `Q` rows of the aggregation matrix `M`.
        use_robust: include `H_r`; use_image_embedding / use_text_embedding: include that embedding.
        dropout: dropout in the MLP.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        representation_dim: int,
        image_embed_dim: int,
        text_embed_dim: int,
        num_classes: int,
        fusion_dim: int = 256,
        hidden_dim: int = 512,
        num_queries: int = 4,
        use_robust: bool = True,
        use_image_embedding: bool = True,
        use_text_embedding: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not (use_robust or use_image_embedding or use_text_embedding):
            raise ValueError("the fusion head needs at least one input")
        # Without the robust input there is nothing to aggregate: no unused parameters.
        self.aggregate = (
            LayerAggregation(num_layers=num_layers, num_queries=num_queries) if use_robust else None
        )

        def projection(width: int, use: bool) -> nn.Module | None:
            if not use:
                return None
            return nn.Sequential(nn.Linear(width, fusion_dim), nn.LayerNorm(fusion_dim))

        self.robust_proj = projection(representation_dim, use_robust)
        self.image_proj = projection(image_embed_dim, use_image_embedding)
        self.text_proj = projection(text_embed_dim, use_text_embedding)
        inputs = fusion_dim * (use_robust + use_image_embedding + use_text_embedding)
        self.classifier = nn.Sequential(
            nn.Linear(inputs, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(
        self, representations: Tensor | None, image_embedding: Tensor, text_embedding: Tensor
    ) -> Tensor:
        """representations `(L_s, B, R)` (None without `use_robust`), embeddings `(B, E_i)`,
        `(B, E_t)` -> logits `(B, C)`."""
        parts = []
        if self.robust_proj is not None:
            parts.append(self.robust_proj(self.aggregate(representations)))
        if self.image_proj is not None:
            parts.append(self.image_proj(image_embedding))
        if self.text_proj is not None:
            parts.append(self.text_proj(text_embedding))
        return self.classifier(torch.cat(parts, dim=-1))
