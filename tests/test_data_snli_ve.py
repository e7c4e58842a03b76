"""SNLI-VE reader on small fake copies in the real layout, and one decode per image per batch."""

from __future__ import annotations

import filecmp
import json
import warnings

import pytest
import torch

import data_modules.base as base
from data_modules import (
    SNLI_VE_LABELS,
    BadSampleError,
    DatasetNotFoundError,
    SNLIVEDataModule,
)
from data_modules.fakes import write_fake_snli_ve
from data_modules.snli_ve import IMAGE_ID_KEYS

S = 32


def make(root, **kwargs) -> SNLIVEDataModule:
    kwargs = {"image_size": S, "batch_size": 4, **kwargs}
    return SNLIVEDataModule(root=str(root), **kwargs)


def setup_all(dm: SNLIVEDataModule) -> SNLIVEDataModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bad-sample summary
        dm.setup()
    return dm


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_snli_ve(tmp_path_factory.mktemp("snli") / "snli_ve")


@pytest.fixture(scope="module")
def dm(fake):
    return setup_all(make(fake.root))


def rows(fake, name="snli_ve_train.jsonl") -> list[dict]:
    out = []
    for line in (fake.root / name).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return [r for r in out if isinstance(r, dict)]


def test_pinned_labels():
    assert SNLI_VE_LABELS == ("entailment", "neutral", "contradiction")
    dm = SNLIVEDataModule(root="unused")
    assert dm.num_classes == 3 and dm.task == "multiclass"


def test_the_dirt_is_real(fake):
    train = rows(fake)
    assert {"-", ""} <= {r.get("gold_label") for r in train}
    for key in IMAGE_ID_KEYS[:2]:
        assert any(key in r for r in train), key
    values = [r.get("Flikr30kID", r.get("Flickr30K_ID")) for r in train]
    assert any(isinstance(v, int) for v in values)  # bare digits
    assert any(isinstance(v, str) and v.endswith(".jpg") for v in values)
    assert any(isinstance(v, str) and v.isdigit() for v in values)


def test_keeps_and_reports_exactly(fake, dm):
    for split in ("train", "val", "test"):
        assert [r.id for r in dm.dataset(split).records] == fake.kept[split], split
    got = [(b.split, b.id, b.reason.split(":")[0]) for b in dm.bad_samples]
    assert set(got) == fake.dropped
    assert len(got) == len(set(got))


def test_hypothesis_only_and_labels(fake, dm):
    for split in ("train", "val", "test"):
        for record in dm.dataset(split).records:
            assert record.text == fake.texts[record.id]
            assert "PREMISE" not in record.text  # sentence1 never reaches the model
            assert record.label == fake.labels[record.id]
            assert record.image_path.suffix == ".jpg"
            assert not record.image_path.stem.endswith(".jpg")  # suffix stripped once
    texts = [r.text for r in dm.dataset("train").records]
    assert "" in texts  # an empty hypothesis is kept
    assert any(":" in r.id for r in dm.dataset("train").records)  # a row without pairID


def test_every_id_key_variant_resolves(fake, dm):
    by_id = {r.id: r for r in dm.dataset("train").records}
    checked = 0
    for row in rows(fake):
        record = by_id.pop(row.get("pairID"), None)  # pop: a later duplicate is not this row
        if record is not None:
            value = row.get("Flikr30kID", row.get("Flickr30K_ID"))
            assert record.image_path.stem == str(value).removesuffix(".jpg")
            checked += 1
    assert checked == len(dm.dataset("train")) - 1  # all but the row without pairID


def test_one_decode_per_image_per_batch(fake, dm, monkeypatch):
    calls = []

    def counting(path, size, **kwargs):
        calls.append(path)
        return load(path, size, **kwargs)

    load = base.load_image
    monkeypatch.setattr(base, "load_image", counting)
    dataset = dm.dataset("train")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=len(dataset), collate_fn=base.collate_samples
    )
    batch = next(iter(loader))
    distinct = {r.image_path for r in dataset.records}
    assert len(dataset) > len(distinct)  # hypotheses share images
    assert sorted(calls) == sorted(distinct)  # each decoded exactly once
    first = {}
    for i, record in enumerate(dataset.records):  # samples of one image share its pixels
        j = first.setdefault(record.image_path, i)
        assert torch.equal(batch["image"][i], batch["image"][j])
    calls.clear()
    dataset[0], dataset[1]  # single-sample access decodes per call
    assert len(calls) == 2


def test_shared_image_breaking_after_setup(tmp_path):
    """An image that breaks after setup: one decode attempt per batch, all its samples dropped."""
    fake = write_fake_snli_ve(tmp_path / "snli", dirty=False, images=(2, 1, 1))
    dm = setup_all(make(fake.root))
    records = dm.dataset("test").records
    records[0].image_path.write_bytes(b"garbage")
    batch = next(iter(dm.test_dataloader()))
    assert batch["id"] == []  # the 3 hypotheses of the only test image
    assert batch["image"].shape == (0, 3, S, S)
    dm.dataset("test").on_bad_sample = "error"
    with pytest.raises(BadSampleError, match="unreadable image"):
        dm.dataset("test").__getitems__([0, 1, 2])


def test_error_mode_one_line(fake):
    with pytest.raises(BadSampleError) as err:
        make(fake.root, on_bad_sample="error").setup("validate")
    msg = str(err.value)
    assert "\n" not in msg and "no gold label" in msg and "val" in msg


def test_standard_sizes(dm):
    assert dm.expected_split_sizes() == {"train": 529_527, "val": 17_858, "test": 17_901}
    assert dm.source_count("val") == len(dm.dataset("val")) + 1  # one "-" label dropped


def test_writer_is_deterministic(tmp_path, fake):
    again = write_fake_snli_ve(tmp_path / "snli_ve")
    assert again.kept == fake.kept and again.dropped == fake.dropped
    for name in ("snli_ve_train.jsonl", "snli_ve_test.jsonl"):
        assert filecmp.cmp(again.root / name, fake.root / name, shallow=False), name


def test_clean_copy_drops_nothing(tmp_path):
    fake = write_fake_snli_ve(tmp_path / "clean", dirty=False)
    dm = setup_all(make(fake.root))
    assert dm.bad_samples == [] and fake.dropped == set()
    assert {s: len(dm.dataset(s)) for s in ("train", "val", "test")} == {
        "train": 12,
        "val": 6,
        "test": 6,
    }


def test_missing_files_name_the_file(tmp_path, fake):
    with pytest.raises(DatasetNotFoundError) as err:
        make(tmp_path / "nowhere").setup("fit")
    msg = str(err.value)
    assert "\n" not in msg and "snli_ve_train.jsonl" in msg and "does not exist" in msg
    assert "flickr30k_images/<image id>.jpg" in msg  # the accepted layout
    with pytest.raises(DatasetNotFoundError, match="did you mean root="):
        make(fake.root.parent).setup("fit")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "snli_ve_test.jsonl").write_text("")
    with pytest.raises(DatasetNotFoundError, match="folder flickr30k_images/"):
        make(bare).setup("test")
