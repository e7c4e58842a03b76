"""Pathological inputs: each bad sample is dropped with a reason naming its file, a bad whole
file is one error line naming it; never a traceback, never a run stopped by one sample."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from data_modules import Food101DataModule, MMIMDBDataModule, SNLIVEDataModule
from data_modules.base import load_image
from data_modules.fakes.common import jpeg_bytes
from data_modules.fakes.raw import (
    mmimdb_split,
    write_image,
    write_raw_food101,
    write_raw_mmimdb,
    write_raw_snli_ve,
)
from data_modules.pairs import PairsDataModule

S = 16
LONG = "7" * 300  # a file name over the 255-byte limit of most file systems
NUL = "12\x0034"
DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads
HUGE = "9" * 5000  # past Python's int-string conversion limit (4300 digits)
GOOD_MOVIE = json.dumps({"plot": ["p"], "genres": ["Drama"]})


def quiet_setup(dm, stage=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm.setup(stage)
    return dm


def dropped(dm, split="train") -> dict[str, str]:
    return {b.id: b.reason for b in dm.bad_samples if b.split == split}


def kept(dm, split="train") -> list[str]:
    return [r.id for r in dm.dataset(split).records]


# ---- MM-IMDB ---------------------------------------------------------------------------------


def test_mmimdb_pathological_ids_and_json_are_dropped(tmp_path):
    movies = {
        "0000001": GOOD_MOVIE,
        LONG: GOOD_MOVIE,
        NUL: GOOD_MOVIE,
        "0000002": DEEP,
        "0000003": '{"plot": ["p"], "genres": ["Drama"], "year": ' + HUGE + "}",
        "0000004": b"\xff\xfe not utf-8",
    }
    root = write_raw_mmimdb(tmp_path / "mm", mmimdb_split(list(movies)), movies)
    dm = quiet_setup(MMIMDBDataModule(root=str(root), image_size=S, batch_size=1), "fit")
    assert kept(dm) == ["0000001"]
    bad = dropped(dm)
    assert set(bad) == set(movies) - {"0000001"}
    assert bad[LONG].startswith("invalid id: File name too long") and LONG in bad[LONG]
    assert bad[NUL].startswith("invalid id: embedded null byte")
    assert bad["0000002"].startswith("malformed json: nested too deeply")
    assert "0000002.json" in bad["0000002"]
    assert "too many digits" in bad["0000003"] and "0000003.json" in bad["0000003"]
    assert "not UTF-8" in bad["0000004"] and "0000004.json" in bad["0000004"]
    # the report is valid JSON even with a NUL in an id
    dm.write_bad_sample_report(tmp_path / "bad.json")
    ids = {s["id"] for s in json.loads((tmp_path / "bad.json").read_text())["samples"]}
    assert NUL in ids


@pytest.mark.parametrize("content", [DEEP, '{"train": [' + HUGE + '], "dev": [], "test": []}'])
def test_mmimdb_undecodable_split_json_is_one_line_naming_it(tmp_path, content):
    root = write_raw_mmimdb(tmp_path / "mm", content, {})
    with pytest.raises(ValueError) as err:
        MMIMDBDataModule(root=str(root)).setup("fit")
    message = str(err.value)
    assert "\n" not in message and str(root / "split.json") in message
    assert len(message) < 300


def test_mmimdb_huge_and_nested_ids_in_split_json(tmp_path):
    split = '{"train": ["0000001", ' + "[" * 500 + "]" * 500 + ", 1e999, null], "
    split += '"dev": [], "test": []}'
    root = write_raw_mmimdb(tmp_path / "mm", split, {"0000001": GOOD_MOVIE})
    dm = quiet_setup(MMIMDBDataModule(root=str(root), image_size=S), "fit")
    assert kept(dm) == ["0000001"]
    assert len(dropped(dm)) == 3 and all(len(i) <= 80 for i in dropped(dm))


def test_empty_train_split_names_split_and_root(tmp_path):
    root = write_raw_mmimdb(tmp_path / "mm", mmimdb_split([LONG, NUL]), {LONG: GOOD_MOVIE})
    dm = quiet_setup(MMIMDBDataModule(root=str(root), image_size=S), "fit")
    with pytest.raises(ValueError) as err:
        dm.train_dataloader()
    message = str(err.value)
    assert "\n" not in message and "train split" in message and str(root) in message
    assert "all 2 of its samples were dropped" in message and "bad_samples.json" in message


def test_empty_train_split_without_samples(tmp_path):
    root = write_raw_mmimdb(tmp_path / "mm", mmimdb_split([]), {})
    dm = quiet_setup(MMIMDBDataModule(root=str(root), image_size=S), "fit")
    with pytest.raises(ValueError, match="train split under .* is empty: no samples were found"):
        dm.train_dataloader()


# ---- SNLI-VE ---------------------------------------------------------------------------------


def snli_row(image_id, pair_id="p", **extra) -> bytes:
    row = {"Flikr30kID": image_id, "gold_label": "neutral", "sentence2": "h", "pairID": pair_id}
    return json.dumps({**row, **extra}).encode()


def test_snli_ve_pathological_rows_are_dropped(tmp_path):
    lines = [
        snli_row("100", "ok"),
        snli_row(LONG, "long-image"),
        snli_row(NUL, "nul-image"),
        snli_row("100", "x" * 300),  # a long pair id is only an id: kept
        DEEP.encode(),
        b'{"Flikr30kID": ' + HUGE.encode() + b"}",
        b"\xff\xfe",
        snli_row("../../etc", "escape"),
    ]
    root = write_raw_snli_ve(tmp_path / "snli", lines, ["100", LONG])
    dm = quiet_setup(SNLIVEDataModule(root=str(root), image_size=S), "fit")
    assert kept(dm) == ["ok", "x" * 300]
    bad = dropped(dm)
    assert len(bad) == len(lines) - 2
    assert bad["long-image"].startswith("invalid image path: File name too long")
    assert bad["nul-image"].startswith("invalid image id: embedded null byte")
    assert f"Flikr30kID={NUL!r} at snli_ve_train.jsonl:3" in bad["nul-image"]
    assert bad["snli_ve_train.jsonl:5"] == (
        "malformed json row: nested too deeply at snli_ve_train.jsonl:5"
    )
    assert "too many digits" in bad["snli_ve_train.jsonl:6"]
    assert "not UTF-8" in bad["snli_ve_train.jsonl:7"]
    assert bad["escape"].startswith("outside dataset root")


# ---- UPMC-Food101 ----------------------------------------------------------------------------


def test_food101_pathological_rows_are_dropped(tmp_path):
    long_name = f"pizza_{'1' * 300}.jpg"
    lines = [
        b"pizza_1.jpg,a pizza,pizza",
        b"pizza_2.jpg,another pizza,pizza",
        f"{long_name},too long,pizza".encode(),
        b"pizza_3\x00.jpg,nul in name,pizza",
        b"../pizza/pizza_4\x00.jpg,nul and separator,pizza",
        b"pizza_5.jpg,nul in class,piz\x00za/x",
    ]
    root = write_raw_food101(
        tmp_path / "food", lines, [("pizza", "pizza_1.jpg"), ("pizza", "pizza_2.jpg")]
    )
    dm = Food101DataModule(root=str(root), image_size=S, val_size=1)
    quiet_setup(dm, "fit")
    assert sorted(kept(dm) + kept(dm, "val")) == ["pizza_1", "pizza_2"]
    bad = dropped(dm) | dropped(dm, "val")  # the long name may be drawn into val
    assert len(bad) == 4
    assert bad[f"pizza_{'1' * 300}"].startswith("invalid image path: File name too long")
    assert all("train_titles.csv" in r or "images/train" in r for r in bad.values())


def test_food101_csv_without_valid_rows_names_the_csv(tmp_path):
    root = write_raw_food101(tmp_path / "food", [b"pizza_1.jpg,a pizza,not_a_class"], [])
    dm = quiet_setup(Food101DataModule(root=str(root), image_size=S), "fit")  # no val_size advice
    assert dropped(dm) and not kept(dm) and not kept(dm, "val")
    with pytest.raises(ValueError) as err:
        dm.train_dataloader()
    message = str(err.value)
    assert "\n" not in message and "val_size" not in message
    assert f"the CSV {root / 'texts' / 'train_titles.csv'} has no valid rows" in message
    assert "1 refused; the first: unknown label" in message


# ---- pairs (rlrt predict) ----------------------------------------------------------------------


def pairs_module(path, **kwargs) -> PairsDataModule:
    dm = PairsDataModule(path=str(path), on_bad_sample="skip", image_size=S, **kwargs)
    dm.__dict__["_classes"] = {"class_names": ["a", "b"], "num_classes": 2, "task": "multiclass"}
    return dm


def test_pairs_pathological_rows_are_dropped(tmp_path):
    write_image(tmp_path / "ok.jpg")
    lines = [
        json.dumps({"image": "ok.jpg", "text": "fine"}),
        json.dumps({"image": LONG + ".jpg", "text": "t"}),
        json.dumps({"image": NUL + ".jpg", "text": "t"}),
        json.dumps({"image": "ok.jpg", "id": LONG}),  # a long id is only an id: kept
        DEEP,
        '{"text": ' + HUGE + "}",
        json.dumps({"image": ["a", "list"], "text": "t"}),
        json.dumps({"text": "t", "id": {"a": "dict"}}),
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes("\n".join(lines).encode() + b"\n\xff\xfe not utf-8\n")
    dm = pairs_module(path)
    quiet_setup(dm, "predict")
    assert kept(dm, "predict") == ["1", LONG]
    bad = dropped(dm, "predict")
    assert len(bad) == 7
    assert bad["2"].startswith("invalid image path: File name too long")
    assert bad["3"].startswith("missing image")  # a NUL: no such file
    assert bad["5"] == f"malformed row: nested too deeply (line 5 of {path})"
    assert "too many digits" in bad["6"]
    assert bad["7"].startswith("invalid image: not a path string")
    assert bad["8"].startswith("invalid id")
    assert bad["9"] == f"malformed row: not UTF-8 text (byte 0) (line 9 of {path})"
    batches = list(dm.predict_dataloader())
    assert [i for b in batches for i in b["id"]] == ["1", LONG]


def test_pairs_csv_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b"image,text\n,caf\xe9\n")
    with pytest.raises(ValueError) as err:
        quiet_setup(pairs_module(path), "predict")
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    assert "not UTF-8" in str(err.value)


def test_pairs_csv_oversized_field_is_one_dropped_row(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('image,text\n,"' + "x" * 200_000 + '"\n,short\n')
    dm = quiet_setup(pairs_module(path), "predict")
    assert kept(dm, "predict") == ["3"]
    assert ["field larger than field limit" in r for r in dropped(dm, "predict").values()] == [True]


def test_pairs_file_name_too_long_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="File name too long"):
        quiet_setup(pairs_module(tmp_path / (LONG + ".jsonl")), "predict")


# ---- a cut JPEG closed with an end-of-image marker ----------------------------------------------


def half_jpeg_with_eoi() -> bytes:
    data = jpeg_bytes(64, 96, seed=3)
    return data[: len(data) // 2] + b"\xff\xd9"


def test_cut_jpeg_with_end_marker_is_refused(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(half_jpeg_with_eoi())
    with pytest.raises(OSError, match="truncated"):
        load_image(path, S)
    good = tmp_path / "good.jpg"
    good.write_bytes(jpeg_bytes(64, 96, seed=3))
    assert load_image(good, S).shape == (3, S, S)
    grey = tmp_path / "grey.jpg"  # a uniformly grey picture is a picture
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, "JPEG")
    grey.write_bytes(buf.getvalue())
    assert (load_image(grey, S) == 128).all()


@pytest.mark.parametrize("verify", ["header", "decode"])
def test_cut_jpeg_sample_is_dropped(tmp_path, verify):
    movies = {"0000001": GOOD_MOVIE, "0000002": GOOD_MOVIE}
    root = write_raw_mmimdb(tmp_path / "mm", mmimdb_split(list(movies)), movies)
    (root / "dataset" / "0000002.jpeg").write_bytes(half_jpeg_with_eoi())
    dm = MMIMDBDataModule(root=str(root), image_size=S, batch_size=2, verify_images=verify)
    quiet_setup(dm, "fit")
    if verify == "decode":  # refused at setup
        assert kept(dm) == ["0000001"]
        assert dropped(dm)["0000002"].startswith("unreadable image: truncated")
    else:  # passes the header probe, dropped from its batch when decoded
        batch = next(iter(dm.val_dataloader())) if kept(dm, "val") else None
        assert batch is None
        samples = dm.dataset("train").__getitems__([0, 1])
        assert samples[0]["bad_reason"] is None
        assert samples[1]["bad_reason"].startswith("unreadable image: truncated")
