"""The synthetic demo dataset: deterministic, readable as MM-IMDB, modality split as designed."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_modules import MMIMDB_GENRES, DemoMMIMDBDataModule, MMIMDBDataModule
from data_modules.fakes.demo import (
    BOTH,
    IMAGE_ONLY,
    KEYWORDS,
    META_FILE,
    TEXT_ONLY,
    ensure_demo_dataset,
    write_demo_dataset,
)

N = 60


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("demo") / "mmimdb"
    return root, write_demo_dataset(root, num_movies=N, seed=0)


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_deterministic(demo, tmp_path):
    root, _ = demo
    write_demo_dataset(tmp_path / "again", num_movies=N, seed=0)
    write_demo_dataset(tmp_path / "other", num_movies=N, seed=1)
    assert tree(tmp_path / "again") == tree(root)
    assert tree(tmp_path / "other") != tree(root)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_reader_accepts_layout(demo):
    root, meta = demo
    dm = MMIMDBDataModule(root=str(root), image_size=32, batch_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no bad-sample warning
        dm.setup()
    assert dm.bad_samples == []
    sizes = [len(dm.dataset(s)) for s in ("train", "val", "test")]
    assert sum(sizes) == N and sizes == [42, 6, 12]
    ids = [i for s in ("train", "val", "test") for i in (r.id for r in dm.dataset(s).records)]
    assert all(len(i) == 7 and i.isdigit() for i in ids) and len(set(ids)) == N
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].shape == (8, 23)
    assert (batch["label"].sum(1) >= 1).all() and (batch["label"].sum(1) <= 4).all()
    record = json.loads(next((root / "dataset").glob("*.json")).read_text())
    assert {"plot", "genres", "title", "year"} <= set(record)
    assert any(len(m["text_genres"]) == 2 for m in meta["movies"].values())  # some 2-plot movies


def test_all_labels_used(demo):
    _, meta = demo
    used = {g for m in meta["movies"].values() for g in m["genres"]}
    assert used == set(MMIMDB_GENRES)


def test_groups_partition_the_labels():
    groups = [set(IMAGE_ONLY), set(TEXT_ONLY), set(BOTH)]
    assert sorted(IMAGE_ONLY + TEXT_ONLY + BOTH) == sorted(MMIMDB_GENRES)
    assert all(6 <= len(g) <= 9 for g in groups)
    assert set(KEYWORDS) == set(TEXT_ONLY) | set(BOTH)
    words = [w for ws in KEYWORDS.values() for w in ws]
    assert len(words) == len(set(words))  # each keyword names one genre


def test_modality_split_holds(demo):
    root, meta = demo
    assert set(meta["elements"]) == set(IMAGE_ONLY) | set(BOTH)  # text-only: no poster element
    assert set(meta["keywords"]) == set(TEXT_ONLY) | set(BOTH)  # image-only: no keywords
    cells = [tuple(e["cell"]) for e in meta["elements"].values()]
    colours = [tuple(e["colour"]) for e in meta["elements"].values()]
    assert len(set(cells)) == len(cells) and len(set(colours)) == len(colours)
    keyword_genre = {w: g for g, ws in KEYWORDS.items() for w in ws}
    for movie_id, movie in meta["movies"].items():
        assert 1 <= len(movie["genres"]) <= 4
        assert set(movie["image_genres"]) <= set(movie["genres"]) - set(TEXT_ONLY)
        plots = json.loads((root / "dataset" / f"{movie_id}.json").read_text())["plot"]
        for plot, shown, decoys in zip(plots, movie["text_genres"], movie["decoys"]):
            assert set(shown) <= set(movie["genres"]) - set(IMAGE_ONLY)
            found = {
                keyword_genre[w] for w in plot.lower().rstrip(".").split() if w in keyword_genre
            }
            assert found == set(shown) | set(decoys)
            assert not found & set(IMAGE_ONLY)
    # Elements and keywords are omitted with a small probability: most genres are shown.
    drawn = {g for m in meta["movies"].values() for g in m["image_genres"]}
    written = {g for m in meta["movies"].values() for shown in m["text_genres"] for g in shown}
    assert drawn <= set(IMAGE_ONLY) | set(BOTH) and len(drawn) >= 12
    assert written <= set(TEXT_ONLY) | set(BOTH) and len(written) >= 12


def test_poster_elements_visible(demo):
    """Each drawn element shows its colour in its cell of the centre square."""
    root, meta = demo
    w, h = meta["image_size"]
    side = min(w, h)
    ox, oy, cell = (w - side) // 2, (h - side) // 2, side // 4
    checked = 0
    for movie_id, movie in meta["movies"].items():
        pixels = np.asarray(Image.open(root / "dataset" / f"{movie_id}.jpeg").convert("RGB"))
        for genre in movie["image_genres"]:
            row, col = meta["elements"][genre]["cell"]
            patch = pixels[oy + row * cell : oy + (row + 1) * cell, ox + col * cell :][:, :cell]
            colour = np.array(meta["elements"][genre]["colour"])
            close = np.abs(patch.astype(int) - colour).sum(-1) < 90
            assert close.mean() > 0.2, (movie_id, genre)
            checked += 1
    assert checked > N


def test_datamodule_generates_once(tmp_path):
    root = tmp_path / "data" / "demo"
    dm = DemoMMIMDBDataModule(root=str(root), num_movies=30, image_size=32)
    dm.prepare_data()
    stamp = (root / "split.json").stat().st_mtime_ns
    dm.setup("fit")
    assert len(dm.dataset("train")) == 21
    DemoMMIMDBDataModule(root=str(root), num_movies=30).prepare_data()
    assert (root / "split.json").stat().st_mtime_ns == stamp  # not regenerated
    with pytest.raises(ValueError, match="generated with"):
        DemoMMIMDBDataModule(root=str(root), num_movies=31).prepare_data()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        ensure_demo_dataset(tmp_path / "busy", num_movies=30)
    assert json.loads((root / META_FILE).read_text())["num_movies"] == 30
