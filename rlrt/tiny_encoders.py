"""Tiny encoders for tests, smoke runs and benchmarks: an open_clip ViT config and a LLaMA-shaped
text model with its own tokenizer, written to disk like real ones and loaded through the same
`FrozenImageEncoder` / `FrozenTextEncoder` paths. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

TINY_VIT_CONFIG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1},
}

WORDS = (
    "the a movie film story love war space ship robot ghost house night city crime police "
    "detective family comedy funny laugh music song dance horse desert gun hero villain dream "
    "island ocean monster killer secret past future world king queen battle army"
).split()


def write_tiny_vit_config(folder: Path, name: str = "rlrt-tiny-vit") -> Path:
    """An open_clip model config (JSON); open_clip registers it under the file stem."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(TINY_VIT_CONFIG))
    return path


def write_word_tokenizer(folder: Path):
    """A word-level tokenizer over `WORDS` (unknown words: `<unk>`; one token per word and per
    punctuation mark), trained in memory and saved into `folder`; returns it."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator([" ".join(WORDS)] * 2, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(folder)
    return fast


def write_tiny_llama(folder: Path) -> Path:
    """A 3-layer, 64-wide LLaMA with a word-level tokenizer trained in memory, saved like a hub
    model (config.json, weights, tokenizer files)."""
    import torch
    from transformers import LlamaConfig, LlamaModel

    fast = write_word_tokenizer(folder)
    config = LlamaConfig(
        vocab_size=fast.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(folder)
    return folder


def write_llama_config(folder: Path, shape: dict) -> Path:
    """A LLaMA of `shape` (`LlamaConfig` fields) without weights: its config.json and the
    word-level tokenizer, for `FrozenTextEncoder(random_weights=True)` (the paper's shapes
    without 13.5 GB of files; token ids stay far below any real vocabulary size)."""
    from transformers import LlamaConfig

    write_word_tokenizer(folder)
    LlamaConfig(**shape).save_pretrained(folder)
    return folder


def tiny_encoder_args(vit_config: Path, llama_dir: Path, common_dim: int | None = 8) -> list[str]:
    """CLI overrides that put the tiny encoders (2 layers each, 32 px images) into a model config
    such as `configs/model/demo.yaml`, and a small common width unless `common_dim` is None."""
    args = [
        f"--model.image_encoder.init_args.config_file={vit_config}",
        "--model.image_encoder.init_args.image_size=32",
        "--model.image_encoder.init_args.layers=2",
        f"--model.text_encoder.init_args.model_name_or_path={llama_dir}",
        "--model.text_encoder.init_args.layers=2",
        "--model.text_encoder.init_args.pooling=last",
    ]
    return args if common_dim is None else [*args, f"--model.common_dim={common_dim}"]
