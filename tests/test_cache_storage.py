"""The feature cache's storage dtype (float16 or int8 with per-vector scales) and the disk-space
pre-flight of `rlrt cache`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning import Trainer

from rlrt.cache import space
from rlrt.cache.format import (
    CacheCorruptError,
    CacheMismatchError,
    Shapes,
    dequantize,
    estimated_split_bytes,
    quantize,
)
from rlrt.cache.reader import SplitCacheReader
from rlrt.commands.cache import run_cache
from tests.test_cache_reliability import rlrt_cache
from tests.test_cli import demo_args
from tests.test_feature_cache import assert_trained_alike, fit, make_pair

FEATURES = ("image_tokens", "image_embedding", "text_tokens", "text_embedding")


def reference_quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int8 storage rule written out one vector at a time: `s = max|x| / 127` in float32,
    each value `round(x / s)` (0 for a zero vector)."""
    flat = np.asarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    values = np.zeros(flat.shape, dtype=np.int8)
    scales = np.zeros(len(flat), dtype=np.float32)
    for row, vector in enumerate(flat):
        scale = np.float32(max(abs(v) for v in vector)) / np.float32(127)
        scales[row] = scale
        if scale > 0:
            values[row] = [int(np.rint(v / scale)) for v in vector]
    return values.reshape(x.shape), scales.reshape(x.shape[:-1])


def test_quantize_matches_a_per_vector_reference_and_rounds_within_half_a_step():
    rng = np.random.default_rng(0)
    # vectors of very different magnitudes, like the layers of a real encoder
    x = rng.normal(size=(3, 2, 5, 24)) * 10.0 ** rng.integers(-4, 3, size=(3, 2, 5, 1))
    x = x.astype(np.float16).astype(np.float32)  # what the encoders hand the writer
    x[1, 0, 2] = 0.0
    values, scales = quantize(x)
    expected_values, expected_scales = reference_quantize(x)
    assert values.dtype == np.int8 and scales.dtype == np.float32
    assert scales.shape == x.shape[:-1]
    np.testing.assert_array_equal(scales, expected_scales)
    np.testing.assert_array_equal(values, expected_values)
    assert scales[1, 0, 2] == 0 and not values[1, 0, 2].any()
    # every value within half a step of its vector's scale (exact arithmetic on the stored ints)
    error = np.abs(values.astype(np.float64) * scales[..., None] - x)
    assert (error <= scales[..., None] / 2 * (1 + 1e-6)).all()
    # each vector's largest magnitude is stored as +-127 exactly
    nonzero = scales > 0
    assert (np.abs(values).max(axis=-1)[nonzero] == 127).all()
    # reading back: the float32 products, rounded once to float16
    decoded = dequantize(values, scales)
    assert decoded.dtype == np.float16
    assert not decoded[1, 0, 2].any()
    exact = values.astype(np.float64) * scales[..., None]
    np.testing.assert_allclose(decoded.astype(np.float64), exact, rtol=2.0**-11, atol=2.0**-24)


def test_quantize_gives_a_non_finite_vector_a_non_finite_scale():
    x = np.ones((3, 4), dtype=np.float32)
    x[1, 2], x[2, 0] = np.nan, np.inf
    values, scales = quantize(x)
    assert np.isfinite(scales[0]) and not np.isfinite(scales[1:]).any()
    assert not values[1:].any()


@pytest.fixture(scope="module")
def caches(tmp_path_factory, tiny_vit_config, tiny_llama_dir):
    """A float16 and an int8 cache of the same tiny demo data (all splits): (args, root)."""
    root = tmp_path_factory.mktemp("storage")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        args = demo_args(root, tiny_vit_config, tiny_llama_dir, num_movies=60)
        run_cache([*args, f"--data.init_args.feature_cache={root / 'float16'}"])
        run_cache(
            [*args, f"--data.init_args.feature_cache={root / 'int8'}", "--storage_dtype=int8"]
        )
    return args, root


