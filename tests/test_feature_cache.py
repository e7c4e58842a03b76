"""The frozen-feature cache: same training as online, resumable, refuses foreign configs."""

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning import Callback, Trainer, seed_everything

from data_modules import DemoMMIMDBDataModule
from data_modules.base import SampleRecord
from rlrt.cache.content import image_table
from rlrt.cache.format import CacheMismatchError
from rlrt.cache.reader import SplitCacheReader
from rlrt.commands.cache import run_cache
from rlrt.encoders import FrozenImageEncoder, FrozenTextEncoder
from rlrt.system import RLRT
from tests.test_cli import demo_args


class StepLosses(Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def build_cache(tmp_path, tiny_vit_config, tiny_llama_dir, cache, *extra):
    args = demo_args(tmp_path, tiny_vit_config, tiny_llama_dir, num_movies=60)
    run_cache([*args, f"--data.init_args.feature_cache={cache}", *extra])
    return args


def make_pair(
    tmp_path, tiny_vit_config, tiny_llama_dir, feature_cache=None, text_layers=2, image_encoder=None
):
    """A demo data module and an RLRT on the tiny encoders (or `image_encoder`), head seeded."""
    data = DemoMMIMDBDataModule(
        root=str(tmp_path / "demo_data"),
        num_movies=60,
        batch_size=16,
        image_size=32,
        feature_cache=None if feature_cache is None else str(feature_cache),
    )
    seed_everything(0)  # same head initialisation for both runs
    model = RLRT(
        image_encoder=image_encoder
        or FrozenImageEncoder(config_file=str(tiny_vit_config), image_size=32, layers=2),
        text_encoder=FrozenTextEncoder(
            model_name_or_path=str(tiny_llama_dir),
            layers=text_layers,
            pooling="last",
            max_length=64,
        ),  # as configs/model/demo
        num_classes=data.num_classes,
        task=data.task,
        common_dim=8,
        lr=1e-3,
    )
    return data, model


def fit(data, model, tmp_path, epochs=3):
    seed_everything(0)
    losses = StepLosses()
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[losses],
        default_root_dir=tmp_path,
    )
    trainer.fit(model, data)
    val = trainer.validate(model, data, verbose=False)[0]
    return losses.losses, val


@pytest.fixture()
def cache(tmp_path, tiny_vit_config, tiny_llama_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cache"
    build_cache(tmp_path, tiny_vit_config, tiny_llama_dir, folder)
    return folder


def test_training_from_the_cache_matches_online_step_for_step(
    cache, tmp_path, tiny_vit_config, tiny_llama_dir
):
    online = fit(*make_pair(tmp_path, tiny_vit_config, tiny_llama_dir), tmp_path)
    cached = fit(*make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, cache), tmp_path)
    assert_trained_alike(cached, online)


def assert_trained_alike(cached, online):
    """Two `fit` results, from the float16 cache and online: the same losses step for step and
    the same validation metrics, up to float16 storage of the features, which shows in the 4th
    digit at the first step and compounds a little through the optimiser steps."""
    assert len(online[0]) == len(cached[0]) >= 6
    np.testing.assert_allclose(cached[0][0], online[0][0], rtol=1e-3)
    np.testing.assert_allclose(cached[0], online[0], rtol=1e-2, atol=1e-3)
    for key in ("val/loss", "val/f1_micro", "val/f1_macro"):
        np.testing.assert_allclose(cached[1][key], online[1][key], rtol=1e-2, atol=1e-2)


def test_cached_missing_modalities_use_the_stored_dummy_features(
    cache, tmp_path, tiny_vit_config, tiny_llama_dir
):
    data, model = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, cache)
    data.setup("test")
    batch = next(iter(data.test_dataloader()))
    batch["image_present"][0] = False
    batch["text_present"][1] = False
    features = model.features_of(batch)
    online_data, _ = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir)
    online_data.setup("test")
    online = next(iter(online_data.test_dataloader()))
    assert online["id"] == batch["id"]
    online["image_present"][0] = False
    online["text_present"][1] = False
    expected = model.encode(online)
    for name in ("image_embedding", "text_embedding", "image_tokens", "text_tokens"):
        cached = getattr(features, name)
        assert cached.dtype == torch.float16  # as stored; the model casts on its device
        torch.testing.assert_close(cached.float(), getattr(expected, name), rtol=1e-2, atol=1e-2)
    assert torch.equal(features.text_mask, expected.text_mask)


def test_cache_holds_plain_arrays_and_json_only(cache):
    for path in cache.rglob("*"):
        if path.suffix == ".npy":
            np.load(path, allow_pickle=False)
        elif path.is_file():
            json.loads(path.read_text())
    manifest = json.loads((cache / "train" / "manifest.json").read_text())
    assert manifest["dtype"] == "float16" and manifest["split"] == "train"
    assert manifest["encoders"]["text"]["layers"] == [1, 2]
    assert set(manifest) >= {"format_version", "ids_sha256", "root", "token_pooling", "dataset"}
    assert np.load(cache / "train" / "text_tokens.npy", mmap_mode="r").dtype == np.float16


