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

One file per encoder (`image`, `cnn`, `text`) over what they share (`frozen`). Configs and saved
checkpoints name the classes here (`rlrt.encoders.FrozenImageEncoder`, ...).
"""

from rlrt.encoders.cnn import CNN_TAP, FrozenCNNImageEncoder
from rlrt.encoders.frozen import TAP, FrozenEncoder
from rlrt.encoders.image import FrozenImageEncoder
from rlrt.encoders.text import FrozenTextEncoder, TextTokenizer

__all__ = [
    "CNN_TAP",
    "TAP",
    "FrozenCNNImageEncoder",
    "FrozenEncoder",
    "FrozenImageEncoder",
    "FrozenTextEncoder",
    "TextTokenizer",
]