@pytest.fixture()
def int8_copy(caches, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(caches[1] / "int8", tmp_path / "cache")
    return tmp_path / "cache"


def test_an_int8_cache_stores_int8_values_with_float32_scales_per_vector(caches):
    root = caches[1]
    for split in ("dummy", "train", "val", "test"):
        manifest = json.loads((root / "int8" / split / "manifest.json").read_text())
        assert manifest["dtype"] == "int8"
        for name in FEATURES:
            values = np.load(root / "int8" / split / f"{name}.npy")
            scales = np.load(root / "int8" / split / f"{name}_scale.npy")
            assert values.dtype == np.int8 and scales.dtype == np.float32
            assert scales.shape == values.shape[:-1]
            # the same encoder outputs as the float16 cache's, quantized by the reference rule
            float16 = np.load(root / "float16" / split / f"{name}.npy")
            expected_values, expected_scales = reference_quantize(float16)
            np.testing.assert_array_equal(scales, expected_scales)
            np.testing.assert_array_equal(values, expected_values)


def test_reading_an_int8_cache_gives_float16_features_of_the_dequantized_values(caches):
    folder = caches[1] / "int8" / "train"
    reader = SplitCacheReader(folder)
    rows = np.array([5, 0, 17, 41, 3])
    features, has_image = reader.gather(rows)
    image_rows = np.load(folder / "sample_image_row.npy")[rows]
    assert has_image.all()
    for name in FEATURES:
        index = image_rows if name.startswith("image") else rows
        values = np.load(folder / f"{name}.npy")[index].astype(np.float32)
        scales = np.load(folder / f"{name}_scale.npy")[index]
        expected = (values * scales[..., None]).astype(np.float16)
        got = getattr(features, name)
        assert got.dtype == torch.float16
        if name.endswith("tokens"):
            got = got.transpose(0, 1)  # (L_s, B, N, D) -> stored (B, L_s, N, D)
        np.testing.assert_array_equal(got.numpy(), expected)
    # within half a step of the float16 cache's features (plus float16 rounding)
    baseline, _ = SplitCacheReader(caches[1] / "float16" / "train").gather(rows)
    for name in FEATURES:
        index = image_rows if name.startswith("image") else rows
        step = np.load(folder / f"{name}_scale.npy")[index][..., None]
        got, want = getattr(features, name), getattr(baseline, name)
        if name.endswith("tokens"):
            got, want = got.transpose(0, 1), want.transpose(0, 1)
        error = np.abs(got.numpy().astype(np.float64) - want.numpy().astype(np.float64))
        assert (error <= step / 2 + np.abs(want.numpy()) * 2.0**-10 + 2.0**-24).all(), name


def test_an_int8_cache_passes_verify(caches, int8_copy, capsys):
    status, out, err = rlrt_cache(caches, int8_copy, capsys, "--storage_dtype=int8", "--verify")
    assert status == 0, err
    assert "rlrt cache: verify: ok: dummy, train" in out


def test_a_float16_cache_keeps_the_format_older_rlrt_wrote(caches):
    folder = caches[1] / "float16" / "train"
    names = {p.name for p in folder.iterdir()}
    assert names == {
        "manifest.json",
        "build.json",
        "ids.json",
        "sample_image_row.npy",
        "image_stats.npy",
        "image_tokens.npy",
        "image_embedding.npy",
        "image_done.npy",
        "text_tokens.npy",
        "text_mask.npy",
        "text_embedding.npy",
        "text_done.npy",
    }
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["format_version"] == 1
    reader = SplitCacheReader(folder)
    features, _ = reader.gather(np.arange(4))
    stored = np.load(folder / "text_embedding.npy")[:4]
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(features.text_embedding.numpy(), stored)


def test_training_from_an_int8_cache_is_close_to_online(
    caches, tmp_path, tiny_vit_config, tiny_llama_dir
):
    """The tolerances of `test_training_from_the_cache_matches_online_step_for_step` (float16):
    first loss rtol 1e-3, every step's loss rtol 1e-2 (atol 1e-3), validation metrics and, here,
    test metrics rtol 1e-2 / atol 1e-2. int8 features are off by up to max|x|/254 per vector;
    measured on these tiny encoders: first loss 7e-6 relative, worst step 1e-4, validation and
    test loss 3e-5 absolute, F1 identical (float16: 4e-7, 1e-5, 5e-6)."""
    root = caches[1]
    online_data, online_model = make_pair(root, tiny_vit_config, tiny_llama_dir)
    cached_data, cached_model = make_pair(root, tiny_vit_config, tiny_llama_dir, root / "int8")
    online = fit(online_data, online_model, tmp_path)
    cached = fit(cached_data, cached_model, tmp_path)
    assert_trained_alike(cached, online)
    tester = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    online_test = tester.test(online_model, online_data, verbose=False)[0]
    cached_test = tester.test(cached_model, cached_data, verbose=False)[0]
    for key in ("test/loss", "test/f1_micro", "test/f1_macro"):
        np.testing.assert_allclose(cached_test[key], online_test[key], rtol=1e-2, atol=1e-2)


def test_a_killed_int8_build_resumes_and_only_computes_what_is_missing(caches, int8_copy):
    split = int8_copy / "train"
    reference = {n: np.load(split / f"{n}.npy") for n in ("text_tokens", "text_tokens_scale")}
    (split / "manifest.json").unlink()
    done = np.load(split / "text_done.npy", mmap_mode="r+")
    half = len(done) // 2
    done[half:] = False
    done.flush()
    for name, sentinel in (("text_tokens", 7), ("text_tokens_scale", 0.5)):
        array = np.load(split / f"{name}.npy", mmap_mode="r+")
        array[:half] = sentinel  # rows flagged done must not be recomputed
        array[half:] = 0
        array.flush()
    del done, array
    run_cache([*caches[0], f"--data.init_args.feature_cache={int8_copy}", "--storage_dtype=int8"])
    for name, sentinel in (("text_tokens", 7), ("text_tokens_scale", 0.5)):
        resumed = np.load(split / f"{name}.npy")
        assert (resumed[:half] == sentinel).all()
        np.testing.assert_array_equal(resumed[half:], reference[name][half:])
    assert SplitCacheReader(split).manifest["dtype"] == "int8"


def test_an_unknown_dtype_in_the_manifest_is_refused_in_one_line(int8_copy):
    manifest_file = int8_copy / "train" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["dtype"] = "bfloat16"
    manifest_file.write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptError) as error:
        SplitCacheReader(int8_copy / "train")
    message = str(error.value)
    assert "\n" not in message and str(manifest_file) in message
    assert "'bfloat16'" in message and "--overwrite" in message


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x93NUMPY\x01\x00garbage" + bytes(64))


