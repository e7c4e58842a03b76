"""A training step from the feature cache never makes the host wait for the device once L_CCA is
on and the step's samples have been met before: no `.item()`, `bool(tensor)`, `nonzero` or
boolean-mask indexing (each stalls a GPU until its queue drains). Counted on the CPU with a
dispatch mode that sees every operator the step runs."""

from collections import Counter

import pytest
import torch
from lightning import Trainer
from torch.utils._python_dispatch import TorchDispatchMode

from tests.test_feature_cache import build_cache, make_pair

# Operators whose result the host must read back, or whose output shape depends on values.
READS_BACK = {"aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal"}
VALUE_SHAPED = {"aten.nonzero", "aten.masked_select", "aten.unique_dim", "aten._unique2"}
INDEXING = {"aten.index", "aten.index_put", "aten.index_put_"}


class HostSyncs(TorchDispatchMode):
    """Counts the operators of `READS_BACK` and `VALUE_SHAPED`, and indexing by a bool mask."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        name = str(func.overloadpacket)
        if name in READS_BACK or name in VALUE_SHAPED:
            self.seen[name] += 1
        elif name in INDEXING:
            indices = args[1] if len(args) > 1 else ()
            if any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ()):
                self.seen[f"{name} by a bool mask"] += 1
        return func(*args, **(kwargs or {}))


def test_the_probe_sees_the_host_syncs_it_looks_for():
    x = torch.randn(6)
    with HostSyncs() as probe:
        _ = x.sum().item()
        _ = bool(x.max() > 0)
        _ = x[x > 0]
        _ = (x > 0).nonzero()
    assert probe.seen["aten._local_scalar_dense"] == 2
    assert probe.seen["aten.nonzero"] == 1
    assert probe.seen["aten.index by a bool mask"] == 1


def test_a_cached_training_step_waits_for_nothing(
    tmp_path, tiny_vit_config, tiny_llama_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    build_cache(tmp_path, tiny_vit_config, tiny_llama_dir, tmp_path / "cache")
    data, model = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, tmp_path / "cache")
    step = model.training_step
    met: set[str] = set()
    steady: list[Counter[str]] = []  # the syncs of each step with L_CCA on and no new sample

    def counted_step(batch, batch_idx=0):
        steady_now = model.cca.active and all(i in met for i in batch["id"])
        with HostSyncs() as probe:
            loss = step(batch, batch_idx)
        met.update(batch["id"])
        if steady_now:
            steady.append(probe.seen)
        return loss

    monkeypatch.setattr(model, "training_step", counted_step)
    Trainer(
        max_epochs=8,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    ).fit(model, data)
    assert len(steady) >= 3
    assert sum(steady, Counter()) == Counter()


def test_cached_batches_are_pinned_when_a_gpu_is_there(
    tmp_path, tiny_vit_config, tiny_llama_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    build_cache(tmp_path, tiny_vit_config, tiny_llama_dir, tmp_path / "cache")
    data, _ = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, tmp_path / "cache")
    data.setup("fit")
    assert data.train_dataloader().pin_memory is torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert data.train_dataloader().pin_memory is True
    assert data.val_dataloader().pin_memory is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs a GPU")
def test_features_pin_every_tensor(tmp_path, tiny_vit_config, tiny_llama_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_cache(tmp_path, tiny_vit_config, tiny_llama_dir, tmp_path / "cache")
    data, _ = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, tmp_path / "cache")
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    features = batch["features"]
    assert all(getattr(features, name).is_pinned() for name in features.__dataclass_fields__)
