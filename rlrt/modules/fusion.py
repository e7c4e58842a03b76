"""Fusion: combine the per-layer robust representations with the modality embeddings, classify.

Two fusion modes (`FusionHead(mode=...)`):

* `attention` (default): `Q` learnable queries attend (softmax) over a token sequence made of the
  projected `z_1 .. z_Ls` and the projected modality embeddings (`QueryAttentionPooling`).
* `layer_weights` (ablation, the head before the switch): `H_r = mean_q(M [z_1 .. z_Ls])`
  (`LayerAggregation`). This is linear in `M`, so its `Q` rows collapse to their mean: `Q` has no
  effect there.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

FusionMode = Literal["attention", "layer_weights"]
FUSION_MODES: tuple[str, ...] = ("attention", "layer_weights")


class LayerAggregation(nn.Module):
    """`H_r = mean_q(M [z_1 .. z_Ls])` with a learnable `M` of shape `(Q, L_s)`.

    `M` starts at `1 / L_s`, i.e. the plain mean over layers. Being linear, it equals a single row
    `mean_q M_q`: the `layer_weights` ablation only.
    """

    def __init__(self, *, num_layers: int, num_queries: int = 4) -> None:
        super().__init__()
        self.mixing = nn.Parameter(torch.full((num_queries, num_layers), 1.0 / num_layers))

    def forward(self, representations: Tensor) -> Tensor:
        """`(L_s, B, R) -> (B, R)`."""
        mixed = torch.einsum("ql,lbr->qbr", self.mixing, representations)  # (Q, B, R)
        return mixed.mean(dim=0)


class QueryAttentionPooling(nn.Module):
    """`Q` learnable queries attend over a token sequence; the `Q` results are averaged.

    Single head, scaled dot product: for query `q_j`, `a_j = softmax_n(q_j . k_n / sqrt(D)) v_n`
    with keys `k_n = W_k t_n` and values `v_n = W_v t_n + b_v`; the output is `mean_j a_j`.
    The mean of `Q` softmax distributions is not one softmax distribution, so `Q` matters (unlike
    `LayerAggregation`). No query projection (the queries are free parameters) and no key bias
    (`q . b_k` is the same for every token and cancels in the softmax); no output projection
    (the classifier MLP follows).

    The queries start as `N(0, 1)`: distinct, with attention logits of order 1 (neither uniform
    nor saturated), so they do not receive identical gradients.
    """

    def __init__(self, *, dim: int, num_queries: int = 4) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim))
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim)

    def attention_weights(self, tokens: Tensor) -> Tensor:
        """tokens `(B, N, D)` -> softmax weights `(B, Q, N)` (each row sums to 1)."""
        scores = torch.einsum("qd,bnd->bqn", self.queries, self.key(tokens))
        return (scores / math.sqrt(tokens.shape[-1])).softmax(dim=-1)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens `(B, N, D)` -> `(B, D)`."""
        weights = self.attention_weights(tokens).mean(dim=1)  # (B, N): mean over queries
        return torch.einsum("bn,bnd->bd", weights, self.value(tokens))


