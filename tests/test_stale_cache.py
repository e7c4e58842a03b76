"""A feature cache whose dataset files changed in place (same ids) is refused, not used silently.

The manifest's `content_sha256` hashes the texts and the image files' sizes and modification
times; training recomputes it (one stat per image file) and names the split that changed.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from data_modules import DemoMMIMDBDataModule
from rlrt.cache.format import CacheMismatchError, CacheStaleError
from rlrt.cache.reader import SplitCacheReader
from rlrt.commands.cache import run_cache
from tests.test_cli_errors import fails_in_one_line
from tests.test_feature_cache import build_cache


@pytest.fixture()
def built(tmp_path, tiny_vit_config, tiny_llama_dir, monkeypatch):
    """(cli args, cache folder) of a tiny demo cache."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    args = build_cache(tmp_path, tiny_vit_config, tiny_llama_dir, cache)
    return args, cache


def data_module(tmp_path, cache) -> DemoMMIMDBDataModule:
    return DemoMMIMDBDataModule(
        root=str(tmp_path / "demo_data"), num_movies=60, image_size=32, feature_cache=str(cache)
    )


def first_train_record(tmp_path):
    data = DemoMMIMDBDataModule(root=str(tmp_path / "demo_data"), num_movies=60, image_size=32)
    data.setup("fit")
    return data.dataset("train").records[0]


def change_image(path) -> None:
    """Other pixels (other bytes), and a later modification time."""
    before = path.stat()
    with Image.open(path) as image:
        other = Image.eval(image.convert("RGB"), lambda v: 255 - v)
    other.save(path, format="JPEG")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert path.read_bytes() and path.stat().st_mtime_ns != before.st_mtime_ns


def change_plot(tmp_path, movie_id: str) -> None:
    """Another plot in the movie's JSON, the file's size and mtime kept: the text itself counts."""
    path = tmp_path / "demo_data" / "dataset" / f"{movie_id}.json"
    before = path.stat()
    meta = json.loads(path.read_text())
    plots = meta["plot"] if isinstance(meta["plot"], list) else [meta["plot"]]
    meta["plot"] = ["".join(reversed(p)) for p in plots]  # same length
    path.write_text(json.dumps(meta))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_an_image_changed_in_place_is_refused_in_one_line(built, tmp_path, capsys):
    args, cache = built
    change_image(first_train_record(tmp_path).image_path)
    with pytest.raises(CacheStaleError, match=r"the train split.*1 of \d+ image files"):
        data_module(tmp_path, cache).setup("fit")
    message = fails_in_one_line(["fit", *args, f"--data.init_args.feature_cache={cache}"], capsys)
    assert str(cache) in message and "the train split" in message and "--overwrite" in message


def test_a_plot_changed_in_place_is_refused(built, tmp_path):
    _, cache = built
    record = first_train_record(tmp_path)
    change_plot(tmp_path, record.id.split("#")[0])
    with pytest.raises(CacheStaleError, match=r"the train split.*texts.*no image file changed"):
        data_module(tmp_path, cache).setup("fit")


def test_an_unchanged_dataset_is_accepted(built, tmp_path):
    _, cache = built
    data = data_module(tmp_path, cache)
    data.setup("fit")
    data.setup("test")
    assert len(data.train_dataloader()) > 0
    manifest = SplitCacheReader(cache / "train").manifest
    assert len(manifest["content_sha256"]) == 64
    stats = np.load(cache / "train" / "image_stats.npy")
    assert stats.shape == (len(data.dataset("train")), 2)  # one poster per movie


def test_rlrt_cache_refuses_a_stale_cache_and_rebuilds_it_with_overwrite(built, tmp_path, capsys):
    args, cache = built
    change_image(first_train_record(tmp_path).image_path)
    capsys.readouterr()
    with pytest.raises(CacheStaleError, match=r"the train split.*1 of \d+ image files"):
        run_cache([*args, f"--data.init_args.feature_cache={cache}"])
    assert "train: complete already" not in capsys.readouterr().out
    run_cache([*args, f"--data.init_args.feature_cache={cache}", "--overwrite"])
    out = capsys.readouterr().out
    assert "train: complete already" not in out and "val: complete already" in out
    data = data_module(tmp_path, cache)
    data.setup("fit")
    data.setup("test")


def test_a_cache_built_before_the_fingerprint_is_refused_naming_it(built, tmp_path):
    args, cache = built
    path = cache / "train" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["content_sha256"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(CacheMismatchError, match=r"no content_sha256.*--overwrite"):
        data_module(tmp_path, cache).setup("fit")
    with pytest.raises(CacheMismatchError, match=r"without content_sha256.*--overwrite"):
        run_cache([*args, f"--data.init_args.feature_cache={cache}", "--splits=train"])
    run_cache([*args, f"--data.init_args.feature_cache={cache}", "--splits=train", "--overwrite"])
    data_module(tmp_path, cache).setup("fit")


def test_the_cli_error_names_the_split(built, tmp_path, capsys):
    """`rlrt test` from a cache whose test texts changed names the test split."""
    args, cache = built
    data = DemoMMIMDBDataModule(root=str(tmp_path / "demo_data"), num_movies=60, image_size=32)
    data.setup("test")
    change_plot(tmp_path, data.dataset("test").records[0].id.split("#")[0])
    message = fails_in_one_line(["test", *args, f"--data.init_args.feature_cache={cache}"], capsys)
    assert "the test split" in message