def wrong_shape(path: Path) -> None:
    np.save(path, np.load(path)[..., :-1])


def non_finite(path: Path) -> None:
    scales = np.load(path)
    scales[0] = np.nan  # row 0 is among the rows sampled on open
    np.save(path, scales)


@pytest.mark.parametrize("damage", [truncated, garbage, wrong_shape, non_finite])
@pytest.mark.parametrize("name", ["text_tokens_scale", "image_embedding_scale"])
def test_a_damaged_scale_file_is_refused_in_one_line_naming_it(int8_copy, damage, name):
    path = int8_copy / "train" / f"{name}.npy"
    damage(path)
    with pytest.raises(CacheCorruptError) as error:
        SplitCacheReader(int8_copy / "train")
    message = str(error.value)
    assert "\n" not in message and f"{path} is damaged" in message and "--overwrite" in message


def test_another_storage_dtype_into_a_cache_folder_needs_overwrite(caches, int8_copy, capsys):
    before = {p: p.read_bytes() for p in int8_copy.rglob("*") if p.is_file()}
    with pytest.raises(CacheMismatchError) as error:
        run_cache([*caches[0], f"--data.init_args.feature_cache={int8_copy}", "--splits=train"])
    message = str(error.value)
    assert message.startswith(f"{int8_copy / 'dummy'} holds a feature cache of another config")
    assert "stored as int8, this run asks for --storage_dtype float16" in message
    assert "--overwrite" in message and "\n" not in message
    assert {p: p.read_bytes() for p in int8_copy.rglob("*") if p.is_file()} == before
    status, _, err = rlrt_cache(caches, int8_copy, capsys, "--overwrite")
    assert status == 0, err
    reader = SplitCacheReader(int8_copy / "train")
    assert reader.manifest["dtype"] == "float16" and reader.text_tokens.dtype == np.float16
    assert not (int8_copy / "train" / "text_tokens_scale.npy").exists()


def test_the_size_estimate_covers_the_built_cache_closely(caches):
    for dtype in ("float16", "int8"):
        for split in ("dummy", "train", "test"):
            folder = caches[1] / dtype / split
            tokens_i = np.load(folder / "image_tokens.npy", mmap_mode="r").shape
            tokens_t = np.load(folder / "text_tokens.npy", mmap_mode="r").shape
            shapes = Shapes(
                layers=tokens_i[1],
                image_tokens=tokens_i[2],
                image_width=tokens_i[3],
                image_embed=np.load(folder / "image_embedding.npy", mmap_mode="r").shape[1],
                text_tokens=tokens_t[2],
                text_width=tokens_t[3],
                text_embed=np.load(folder / "text_embedding.npy", mmap_mode="r").shape[1],
            )
            estimate = estimated_split_bytes(
                tokens_t[0], tokens_i[0], shapes, dtype, (folder / "ids.json").stat().st_size
            )
            held = sum(p.stat().st_blocks * 512 for p in folder.iterdir())
            assert held <= estimate <= held + 16 * 2**10, (dtype, split)