def test_a_killed_build_resumes_and_only_computes_what_is_missing(
    cache, tmp_path, tiny_vit_config, tiny_llama_dir
):
    split = cache / "train"
    reference = np.load(split / "text_tokens.npy").copy()
    # simulate a build killed half way: no manifest, half the rows not flagged done
    (split / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="not complete.*unfinished build"):
        SplitCacheReader(split)
    done = np.load(split / "text_done.npy", mmap_mode="r+")
    done[len(done) // 2 :] = False
    done.flush()
    tokens = np.load(split / "text_tokens.npy", mmap_mode="r+")
    tokens[: len(done) // 2] = 7.0  # sentinel: rows flagged done must not be recomputed
    tokens[len(done) // 2 :] = 0.0
    tokens.flush()
    del done, tokens
    build_cache(tmp_path, tiny_vit_config, tiny_llama_dir, cache)
    resumed = np.load(split / "text_tokens.npy")
    half = len(resumed) // 2
    assert (resumed[:half] == 7.0).all()
    np.testing.assert_array_equal(resumed[half:], reference[half:])
    assert SplitCacheReader(split).manifest["num_samples"] == len(resumed)


def test_a_cache_for_other_encoder_layers_is_refused(
    cache, tmp_path, tiny_vit_config, tiny_llama_dir
):
    data, model = make_pair(tmp_path, tiny_vit_config, tiny_llama_dir, cache, text_layers=[0, 2])
    with pytest.raises(CacheMismatchError, match=r"encoders\.text\.layers=\[1, 2\].*\[0, 2\]"):
        fit(data, model, tmp_path, epochs=1)


def test_weights_changed_in_place_are_caught_where_they_are_read(
    tmp_path, tiny_vit_config, tiny_llama_dir, monkeypatch
):
    """The same folder, other weights (a fine-tune saved over the old one). A fit from the cache
    trains on the cache's features and never reads the weights: it records the weights that made
    them; whatever reads the changed files (online encoding, `rlrt cache`) refuses by content."""
    monkeypatch.chdir(tmp_path)
    llama = tmp_path / "llama"
    shutil.copytree(tiny_llama_dir, llama)
    build_cache(tmp_path, tiny_vit_config, llama, tmp_path / "cache")
    built = SplitCacheReader(tmp_path / "cache" / "train").manifest["encoders"]["text"]
    weights = next(p for p in llama.iterdir() if p.suffix in (".safetensors", ".bin"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    data, model = make_pair(tmp_path, tiny_vit_config, llama, tmp_path / "cache")
    fit(data, model, tmp_path, epochs=1)
    assert not model.text_encoder.is_loaded
    assert model.encoder_identity()["text"] == built
    with pytest.raises(ValueError, match="weight files now differ"):
        model.text_encoder.load()
    with pytest.raises(CacheMismatchError, match=r"encoders\.text\.weights_fingerprint"):
        build_cache(tmp_path, tiny_vit_config, llama, tmp_path / "cache")


def test_a_cache_for_other_samples_is_refused(cache, tmp_path, tiny_vit_config, tiny_llama_dir):
    data = DemoMMIMDBDataModule(
        root=str(tmp_path / "demo_data"),
        num_movies=60,
        image_size=32,
        limit_samples=10,
        feature_cache=str(cache),
    )
    with pytest.raises(CacheMismatchError, match="ids_sha256|num_samples"):
        data.setup("fit")


def test_a_full_disk_fails_cleanly_before_any_work(
    tmp_path, tiny_vit_config, tiny_llama_dir, monkeypatch
):
    monkeypatch.chdir(tmp_path)

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", no_space)
    with pytest.raises(OSError, match="not enough disk space for the feature cache"):
        build_cache(tmp_path, tiny_vit_config, tiny_llama_dir, tmp_path / "cache")
    leftovers = list((tmp_path / "cache").rglob("*.json"))
    assert not any(p.name in ("manifest.json", "build.json") for p in leftovers)


def test_shared_images_are_stored_once():
    records = [
        SampleRecord(id=str(i), image_path=Path(f"img{i % 3}.jpg"), text="t", label=0)
        for i in range(7)
    ] + [SampleRecord(id="none", image_path=None, text="t", label=0)]
    paths, rows = image_table(records)
    assert paths == [Path("img0.jpg"), Path("img1.jpg"), Path("img2.jpg")]
    assert rows.tolist() == [0, 1, 2, 0, 1, 2, 0, -1]


def test_a_cache_of_another_config_is_never_overwritten_unasked(
    cache, tmp_path, tiny_vit_config, tiny_llama_dir
):
    before = (cache / "train" / "text_tokens.npy").read_bytes()
    with pytest.raises(CacheMismatchError, match=r"another config.*--overwrite"):
        build_cache(
            tmp_path,
            tiny_vit_config,
            tiny_llama_dir,
            cache,
            "--model.text_encoder.init_args.layers=[0, 2]",
        )
    assert (cache / "train" / "text_tokens.npy").read_bytes() == before
    build_cache(
        tmp_path,
        tiny_vit_config,
        tiny_llama_dir,
        cache,
        "--model.text_encoder.init_args.layers=[0, 2]",
        "--overwrite",
    )
    assert SplitCacheReader(cache / "train").manifest["encoders"]["text"]["layers"] == [0, 2]
