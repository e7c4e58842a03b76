"""Cached splits kept in device memory (`cache_in_device_memory`): the same features as the
memory-mapped reads, the same training step for step, and the `auto` rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlrt.cache.reader import SplitCacheReader
from rlrt.cache.resident import FREE_MEMORY_SHARE, ResidentSplit, keep_on_device, stored_bytes
from tests.test_cache_storage import caches  # noqa: F401 - a module fixture, used by name
from tests.test_feature_cache import cache, fit, make_pair  # noqa: F401 - `cache`: a fixture

GiB = 2**30


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_a_resident_split_gathers_what_the_memory_mapped_reader_reads(caches, dtype):  # noqa: F811
    reader = SplitCacheReader(caches[1] / dtype / "train")
    image_row = reader.sample_image_row.copy()
    image_row[3] = -1  # a sample without an image file: reads row 0, marked absent
    reader.sample_image_row = image_row
    resident = ResidentSplit(reader, torch.device("cpu"))
    rows = np.array([5, 3, 0, 17, 3, len(reader) - 1])
    expected, expected_has_image = reader.gather(rows)
    features, has_image = resident.gather(torch.from_numpy(rows))
    assert (
        has_image.tolist() == expected_has_image.tolist() == [True, False, True, True, False, True]
    )
    for name in ("image_tokens", "image_mask", "image_embedding", "text_tokens", "text_mask"):
        got, want = getattr(features, name), getattr(expected, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(features.text_embedding, expected.text_embedding, rtol=0, atol=0)
    stored = sum(np.load(p, mmap_mode="r").nbytes for p in reader.folder.glob("*.npy"))
    image_stats = np.load(reader.folder / "image_stats.npy", mmap_mode="r").nbytes
    done = sum(np.load(p, mmap_mode="r").nbytes for p in reader.folder.glob("*_done.npy"))
    assert stored_bytes(reader) == stored - image_stats - done  # the arrays copied, no more


def test_training_from_device_memory_equals_training_from_the_memory_map(
    cache,  # noqa: F811
    tmp_path,
    tiny_vit_config,
    tiny_llama_dir,
):
    runs = {}
    for mode in ("never", "always"):
        data, model = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, cache)
        data.cache_in_device_memory = mode
        runs[mode] = fit(data, model, tmp_path / mode)
        assert (data._cached["train"]._on_device is not None) == (mode == "always")
        assert data._cached["train"].resident == (mode == "always")
    (never_losses, never_val), (always_losses, always_val) = runs["never"], runs["always"]
    assert len(never_losses) >= 6
    np.testing.assert_array_equal(always_losses, never_losses)
    np.testing.assert_equal(always_val, never_val)  # NaN (cca_corr: too few samples) too


@pytest.mark.parametrize(
    ("mode", "device", "split_gib", "free_gib", "expected"),
    [
        ("auto", "cuda", 10, 100, True),
        ("auto", "cuda", 10, 2 * 10, True),  # exactly half the free memory
        ("auto", "cuda", 10, 19, False),
        ("auto", "cpu", 1, None, False),  # memory-mapped reads are in memory there already
        ("always", "cpu", 1, None, True),
        ("never", "cuda", 1, 100, False),
    ],
)
def test_the_auto_rule(mode, device, split_gib, free_gib, expected):
    free = None if free_gib is None else free_gib * GiB
    assert FREE_MEMORY_SHARE == 0.5
    assert keep_on_device(mode, torch.device(device), split_gib * GiB, free) is expected


def test_a_bad_mode_is_refused_in_one_line(tmp_path):
    from data_modules import DemoMMIMDBDataModule

    with pytest.raises(ValueError, match="cache_in_device_memory must be one of"):
        DemoMMIMDBDataModule(root=str(tmp_path), cache_in_device_memory="sometimes")


def _no_room(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory (simulated)")


def test_auto_reads_from_the_host_when_the_copy_does_not_fit_after_all(
    cache,  # noqa: F811
    tmp_path,
    tiny_vit_config,
    tiny_llama_dir,
    monkeypatch,
):
    """`auto` decided for device memory but the copy fails (the model's memory grew since): the
    split is read from the host from then on, with one warning, and trains as the memory map."""
    data, model = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, cache)
    data.cache_in_device_memory = "never"
    reference = fit(data, model, tmp_path / "never")
    data, model = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, cache)
    data.cache_in_device_memory = "auto"
    data._keep_on_device = lambda batches: True  # what `auto` decides on a GPU where it fits
    attempts = []

    def no_room_counted(*args, **kwargs):
        attempts.append(args)
        _no_room()

    monkeypatch.setattr("data_modules.cached_batches.ResidentSplit", no_room_counted)
    with pytest.warns(UserWarning, match=r"did not fit in the memory of cpu") as caught:
        losses, val = fit(data, model, tmp_path / "auto")
    assert data._cached["train"].resident is False
    # once per split (val, train): the batch Lightning had fetched ahead is not copied again
    ours = [w for w in caught if "did not fit in the memory" in str(w.message)]
    assert len(attempts) == len(ours) == 2
    np.testing.assert_array_equal(losses, reference[0])
    np.testing.assert_equal(val, reference[1])


def test_always_ends_in_one_line_when_the_copy_does_not_fit(
    cache,  # noqa: F811
    tmp_path,
    tiny_vit_config,
    tiny_llama_dir,
    monkeypatch,
):
    from rlrt.cache.format import CacheMemoryError

    data, model = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, cache)
    data.cache_in_device_memory = "always"
    monkeypatch.setattr("data_modules.cached_batches.ResidentSplit", _no_room)
    with pytest.raises(CacheMemoryError) as error:
        fit(data, model, tmp_path / "always")
    message = str(error.value)
    assert "\n" not in message and f"feature cache {cache}/" in message  # sanity val first
    assert "does not fit in the memory of cpu" in message and "auto or never" in message