class FusionHead(nn.Module):
    """Robust representations plus the frozen encoders' own modality embeddings, then an MLP.

    Every input is projected to `fusion_dim` (Linear + LayerNorm; one projection `robust_proj`
    shared by the `L_s` layers, one per modality embedding).

    * `mode="attention"`: tokens `[LN(W z_l + b) + p_l for each layer l] + [e_i', e_t']`, with a
      learnable layer embedding `p_l` (`layer_embedding`, `(L_s, fusion_dim)`) so the shared
      projection keeps the layers distinguishable. `QueryAttentionPooling` pools them to
      `(B, fusion_dim)`; the classifier sees `[pooled, mean_n(tokens)]` (`2 * fusion_dim`): the
      token mean is a fixed path by which every token always reaches the classifier, whatever the
      softmax concentrates on, at the cost of `fusion_dim * hidden_dim` weights.
    * `mode="layer_weights"` (ablation): `LayerAggregation` (`aggregate.mixing`) reduces the
      layers, and the projections are concatenated. Parameter names are those of the head before
      the `mode` switch, so older checkpoints load into it.

    Args:
        num_layers: `L_s`.
        representation_dim: width `R` of each `z_l`.
        image_embed_dim, text_embed_dim: widths of the modality embeddings.
        num_classes: logits out.
        fusion_dim: width `D` of each projection (and of the attention).
        hidden_dim: the MLP's hidden width.
        num_queries: `Q`: attention queries (`attention`) or rows of `M` (`layer_weights`).
        mode: `attention` or `layer_weights`.
        use_robust: include the `z_l`; use_image_embedding / use_text_embedding: include that
            embedding (at least one of the three).
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
        mode: FusionMode = "attention",
        use_robust: bool = True,
        use_image_embedding: bool = True,
        use_text_embedding: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {mode!r}; expected one of {FUSION_MODES}")
        if not (use_robust or use_image_embedding or use_text_embedding):
            raise ValueError("the fusion head needs at least one input")
        self.mode = mode
        # Only what the inputs use is built: no parameter without a gradient (DDP).
        self.aggregate = (
            LayerAggregation(num_layers=num_layers, num_queries=num_queries)
            if use_robust and mode == "layer_weights"
            else None
        )

        def projection(width: int, use: bool) -> nn.Module | None:
            if not use:
                return None
            return nn.Sequential(nn.Linear(width, fusion_dim), nn.LayerNorm(fusion_dim))

        self.robust_proj = projection(representation_dim, use_robust)
        self.image_proj = projection(image_embed_dim, use_image_embedding)
        self.text_proj = projection(text_embed_dim, use_text_embedding)
        if mode == "attention":
            self.layer_embedding = (
                nn.Parameter(0.02 * torch.randn(num_layers, fusion_dim)) if use_robust else None
            )
            self.attention = QueryAttentionPooling(dim=fusion_dim, num_queries=num_queries)
            inputs = 2 * fusion_dim  # [pooled, token mean]
        else:
            self.layer_embedding = None
            self.attention = None
            inputs = fusion_dim * (use_robust + use_image_embedding + use_text_embedding)
        self.classifier = nn.Sequential(
            nn.Linear(inputs, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def tokens(
        self, representations: Tensor | None, image_embedding: Tensor, text_embedding: Tensor
    ) -> Tensor:
        """The attention's token sequence `(B, N, fusion_dim)`, `N = L_s * use_robust +
        use_image_embedding + use_text_embedding`: layers `1 .. L_s`, then image, then text."""
        parts = []
        if self.robust_proj is not None:
            layers = self.robust_proj(representations) + self.layer_embedding[:, None]
            parts.append(layers.transpose(0, 1))  # (B, L_s, D)
        if self.image_proj is not None:
            parts.append(self.image_proj(image_embedding)[:, None])
        if self.text_proj is not None:
            parts.append(self.text_proj(text_embedding)[:, None])
        return torch.cat(parts, dim=1)

    def forward(
        self, representations: Tensor | None, image_embedding: Tensor, text_embedding: Tensor
    ) -> Tensor:
        """representations `(L_s, B, R)` (None without `use_robust`), embeddings `(B, E_i)`,
        `(B, E_t)` -> logits `(B, C)`."""
        if self.attention is not None:
            tokens = self.tokens(representations, image_embedding, text_embedding)
            pooled = torch.cat([self.attention(tokens), tokens.mean(dim=1)], dim=-1)
            return self.classifier(pooled)
        parts = []
        if self.robust_proj is not None:
            parts.append(self.robust_proj(self.aggregate(representations)))
        if self.image_proj is not None:
            parts.append(self.image_proj(image_embedding))
        if self.text_proj is not None:
            parts.append(self.text_proj(text_embedding))
        return self.classifier(torch.cat(parts, dim=-1))
