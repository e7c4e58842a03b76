"""UPMC-Food101 reader on small fake copies in the real layout, dirt included."""

from __future__ import annotations

import csv
import filecmp
import io
import warnings
from collections import Counter

import pytest
import torch

from data_modules import (
    FOOD101_CLASSES,
    BadSampleError,
    DatasetNotFoundError,
    Food101DataModule,
)
from data_modules.fakes import write_fake_food101
from data_modules.food101 import split_row, stratified_val_indices

S = 32


def make(root, **kwargs) -> Food101DataModule:
    kwargs = {"image_size": S, "batch_size": 4, "val_size": 0.25, **kwargs}
    return Food101DataModule(root=str(root), **kwargs)


def setup_all(dm: Food101DataModule) -> Food101DataModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bad-sample summary
        dm.setup()
    return dm


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return write_fake_food101(tmp_path_factory.mktemp("food") / "food101")


@pytest.fixture(scope="module")
def dm(fake):
    return setup_all(make(fake.root))


def train_csv_lines(fake) -> list[str]:
    return (fake.root / "texts" / "train_titles.csv").read_bytes().decode("latin-1").splitlines()


def test_pinned_classes():
    assert len(FOOD101_CLASSES) == 101 == len(set(FOOD101_CLASSES))
    assert list(FOOD101_CLASSES) == sorted(FOOD101_CLASSES)
    assert FOOD101_CLASSES[0] == "apple_pie" and FOOD101_CLASSES[-1] == "waffles"
    dm = Food101DataModule(root="unused")
    assert dm.num_classes == 101 and dm.task == "multiclass"


def test_the_dirt_is_real(fake):
    """The fake carries what breaks a naive reader: a CSV parser swallows lines after the
    unclosed quote, and the first line is a header."""
    lines = [line for line in train_csv_lines(fake) if line.strip()]
    assert lines[0] == "image_path,text,food"
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    assert len(rows) < len(lines)  # the unclosed quote swallowed some
    assert any(line.startswith("pizza_731.txt,") for line in lines)


def test_keeps_exactly_the_good_rows(fake, dm):
    train = [r.id for r in dm.dataset("train").records]
    val = [r.id for r in dm.dataset("val").records]
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(fake.kept["train"])
    order = {sample_id: i for i, sample_id in enumerate(fake.kept["train"])}
    assert train == sorted(train, key=order.get) and val == sorted(val, key=order.get)
    assert [r.id for r in dm.dataset("test").records] == fake.kept["test"]


def test_reports_exactly_the_bad_rows(fake, dm):
    # the fake's "train" is the whole train CSV; image-level drops land in train or val
    got = [
        ("train" if b.split == "val" else b.split, b.id, b.reason.split(":")[0])
        for b in dm.bad_samples
    ]
    assert set(got) == fake.dropped
    assert len(got) == len(set(got))  # each reported once
    assert "image_path" not in {b.id for b in dm.bad_samples}  # the header is not a sample


def test_texts_and_labels(fake, dm):
    records = {r.id: r for s in ("train", "val", "test") for r in dm.dataset(s).records}
    for sample_id, record in records.items():
        assert record.text == fake.texts[sample_id], sample_id
        assert record.label == fake.labels[sample_id], sample_id
    assert records["breakfast_burrito_730"].text == "best breakfast burrito, ever"
    assert records["pizza_742"].text == 'the "best", pizza'
    assert records["croque_madame_741"].text == "caf\u00e9 croque"  # a Latin-1 line
    assert records["apple_pie_740"].text == "crlf row"
    assert records["pizza_739"].text == ""  # empty title: kept
    assert records["pizza_731"].image_path.name == "pizza_731.jpg"  # a .txt name
    assert records["pizza_0"].label == FOOD101_CLASSES.index("pizza")


@pytest.mark.parametrize(
    "line,fields",
    [
        ("a_1.jpg,plain title,a", ("a_1.jpg", "plain title", "a")),
        ("a_1.jpg,one, two, three,a", ("a_1.jpg", "one, two, three", "a")),
        ('a_1.jpg,"x, ""y"" z",a', ("a_1.jpg", 'x, "y" z', "a")),
        ('a_1.jpg,"unclosed, quote,a', ("a_1.jpg", "unclosed, quote", "a")),
        ("a_1.jpg,,a", ("a_1.jpg", "", "a")),
        ("a_1.jpg,two fields", None),
        ("no commas", None),
    ],
)
def test_split_row(line, fields):
    assert split_row(line) == fields