def report_free(monkeypatch, free: int) -> list[Path]:
    """Make `shutil.disk_usage` report `free` bytes; returns the paths it is asked about."""
    asked: list[Path] = []

    def disk_usage(path):
        asked.append(Path(path))
        return SimpleNamespace(total=10 * free + 2**30, used=2**30, free=free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    return asked


def tree(folder: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


def test_a_cache_that_does_not_fit_is_refused_before_any_work_leaving_nothing(
    caches, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path)
    asked = report_free(monkeypatch, 3 * 2**20)
    target = tmp_path / "new" / "cache"
    status, out, err = rlrt_cache(caches, target, capsys)
    assert status == 2 and err.count("\n") == 1 and "rlrt cache:" not in out
    assert f"not enough disk space for the feature cache {target}:" in err
    assert "3.0 MiB is free" in err and "(float16) plus a margin of 64." in err
    assert "choose another --cache_dir, or pass --storage_dtype int8 (about " in err
    needed, int8 = sizes_after_about(err)
    assert 0 < int8 < needed
    assert asked and all(p.is_relative_to(tmp_path) for p in asked)
    assert tree(tmp_path) == before  # no folder, no lock file
    status, _, err = rlrt_cache(caches, target, capsys, "--storage_dtype=int8")
    assert status == 2 and "--storage_dtype int8" not in err and "(int8)" in err
    assert tree(tmp_path) == before


def sizes_after_about(line: str) -> list[float]:
    """The sizes after `about` in a refusal, in KiB."""
    found = re.findall(r"about ([\d.]+) (B|KiB|MiB)", line)
    scale = {"B": 1 / 1024, "KiB": 1, "MiB": 1024}
    return [float(value) * scale[unit] for value, unit in found]


def test_a_refused_build_leaves_an_existing_cache_as_it_was(caches, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    shutil.copytree(caches[1] / "float16", cache)
    shutil.rmtree(cache / "val")  # a split still to build
    before = tree(cache)
    report_free(monkeypatch, 0)
    status, _, err = rlrt_cache(caches, cache, capsys, "--splits=train,val")
    assert status == 2 and f"feature cache {cache}:" in err and "0 B is free" in err
    assert tree(cache) == before
    # splits complete already need nothing: no refusal, whatever the disk says
    status, out, err = rlrt_cache(caches, cache, capsys)
    assert status == 0 and "complete already" in out, err


def test_a_resumed_build_needs_only_what_is_not_allocated_yet(
    caches, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    shutil.copytree(caches[1] / "float16", cache)
    split = cache / "train"
    (split / "manifest.json").unlink()
    done = np.load(split / "text_done.npy", mmap_mode="r+")
    done[10:] = False
    done.flush()
    del done
    monkeypatch.setattr(space, "MARGIN_BYTES", 0)
    free = space.allocated_bytes(split) // 2  # far less than the split, more than its rest
    report_free(monkeypatch, free)
    status, out, err = rlrt_cache(caches, tmp_path / "fresh", capsys)
    assert status == 2 and "not enough disk space" in err
    assert not (tmp_path / "fresh").exists()
    status, out, err = rlrt_cache(caches, cache, capsys)
    assert status == 0, err
    assert len(SplitCacheReader(split)) == 42


def test_enough_space_builds(caches, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    report_free(monkeypatch, 200 * 2**20)  # the tiny cache and the 64 MiB margin fit
    status, out, err = rlrt_cache(caches, tmp_path / "cache", capsys, "--storage_dtype=int8")
    assert status == 0, err
    assert SplitCacheReader(tmp_path / "cache" / "train").manifest["dtype"] == "int8"


def test_the_storage_report_errors_match_a_loop_over_vectors():
    """`rlrt.reports.storage_cost.array_error` against an explicit loop over feature vectors,
    on a real quantisation round trip (a zero vector included)."""
    from rlrt.reports.storage_cost import array_error

    rng = np.random.default_rng(3)
    reference = (rng.standard_normal((5, 3, 8)) * rng.uniform(0.1, 9, (5, 3, 1))).astype(np.float16)
    reference[2, 1] = 0
    values, scale = quantize(reference)
    read = dequantize(values, scale)
    got = array_error(reference, read)
    worst_ratio, squared_error, squared = 0.0, 0.0, 0.0
    for i in range(5):
        for j in range(3):
            a = [float(v) for v in reference[i, j]]
            b = [float(v) for v in read[i, j]]
            diffs = [abs(x - y) for x, y in zip(a, b)]
            peak = max(abs(x) for x in a)
            if peak > 0:
                worst_ratio = max(worst_ratio, max(diffs) / peak)
            squared_error += sum(d * d for d in diffs)
            squared += sum(x * x for x in a)
    assert got["max_error_over_vector_max"] == pytest.approx(worst_ratio, rel=1e-12)
    assert got["relative_rms_error"] == pytest.approx((squared_error / squared) ** 0.5, rel=1e-9)
    assert got["max_abs_value"] == pytest.approx(float(np.abs(reference.astype(float)).max()))
    assert 0 < got["max_error_over_vector_max"] <= 1 / 254 + 1 / 2048
