"""The trained head's parts built from RLRT's hyperparameters (checked first), and the robust
path: MoLT then FBP on each layer pair.

The parts stay separate modules of the LightningModule (`molt`, `fbp`, `fusion`: the checkpoints'
state dict keys); this builds them and runs the robust path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from rlrt.features import Features
from rlrt.losses import check_cca_window
from rlrt.modules.fbp import FactorizedBilinearPooling
from rlrt.modules.fusion import FusionHead
from rlrt.modules.molt import ModalityLatentTranslation


def check_arguments(image_encoder: Any, text_encoder: Any, hparams: Mapping[str, Any]) -> None:
    """Refuse, in this order, encoders tapping different numbers of layers, class names that do
    not match `num_classes`, a `cca_window` too small for `common_dim` (`check_cca_window`) and a
    `modality_dropout` outside `[0, 1]` (one ValueError each)."""
    image_layers, text_layers = len(image_encoder.layer_indices), len(text_encoder.layer_indices)
    if image_layers != text_layers:
        raise ValueError(
            f"the image encoder taps {image_layers} layers and the text "
            f"encoder {text_layers}: layer pairs need the same count"
        )
    class_names, num_classes = hparams["class_names"], hparams["num_classes"]
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")
    check_cca_window(
        common_dim=hparams["common_dim"],
        window=hparams["cca_window"],
        beta=hparams["beta"],
        allow=hparams["cca_allow_degenerate"],
    )
    if not 0.0 <= hparams["modality_dropout"] <= 1.0:
        raise ValueError(f"modality_dropout must be in [0, 1], got {hparams['modality_dropout']}")


def build_head(
    image_encoder: Any, text_encoder: Any, hparams: Mapping[str, Any]
) -> tuple[nn.ModuleList | None, FactorizedBilinearPooling, FusionHead]:
    """`(molt, fbp, fusion)` for the encoders' widths and RLRT's `hparams` (`common_dim`,
    `num_heads`, `fbp_window`, `fusion_dim`, `hidden_dim`, `num_queries`, `fusion`, `dropout`,
    `cross_attention`, `bilinear`, `use_robust`, `use_*_embedding`, `beta`, `num_classes`).

    One MoLT per layer pair; MoLT feeds the fusion head (`use_robust`) and `L_CCA` (`beta != 0`):
    with neither it is not built (None)."""
    h = hparams
    num_layers = len(image_encoder.layer_indices)
    molt = None
    if h["use_robust"] or h["beta"] != 0:
        molt = nn.ModuleList(
            ModalityLatentTranslation(
                image_dim=image_encoder.width,
                text_dim=text_encoder.width,
                common_dim=h["common_dim"],
                num_heads=h["num_heads"],
                cross_attention=h["cross_attention"],
                dropout=h["dropout"],
            )
            for _ in range(num_layers)
        )
    fbp = FactorizedBilinearPooling(window=h["fbp_window"], bilinear=h["bilinear"])
    fusion = FusionHead(
        num_layers=num_layers,
        representation_dim=fbp.output_dim(h["common_dim"]),
        image_embed_dim=image_encoder.embed_dim,
        text_embed_dim=text_encoder.embed_dim,
        num_classes=h["num_classes"],
        fusion_dim=h["fusion_dim"],
        hidden_dim=h["hidden_dim"],
        num_queries=h["num_queries"],
        mode=h["fusion"],
        use_robust=h["use_robust"],
        use_image_embedding=h["use_image_embedding"],
        use_text_embedding=h["use_text_embedding"],
        dropout=h["dropout"],
    )
    return molt, fbp, fusion


def robust_path(
    molt: nn.ModuleList, fbp: FactorizedBilinearPooling, features: Features
) -> tuple[Tensor, Tensor, Tensor]:
    """MoLT on each layer pair, then FBP: `z (L_s, B, d_c / s)`, `h_i (L_s, B, d_c)`,
    `h_t (L_s, B, d_c)`."""
    image_vectors, text_vectors = [], []
    for layer, layer_molt in enumerate(molt):
        h_i, h_t = layer_molt(
            features.image_tokens[layer],
            features.image_mask,
            features.text_tokens[layer],
            features.text_mask,
        )
        image_vectors.append(h_i)
        text_vectors.append(h_t)
    robust = torch.stack([fbp(i, t) for i, t in zip(image_vectors, text_vectors)])
    return robust, torch.stack(image_vectors), torch.stack(text_vectors)
