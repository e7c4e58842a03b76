"""`FrozenImageEncoder`: the vision tower of an open_clip model (a ViT), frozen, and the open_clip
helpers it and the CNN towers share (building the tower, its weights, its pixel normalisation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlrt.encoders.frozen import TAP, FrozenEncoder, autocast, without_random_init_notice
from rlrt.engine.fingerprint import file_fingerprint, folder_fingerprint
from rlrt.features import (
    pool_image_tokens,
    select_layers,
)


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
        visual, model_name = open_clip_visual(
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
        mean, std = open_clip_normalisation(visual, model_name, pretrained)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @property
    def visual(self) -> nn.Module:
        """open_clip's vision tower with its weights (read on first use)."""
        return self.load()

    def _build(self) -> nn.Module:
        visual, _ = open_clip_visual(
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
        with autocast(pixels.device):
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


def open_clip_visual(
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
        with without_random_init_notice(True):
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
            with without_random_init_notice(pretrained is None):
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


def open_clip_normalisation(
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
