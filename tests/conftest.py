"""Shared fixtures: tiny encoders written once per session, offline."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
# Tiny models on a shared 2-core box: one intra-op thread (no OpenMP spin-waiting), the same
# numerics in this process and in the subprocesses tests start. The CLI keeps a set value.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from rlrt.tiny_encoders import write_tiny_llama, write_tiny_vit_config  # noqa: E402


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tests (tiny tensors: no OpenMP spin-waiting on a busy
    machine, which made small steps 100x slower), the previous count restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_vit_config(tmp_path_factory):
    return write_tiny_vit_config(tmp_path_factory.mktemp("vit"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="session")
def image_encoder(tiny_vit_config):
    from rlrt.encoders import FrozenImageEncoder

    return FrozenImageEncoder(
        config_file=str(tiny_vit_config), image_size=32, layers=2, token_grid=2
    )


@pytest.fixture(scope="session")
def text_encoder(tiny_llama_dir):
    from rlrt.encoders import FrozenTextEncoder

    return FrozenTextEncoder(model_name_or_path=str(tiny_llama_dir), layers=2, segments=4)
