"""Whether a checkpoint or a feature cache belongs to the model built to use it.

A checkpoint holds the trainable head only: the frozen encoders' weights are never saved, their
identity (`rlrt_encoders`: the encoders' settings and weights' fingerprints) is, and a checkpoint
loads only into a model with the same encoders and the same head (`ARCHITECTURE_HPARAMS`). A
feature cache records the encoders that made its features; a model training on it adopts their
fingerprints, so that its checkpoints name the weights behind what it learnt from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from rlrt.engine.checkpoints import (
    CLASS_HPARAMS,
    add_digest,
    check_same,
    other_classes_hint,
    verify_digest,
)

ENCODER_PREFIXES = ("image_encoder.", "text_encoder.")
# State a checkpoint may lack and that then starts as the model built has it: the frozen weights
# (never saved), the running L_CCA statistics and the training features `cca_corr` fits on (from
# before they were kept).
UNSAVED_PREFIXES = (*ENCODER_PREFIXES, "cca.", "fit_moments.")
# Hyperparameters that shape the trained head or the meaning of its outputs: a checkpoint must
# agree with the config on each of them (the optimiser's and the loss's settings may differ).
ARCHITECTURE_HPARAMS = (
    "num_classes",
    "task",
    "class_names",
    "common_dim",
    "num_heads",
    "fbp_window",
    "fusion_dim",
    "hidden_dim",
    "num_queries",
    "fusion",
    "cross_attention",
    "bilinear",
    "use_robust",
    "use_image_embedding",
    "use_text_embedding",
)
# A checkpoint written before the `fusion` switch existed used the layer weighting.
FUSION_BEFORE_THE_SWITCH = "layer_weights"


def encoder_identity(encoders: Mapping[str, Any]) -> dict[str, Any]:
    """`{"image": ..., "text": ...}`: each encoder's `identity()` (settings and fingerprint)."""
    return {side: encoder.identity() for side, encoder in encoders.items()}


def prepare_for_saving(checkpoint: dict[str, Any], identity: dict[str, Any]) -> None:
    """Drop the frozen weights from `checkpoint`, record the encoders' `identity`, then add the
    digest (last: it covers everything)."""
    state = checkpoint["state_dict"]
    checkpoint["state_dict"] = {
        k: v for k, v in state.items() if not k.startswith(ENCODER_PREFIXES)
    }
    checkpoint["rlrt_encoders"] = identity
    add_digest(checkpoint)


def check_checkpoint(
    checkpoint: Mapping[str, Any],
    ours: Mapping[str, Any],
    identity: Mapping[str, Any],
    trainer: Any,
) -> None:
    """Refuse a corrupted `checkpoint`, one of other classes or another head than the
    hyperparameters `ours` describe, and one trained on other encoders than `identity`'s.

    `trainer` (or None) names the checkpoint's path in the message about other classes."""
    source = f"checkpoint {getattr(trainer, 'ckpt_path', None) or ''}".rstrip()
    verify_digest(checkpoint)
    saved_hparams = {"fusion": FUSION_BEFORE_THE_SWITCH, **checkpoint.get("hyper_parameters", {})}
    check_same(
        saved_hparams, ours, CLASS_HPARAMS, "", other_classes_hint(saved_hparams, ours, source)
    )
    check_same(
        saved_hparams,
        ours,
        ARCHITECTURE_HPARAMS,
        "",
        "a checkpoint only fits a model built like the one it was trained with "
        "(see the checkpoint's config.yaml)",
    )
    saved = checkpoint.get("rlrt_encoders")
    if saved is None:
        return
    for side in ("image", "text"):
        for key in sorted(set(saved[side]) | set(identity[side])):
            if saved[side].get(key) != identity[side].get(key):
                raise ValueError(
                    f"checkpoint was trained with {side} encoder {key}="
                    f"{saved[side].get(key)!r} but the config gives "
                    f"{identity[side].get(key)!r}; "
                    "use the checkpoint's encoder settings (see its config.yaml)"
                )


def fill_unsaved_state(saved: dict[str, Tensor], own: Mapping[str, Tensor]) -> None:
    """Give the checkpoint's state dict `saved` the model's `own` value of every key under
    `UNSAVED_PREFIXES` it lacks (in place)."""
    for key, value in own.items():
        if key.startswith(UNSAVED_PREFIXES):
            saved.setdefault(key, value)


def cache_encoder_fields(
    encoders: Mapping[str, Any], manifest: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A feature cache's encoders and this model's `encoders` (`{"image": ..., "text": ...}`),
    as `{"encoders": {side: fields}}` each, for `rlrt.cache.format.check_fields` to compare:
    everything but the weights' fingerprint, which would mean reading the weight files."""
    saved = manifest.get("encoders")
    saved = saved if isinstance(saved, dict) else {}
    without_fingerprints = {
        side: {k: v for k, v in (saved.get(side) or {}).items() if k != "weights_fingerprint"}
        for side in encoders
    }
    ours = {side: encoder.identity_fields() for side, encoder in encoders.items()}
    return {"encoders": without_fingerprints}, {"encoders": ours}


def adopt_cache_fingerprints(encoders: Mapping[str, Any], manifest: Mapping[str, Any]) -> None:
    """Give `encoders` the weights' fingerprints of a feature cache whose other fields matched
    (`cache_encoder_fields`): the head trains on the cache's features, so its checkpoint records
    the weights that made them. An online run later compares them with the files."""
    for side, encoder in encoders.items():
        encoder.adopt_weights_fingerprint(manifest["encoders"][side].get("weights_fingerprint"))


def check_data_classes(num_classes: int, datamodule: Any) -> None:
    """Refuse a data module with another number of classes than the model's `num_classes`."""
    data_classes = getattr(datamodule, "num_classes", None)
    if isinstance(data_classes, int) and data_classes != num_classes:
        raise ValueError(
            f"the model has num_classes={num_classes} but the data module "
            f"{type(datamodule).__name__} has {data_classes} classes; build the model with "
            "the data's num_classes (the CLI links it from the data module)"
        )
