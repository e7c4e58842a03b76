"""MM-IMDB reader and the shared DataModule base, on a tiny fake dataset in both layouts."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from jsonargparse import ArgumentParser

from data_modules import (
    MMIMDB_GENRES,
    BadSampleError,
    DatasetNotFoundError,
    MMIMDBDataModule,
)
from data_modules.fakes import write_fake_mmimdb

S = 32  # image size: small keeps the tests fast


def make(root, **kwargs) -> MMIMDBDataModule:
    kwargs = {"image_size": S, "batch_size": 4, **kwargs}
    return MMIMDBDataModule(root=str(root), **kwargs)


def setup_all(dm: MMIMDBDataModule) -> MMIMDBDataModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bad-sample summary
        dm.setup()
    return dm


@pytest.fixture(params=["dataset", "images_labels"])
def fake(request, tmp_path):
    return write_fake_mmimdb(tmp_path / "mmimdb", layout=request.param)


def test_pinned_labels():
    assert len(MMIMDB_GENRES) == 23
    assert MMIMDB_GENRES[:3] == ("Drama", "Comedy", "Romance")
    assert MMIMDB_GENRES[-1] == "Film-Noir"
    dm = MMIMDBDataModule(root="unused")
    assert dm.class_names == list(MMIMDB_GENRES)
    assert dm.num_classes == 23 and dm.task == "multilabel"


@pytest.mark.parametrize("text_unit", ["longest", "first", "all"])
def test_keeps_good_and_reports_bad(fake, text_unit):
    dm = setup_all(make(fake.root, text_unit=text_unit))
    for split, movie_ids in fake.kept.items():
        ids = [r.id for r in dm.dataset(split).records]
        if text_unit == "all":
            want = [
                f"{m}#{k}"
                for m in movie_ids
                for k in range(len(fake.movies[m].get("plot") or [""]))
            ]
        else:
            want = movie_ids
        assert ids == want, split
    got = {(b.split, b.id, b.reason.split(":")[0]) for b in dm.bad_samples}
    assert got == fake.expected_bad(text_unit)
    assert len(dm.bad_samples) == len(got)  # each bad sample reported once


def test_text_units(fake):
    texts = {}
    for unit in ("longest", "first", "all"):
        dm = setup_all(make(fake.root, text_unit=unit))
        texts[unit] = {
            r.id: r.text for s in ("train", "val", "test") for r in dm.dataset(s).records
        }
    assert texts["longest"]["0000001"] == "A much longer second plot about a family."
    assert texts["first"]["0000001"] == "A short plot."
    assert texts["longest"]["0000014"] == "The second and longest plot."
    assert texts["all"]["0000014#2"] == "Third."
    for unit in ("longest", "first"):  # empty plot list, [""] and no plot key: kept as ""
        assert texts[unit]["0000004"] == texts[unit]["0000011"] == texts[unit]["0000012"] == ""
    assert texts["all"]["0000004#0"] == ""


def test_label_vectors(fake):
    dm = setup_all(make(fake.root))
    labels = {r.id: r.label for s in ("train", "val", "test") for r in dm.dataset(s).records}
    idx = {g: i for i, g in enumerate(MMIMDB_GENRES)}
    assert labels["0000001"] == [0, 1]  # Drama, Comedy
    assert labels["0000002"] == [idx["Horror"]]  # Talk-Show dropped
    assert labels["0000003"] == []  # only an unknown genre: kept, all zeros
    assert labels["0000014"] == sorted([idx["Film-Noir"], idx["Drama"], idx["Music"]])
    sample = dm.dataset("test")[0]
    want = torch.zeros(23)
    want[[22, 0, 16]] = 1.0
    assert torch.equal(sample["label"], want)


def test_batch_dict(fake):
    dm = setup_all(make(fake.root, text_unit="all"))
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "text", "label", "id", "image_present", "text_present"}
    b = 4
    assert batch["image"].shape == (b, 3, S, S) and batch["image"].dtype == torch.uint8
    assert batch["label"].shape == (b, 23) and batch["label"].dtype == torch.float32
    assert batch["image_present"].shape == (b,) and batch["image_present"].dtype == torch.bool
    assert batch["text_present"].dtype == torch.bool and batch["text_present"].all()
    assert batch["image_present"].all()
    assert len(batch["text"]) == len(batch["id"]) == b
    assert all(isinstance(t, str) for t in batch["text"])
    assert batch["image"].float().std() > 0  # real pixels, not the zero placeholder


def test_loaders_shuffle_seeded_train_only(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    dm = setup_all(make(fake.root, text_unit="all", batch_size=1, seed=3))
    order = [b["id"][0] for b in dm.train_dataloader()]
    dm2 = setup_all(make(fake.root, text_unit="all", batch_size=1, seed=3))
    assert order == [b["id"][0] for b in dm2.train_dataloader()]
    assert sorted(order) == sorted(r.id for r in dm.dataset("train").records)
    want = [r.id for r in dm.dataset("test").records]
    assert [i for b in dm.test_dataloader() for i in b["id"]] == want
    assert [i for b in dm.predict_dataloader() for i in b["id"]] == want


def test_workers_persistent(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    dm = setup_all(make(fake.root, num_workers=1))
    loader = dm.val_dataloader()
    assert loader.persistent_workers
    assert [i for b in loader for i in b["id"]] == fake.kept["val"]


def test_error_mode_one_line(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    with pytest.raises(BadSampleError) as err:
        make(fake.root, on_bad_sample="error").setup("fit")
    msg = str(err.value)
    assert "\n" not in msg
    assert "'0000005'" in msg and "missing image" in msg  # the first bad train sample


def test_bad_sample_report(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    dm = make(fake.root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm.setup("fit")
    messages = " | ".join(str(w.message) for w in caught)
    assert "MM-IMDB train: dropped 7 bad sample" in messages
    assert "MM-IMDB val: dropped 1 bad sample" in messages
    dm.write_bad_sample_report(tmp_path / "report" / "bad.json")
    report = json.loads((tmp_path / "report" / "bad.json").read_text())
    assert report["counts"] == {"train": 7, "val": 1}
    assert {(s["split"], s["id"]) for s in report["samples"]} == {
        (s, i) for s, i, _ in fake.expected_bad("longest") if s != "test"
    }


def test_decode_failure_after_setup(tmp_path):
    """An image that breaks after the setup checks is dropped from its batch ("skip")."""
    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    dm = setup_all(make(fake.root, batch_size=2))
    path = dm.dataset("val").records[0].image_path
    path.write_bytes(b"garbage")
    batch = next(iter(dm.val_dataloader()))
    assert batch["id"] == ["0000012"] and batch["image"].shape == (1, 3, S, S)
    assert batch["label"].shape == (1, 23)
    dm.dataset("val").on_bad_sample = "error"
    with pytest.raises(BadSampleError, match="0000011"):
        dm.dataset("val")[0]


def test_all_dropped_batch_is_empty(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    dm = setup_all(make(fake.root, batch_size=1))
    dm.dataset("test").records[0].image_path.write_bytes(b"garbage")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (0, 3, S, S) and batch["label"].shape == (0, 23)
    assert batch["id"] == [] and batch["image_present"].shape == (0,)


def test_verify_decode(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    dm = setup_all(make(fake.root, verify_images="decode"))
    got = {(b.split, b.id, b.reason.split(":")[0]) for b in dm.bad_samples}
    assert got == fake.expected_bad("longest")


def test_limit_samples(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    dm = setup_all(make(fake.root, limit_samples=2, text_unit="all"))
    assert [r.id for r in dm.dataset("train").records] == ["0000001#0", "0000001#1"]
    assert [r.id for r in dm.dataset("test").records] == ["0000014#0", "0000014#1"]


def test_missing_root_names_file(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        make(tmp_path / "nowhere").setup("fit")
    msg = str(err.value)
    assert isinstance(err.value, DatasetNotFoundError)
    assert "split.json" in msg and str(tmp_path / "nowhere") in msg
    assert "dataset/" in msg and "images/" in msg  # accepted layouts
    assert "lisi1.unal.edu.co/mmimdb" in msg  # where to get it


def test_missing_folder_and_nested_root(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    with pytest.raises(DatasetNotFoundError, match="did you mean root="):
        make(tmp_path).setup("fit")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "split.json").write_text(json.dumps({"train": [], "dev": [], "test": []}))
    with pytest.raises(DatasetNotFoundError, match="dataset/"):
        make(tmp_path / "bare").setup("fit")
    assert fake.root.is_dir()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="text_unit"):
        MMIMDBDataModule(root="x", text_unit="every")
    with pytest.raises(ValueError, match="on_bad_sample"):
        MMIMDBDataModule(root="x", on_bad_sample="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        MMIMDBDataModule(root="x", batch_size=0)


def test_cli_signature():
    """The init arguments resolve for LightningCLI (jsonargparse), base arguments included."""
    parser = ArgumentParser()
    parser.add_class_arguments(MMIMDBDataModule, "data")
    cfg = parser.parse_args(["--data.root=/d", "--data.text_unit=all", "--data.image_size=64"])
    assert cfg.data.root == "/d" and cfg.data.text_unit == "all" and cfg.data.image_size == 64
    assert cfg.data.eval_batch_size is None and cfg.data.on_bad_sample == "skip"
    dm = MMIMDBDataModule(**cfg.data.as_dict())
    assert dm.hparams["text_unit"] == "all" and dm.hparams["image_size"] == 64


def test_one_decode_per_poster_with_text_unit_all(tmp_path, monkeypatch):
    """The plots of one movie share its poster: one decode per batch, shared pixels."""
    import data_modules.base as base

    fake = write_fake_mmimdb(tmp_path / "mmimdb")
    dm = setup_all(make(fake.root, text_unit="all", eval_batch_size=8))
    calls = []
    load = base.load_image
    monkeypatch.setattr(base, "load_image", lambda p, s, **k: calls.append(p) or load(p, s, **k))
    batch = next(iter(dm.test_dataloader()))
    assert batch["id"] == ["0000014#0", "0000014#1", "0000014#2"]
    assert len(calls) == 1
    assert torch.equal(batch["image"][0], batch["image"][2])


def test_clean_copy_and_source_counts(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "clean", dirty=False, num_movies=10)
    dm = setup_all(make(fake.root, text_unit="all"))
    assert dm.bad_samples == []
    assert {s: [r.id.split("#")[0] for r in dm.dataset(s).records] for s in fake.kept} == {
        s: [m for m in ids for _ in fake.movies[m]["plot"]] for s, ids in fake.kept.items()
    }
    # source counts are movies in split.json, whatever the text unit
    assert [dm.source_count(s) for s in ("train", "val", "test")] == [6, 2, 2]
    assert dm.expected_split_sizes() == {"train": 15_552, "val": 2_608, "test": 7_799}
    again = write_fake_mmimdb(tmp_path / "again", dirty=False, num_movies=10)
    assert again.movies == fake.movies and again.kept == fake.kept
