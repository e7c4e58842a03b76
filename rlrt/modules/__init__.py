"""The trained parts of RLRT as plain `nn.Module`s (no Lightning)."""

from rlrt.modules.fbp import FactorizedBilinearPooling, factorized_bilinear_pooling
from rlrt.modules.fusion import FusionHead, LayerAggregation, QueryAttentionPooling
from rlrt.modules.molt import ModalityLatentTranslation

__all__ = [
    "FactorizedBilinearPooling",
    "FusionHead",
    "LayerAggregation",
    "ModalityLatentTranslation",
    "QueryAttentionPooling",
    "factorized_bilinear_pooling",
]