def test_stratified_split_quotas():
    labels = [0] * 6 + [1] * 3 + [2] * 1
    val = stratified_val_indices(labels, 5, seed=0)
    # exact shares 3, 1.5, 0.5: floors 3, 1, 0; the one left goes to the tie with the lower class
    assert Counter(labels[i] for i in val) == {0: 3, 1: 2}
    assert stratified_val_indices(labels, 5, seed=0) == val


def test_val_split_stratified_seeded_recorded(tmp_path):
    fake = write_fake_food101(tmp_path / "food", dirty=False, train_per_class=10)
    n_rows = len(fake.kept["train"])  # 40: 10 per class, 4 classes
    a = setup_all(make(fake.root, val_size=0.3, split_seed=1))
    val = [r.id for r in a.dataset("val").records]
    assert len(val) == 12 and len(a.dataset("train")) == n_rows - 12
    assert Counter(fake.labels[i] for i in val) == {
        fake.labels[f"{c}_0"]: 3
        for c in ("apple_pie", "breakfast_burrito", "croque_madame", "pizza")
    }
    again = setup_all(make(fake.root, val_size=0.3, split_seed=1))
    assert [r.id for r in again.dataset("val").records] == val
    other = setup_all(make(fake.root, val_size=0.3, split_seed=2))
    assert [r.id for r in other.dataset("val").records] != val
    count = setup_all(make(fake.root, val_size=8))
    assert len(count.dataset("val")) == 8
    assert a.hparams["split_seed"] == 1 and a.hparams["val_size"] == 0.3  # saved with the run


def test_val_size_checks(fake):
    for bad in (0, -3, 1.0, 1.5, True):
        with pytest.raises(ValueError, match="val_size"):
            make(fake.root, val_size=bad)
    with pytest.raises(ValueError, match=r"val_size=5000 leaves no training rows.*fraction"):
        make(fake.root, val_size=5000).setup("fit")


def test_expected_sizes_and_source_counts(fake, dm):
    sizes = dm.expected_split_sizes()
    n_val = len(dm.dataset("val"))
    assert sizes == {"train": 67_972 - n_val, "val": n_val, "test": 22_716}
    rows = [line for line in train_csv_lines(fake)[1:] if line.strip()]  # no header, no blanks
    assert dm.source_count("train") + dm.source_count("val") == len(rows)


def test_batch_dict(dm):
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, S, S)
    assert batch["label"].dtype == torch.int64 and batch["label"].shape == (4,)
    assert batch["image_present"].all() and batch["text_present"].all()


def test_writer_is_deterministic(tmp_path, fake):
    again = write_fake_food101(tmp_path / "food101")
    assert again.kept == fake.kept and again.dropped == fake.dropped
    for name in ("texts/train_titles.csv", "images/train/pizza/pizza_0.jpg"):
        assert filecmp.cmp(again.root / name, fake.root / name, shallow=False), name


def test_clean_copy_drops_nothing(tmp_path):
    fake = write_fake_food101(tmp_path / "clean", dirty=False)
    assert fake.dropped == set()
    dm = make(fake.root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no bad-sample warning either
        dm.setup()
    assert dm.bad_samples == []
    assert len(dm.dataset("train")) + len(dm.dataset("val")) == len(fake.kept["train"])


def test_error_mode_one_line(fake):
    with pytest.raises(BadSampleError) as err:
        make(fake.root, on_bad_sample="error").setup("fit")
    msg = str(err.value)
    assert "\n" not in msg and "apple_pie_734" in msg and "unknown label" in msg


def test_missing_files_name_the_file(tmp_path, fake):
    with pytest.raises(DatasetNotFoundError) as err:
        make(tmp_path / "nowhere").setup("fit")
    msg = str(err.value)
    assert "\n" not in msg
    assert "texts/train_titles.csv" in msg and str(tmp_path / "nowhere") in msg
    assert "does not exist" in msg and "images/{train,test}" in msg  # accepted layout
    with pytest.raises(DatasetNotFoundError, match="did you mean root="):
        make(fake.root.parent).setup("fit")
    old = tmp_path / "old"
    (old / "texts_txt").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="older raw-web-page distribution"):
        make(old).setup("fit")
    no_images = tmp_path / "no_images"
    (no_images / "texts").mkdir(parents=True)
    (no_images / "texts" / "test_titles.csv").write_text("pizza_1.jpg,x,pizza\n")
    with pytest.raises(DatasetNotFoundError, match="folder images/test/"):
        make(no_images).setup("test")
