"""`Features`, the frozen encoders' output, and the deterministic token pooling behind it.

Pooling is the same code online and in the feature cache, so both paths give the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class Features:
    """What the frozen encoders hand to the trained head, for one batch.

    Attributes:
        image_tokens: `(L_s, B, N_i, D_i)` pooled token states of the selected image layers.
        image_mask: `(B, N_i)` bool, True where a token is real.
        image_embedding: `(B, E_i)` the image encoder's own pooled embedding.
        text_tokens: `(L_s, B, N_t, D_t)` pooled token states of the selected text layers.
        text_mask: `(B, N_t)` bool, True where a token (segment) holds at least one real token.
        text_embedding: `(B, E_t)` the text encoder's own pooled embedding.
    """

    image_tokens: Tensor
    image_mask: Tensor
    image_embedding: Tensor
    text_tokens: Tensor
    text_mask: Tensor
    text_embedding: Tensor

    @property
    def batch_size(self) -> int:
        return self.image_embedding.shape[0]

    def non_finite_samples(self) -> Tensor:
        """`(B,)` bool: the samples with a NaN or infinite value anywhere in their features."""
        bad = ~torch.isfinite(self.image_embedding).all(-1) | ~torch.isfinite(
            self.text_embedding
        ).all(-1)
        for tokens in (self.image_tokens, self.text_tokens):  # (L_s, B, N, D)
            bad |= ~torch.isfinite(tokens).flatten(2).all(-1).all(0)
        return bad

    def pin_memory(self) -> Features:
        """Every tensor in page-locked host memory (what a DataLoader's `pin_memory` calls): a
        copy to the GPU then runs asynchronously (Lightning moves batches `non_blocking`)."""
        return Features(**{f.name: getattr(self, f.name).pin_memory() for f in fields(self)})

    def to(self, *args, **kwargs) -> Features:
        """Move or cast every tensor (masks keep their bool dtype)."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value.dtype == torch.bool:
                moved[f.name] = value.to(device=kwargs.get("device", _device_of(args, value)))
            else:
                moved[f.name] = value.to(*args, **kwargs)
        return Features(**moved)

    def zero_modality(self, modality: str, absent: Tensor) -> Features:
        """Zero one modality's tokens and embedding where `absent` `(B,)` is True."""
        keep = (~absent).to(self.image_embedding.dtype)
        if modality == "image":
            return Features(
                image_tokens=self.image_tokens * keep[None, :, None, None],
                image_mask=self.image_mask,
                image_embedding=self.image_embedding * keep[:, None],
                text_tokens=self.text_tokens,
                text_mask=self.text_mask,
                text_embedding=self.text_embedding,
            )
        if modality == "text":
            return Features(
                image_tokens=self.image_tokens,
                image_mask=self.image_mask,
                image_embedding=self.image_embedding,
                text_tokens=self.text_tokens * keep[None, :, None, None],
                text_mask=self.text_mask,
                text_embedding=self.text_embedding * keep[:, None],
            )
        raise ValueError(f"modality must be 'image' or 'text', got {modality!r}")

    def substitute(self, image_absent: Tensor, text_absent: Tensor, dummy: Features) -> Features:
        """Replace absent modalities by the one-sample `dummy` features (the dummy inputs' own).

        Args:
            image_absent, text_absent: bool `(B,)`.
            dummy: `Features` of batch size 1, broadcast over the batch.
        """
        image = image_absent.to(self.image_tokens.device)
        text = text_absent.to(self.text_tokens.device)
        dummy = dummy.to(self.image_tokens.device)
        return Features(
            image_tokens=torch.where(
                image[None, :, None, None], dummy.image_tokens, self.image_tokens
            ),
            image_mask=torch.where(image[:, None], dummy.image_mask, self.image_mask),
            image_embedding=torch.where(
                image[:, None], dummy.image_embedding, self.image_embedding
            ),
            text_tokens=torch.where(text[None, :, None, None], dummy.text_tokens, self.text_tokens),
            text_mask=torch.where(text[:, None], dummy.text_mask, self.text_mask),
            text_embedding=torch.where(text[:, None], dummy.text_embedding, self.text_embedding),
        )


def _device_of(args: tuple, fallback: Tensor) -> torch.device:
    for a in args:
        if isinstance(a, (str, torch.device)):
            return torch.device(a)
    return fallback.device


def pool_image_tokens(cls_token: Tensor, patch_grid: Tensor, grid: int | None) -> Tensor:
    """CLS token plus an adaptive average of the patch grid.

    Args:
        cls_token: `(B, D)`.
        patch_grid: `(B, D, H, W)` patch tokens laid out on the image grid.
        grid: side `g` of the pooled grid; None keeps every patch.

    Returns:
        `(B, 1 + g*g, D)` (or `(B, 1 + H*W, D)` with `grid=None`), CLS first, then row-major cells.
    """
    if grid is not None:
        patch_grid = F.adaptive_avg_pool2d(patch_grid, grid)  # (B, D, g, g)
    patches = patch_grid.flatten(2).transpose(1, 2)  # (B, g*g, D)
    return torch.cat([cls_token[:, None, :], patches], dim=1)


def pool_feature_map(feature_map: Tensor, grid: int | None) -> Tensor:
    """A CNN stage's map pooled as a ViT patch grid (`pool_image_tokens`): its global average
    (what a CNN head pools) in the CLS slot, then the adaptive average of the map.

    Args:
        feature_map: `(B, D, H, W)`.
        grid: side `g` of the pooled grid; None keeps every position.

    Returns:
        `(B, 1 + g*g, D)` (or `(B, 1 + H*W, D)` with `grid=None`), global token first.
    """
    return pool_image_tokens(feature_map.mean(dim=(2, 3)), feature_map, grid)


def segment_assignment(mask: Tensor, segments: int) -> Tensor:
    """Which of `segments` contiguous segments each real token falls into.

    Each sample's `n` real tokens (in order) are split as evenly as possible: token of rank `r`
    goes to segment `floor(r * segments / n)`. With `n < segments`, `n` segments get one token each
    and the rest stay empty.

    Args:
        mask: `(B, T)` bool, True for real tokens (left or right padding both work).
        segments: number of segments `S`.

    Returns:
        `(B, T, S)` float one-hot assignment (all-zero rows for padding).
    """
    mask = mask.bool()
    rank = mask.long().cumsum(dim=1) - 1  # (B, T): rank among real tokens
    n = mask.long().sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    segment = torch.div(rank * segments, n, rounding_mode="floor").clamp(0, segments - 1)
    onehot = F.one_hot(segment, segments).to(torch.float32)  # (B, T, S)
    return onehot * mask[..., None]


def pool_text_tokens(hidden: Tensor, mask: Tensor, segments: int | None) -> tuple[Tensor, Tensor]:
    """Masked means over contiguous segments of the real tokens.

    Args:
        hidden: `(B, T, D)` one layer's hidden states.
        mask: `(B, T)` bool attention mask.
        segments: number of segments `S`; None keeps every token.

    Returns:
        pooled `(B, S, D)` and its mask `(B, S)` (True where the segment holds a real token).
    """
    if segments is None:
        return hidden, mask.bool()
    assign = segment_assignment(mask, segments).to(hidden.dtype)  # (B, T, S)
    counts = assign.sum(dim=1)  # (B, S)
    summed = torch.einsum("bts,btd->bsd", assign, hidden)  # (B, S, D)
    pooled = summed / counts.clamp(min=1)[..., None]
    return pooled, counts > 0


def last_token(hidden: Tensor, mask: Tensor) -> Tensor:
    """The hidden state of each sample's last real token, `(B, T, D) -> (B, D)`.

    Works with left and right padding; a sample with no real token gets its last position.
    """
    positions = torch.arange(mask.shape[1], device=mask.device)
    index = torch.where(mask.bool(), positions, -1).amax(dim=1)  # (B,)
    index = torch.where(index < 0, mask.shape[1] - 1, index)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens, `(B, T, D), (B, T) -> (B, D)`; zeros for a sample with none."""
    weights = mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def select_layers(num_layers: int, layers: int | list[int]) -> list[int]:
    """0-based block indices to tap, ascending and distinct.

    Layer pair `l` is image block `image_encoder.layer_indices[l]` with text block
    `text_encoder.layer_indices[l]`, both lists made here: the `l`-th shallowest tap of one tower
    meets the `l`-th shallowest of the other, whatever order a config lists them in. (open_clip's
    `forward_intermediates` returns blocks in depth order whatever order it is asked in, so a list
    kept in config order would silently pair different depths; a repeat would crash later.)

    Args:
        num_layers: depth of the encoder.
        layers: an explicit list (negative indices count from the end; order and repeats do not
            matter: `[-1, 11]` on 12 blocks is one layer), or a count `c`: `c` blocks evenly spaced
            in depth, the last one being the last block.

    Returns:
        `L_s` sorted distinct indices in `[0, num_layers)`.
    """
    if isinstance(layers, int):
        if not 1 <= layers <= num_layers:
            raise ValueError(f"layer count must be in [1, {num_layers}], got {layers}")
        # ceil(num_layers * (j + 1) / layers) - 1: strictly increasing since layers <= num_layers
        return [-(-num_layers * (j + 1) // layers) - 1 for j in range(layers)]
    chosen = [i + num_layers if i < 0 else i for i in layers]
    bad = [i for i, c in zip(layers, chosen) if not 0 <= c < num_layers]
    if bad or not chosen:
        raise ValueError(f"layers {list(layers)} out of range for an encoder of depth {num_layers}")
    return sorted(set(chosen))
