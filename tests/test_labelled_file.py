"""`LabelledFileDataModule`: a user's own JSONL / CSV files, read, checked and run end to end
(`rlrt cache`, `fit`, `test`, `robustness`) through the CLI with the tiny encoders."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from data_modules import DatasetNotFoundError, LabelledFileDataModule
from data_modules.fakes.common import jpeg_bytes, truncated
from data_modules.fakes.labelled_file import CLASSES, write_labelled_example
from data_modules.fakes.labelled_file import main as write_example_cli
from rlrt.cli import main
from rlrt.reports.robustness import COLUMNS
from rlrt.tiny_encoders import tiny_encoder_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPLITS = ("train", "val", "test")


def module(folder: Path, suffix: str = "jsonl", **kwargs) -> LabelledFileDataModule:
    files = {split: str(folder / f"{split}.{suffix}") for split in SPLITS}
    return LabelledFileDataModule(**files, image_size=16, on_bad_sample="skip", **kwargs)


def as_tuples(dm: LabelledFileDataModule, split: str) -> list[tuple]:
    """Each record as (id, image path relative to the root or None, text, label, has text)."""
    return [
        (
            r.id,
            None if r.image_path is None else r.image_path.relative_to(dm.root).as_posix(),
            r.text,
            r.label,
            r.text_present,
        )
        for r in dm.dataset(split).records
    ]


def expected_tuples(rows: list[dict], classes: list[str], multilabel: bool) -> list[tuple]:
    """What the reader must make of the rows the example writer wrote (the reference)."""
    index = {name: i for i, name in enumerate(classes)}
    out = []
    for row in rows:
        if row["image"] is None and row["text"] is None:
            continue  # no sample (the writer never writes one)
        label = sorted(index[c] for c in row["labels"]) if multilabel else index[row["label"]]
        out.append((row["id"], row["image"], row["text"] or "", label, row["text"] is not None))
    return out


# ---- reading -------------------------------------------------------------------------------


@pytest.mark.parametrize("multilabel", [False, True])
def test_csv_and_jsonl_give_the_same_records(tmp_path, multilabel):
    written = {}
    for suffix in ("jsonl", "csv"):
        written[suffix] = write_labelled_example(
            tmp_path / suffix, file_format=suffix, multilabel=multilabel, seed=3
        )
    assert written["jsonl"] == written["csv"]
    jsonl, csv_ = module(tmp_path / "jsonl"), module(tmp_path / "csv", suffix="csv")
    assert jsonl.task == csv_.task == ("multilabel" if multilabel else "multiclass")
    assert jsonl.class_names == csv_.class_names == sorted(CLASSES)
    for split in SPLITS:
        records = as_tuples(jsonl, split)
        assert records == as_tuples(csv_, split)
        assert records == expected_tuples(written["jsonl"][split], sorted(CLASSES), multilabel)
        assert any(r[1] is None for r in records) and any(not r[4] for r in records)
    assert jsonl.bad_samples == csv_.bad_samples == []
    if multilabel:  # some rows carry two classes
        assert any(len(r[3]) == 2 for r in as_tuples(jsonl, "train"))


def test_a_batch_has_the_shapes_of_the_task(tmp_path):
    write_labelled_example(tmp_path / "ml", multilabel=True)
    dm = module(tmp_path / "ml", batch_size=8)
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (8, 3, 16, 16) and batch["label"].shape == (8, 4)
    records = dm.dataset("val").records[:8]
    for row, record in zip(batch["label"].tolist(), records):
        assert [i for i, v in enumerate(row) if v == 1.0] == record.label
    assert batch["image_present"].tolist() == [r.image_path is not None for r in records]


def write_jsonl(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def image(folder: Path, name: str, data: bytes | None = None) -> str:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "img" / name).write_bytes(data or jpeg_bytes(8, 8, colour=(9, 9, 9)))
    return f"img/{name}"


def small_dataset(folder: Path, train: list, val: list | None = None) -> None:
    pic = image(folder, "ok.jpg")
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "val.jsonl", val or [{"image": pic, "text": "v", "label": "b"}])
    write_jsonl(folder / "test.jsonl", [{"image": pic, "text": "t", "label": "a"}])


def test_classes_from_the_file_or_given(tmp_path):
    pic = image(tmp_path, "ok.jpg")
    train = [
        {"image": pic, "text": "x", "label": "c"},
        {"image": pic, "text": "x", "label": "a"},
        {"image": pic, "text": "x", "label": "c"},
        {"image": pic, "text": "x", "label": 7},  # a JSON integer: the class "7"
        {"image": pic, "text": "x", "label": 1.5},  # refused, and no class
    ]
    small_dataset(tmp_path, train, val=[{"image": pic, "text": "v", "label": "b"}])
    found = module(tmp_path)
    assert found.task == "multiclass" and found.class_names == ["7", "a", "c"]
    with pytest.warns(UserWarning, match="dropped 1 bad sample"):
        kept = found.dataset("train").records
    assert [r.label for r in kept] == [2, 1, 2, 0]
    with pytest.warns(UserWarning, match="val: dropped 1 bad sample"):
        assert len(found.dataset("val")) == 0  # "b" is no class of the train file
    assert [b.reason.split(":")[0] for b in found.bad_samples] == [
        "invalid label",
        "unknown label",
    ]
    assert "line 1 of" in found.bad_samples[1].reason

    given = module(tmp_path, classes=["c", "b", "a", "7"], multilabel=False)
    with pytest.warns(UserWarning, match="dropped 1 bad sample"):
        given.dataset("train")
    assert [r.label for r in given.dataset("train").records] == [0, 2, 0, 3]
    assert [r.label for r in given.dataset("val").records] == [1]

    narrow = module(tmp_path, classes=["a"])
    with pytest.warns(UserWarning, match="dropped 4 bad sample"):
        narrow.dataset("train")
    assert [r.label for r in narrow.dataset("train").records] == [0]
    unknown = [b for b in narrow.bad_samples if b.reason.startswith("unknown label")]
    assert [b.id for b in unknown] == ["train.jsonl:1", "train.jsonl:3", "train.jsonl:4"]
    assert all("is not in classes" in b.reason for b in unknown)


def test_integer_classes_sort_as_numbers(tmp_path):
    pic = image(tmp_path, "ok.jpg")
    small_dataset(tmp_path, [{"image": pic, "label": v} for v in (10, 2, "1", 2, "01")])
    assert module(tmp_path).class_names == ["01", "1", "2", "10"]


def test_the_task_from_the_label_key_or_given(tmp_path):
    pic = image(tmp_path, "ok.jpg")
    small_dataset(
        tmp_path, [{"image": pic, "labels": ["b", "a", "b"]}, {"text": "x", "labels": []}]
    )
    dm = module(tmp_path)
    assert dm.task == "multilabel" and dm.class_names == ["a", "b"]
    assert [r.label for r in dm.dataset("train").records] == [[0, 1], []]
    write_jsonl(tmp_path / "train.jsonl", [{"image": pic}])
    with pytest.raises(ValueError, match="neither a `label` nor a `labels` key; set multilabel"):
        _ = module(tmp_path).task
    write_jsonl(
        tmp_path / "train.jsonl", [{"image": pic, "label": "a"}, {"text": "b", "labels": []}]
    )
    with pytest.raises(ValueError, match="both a `label` and a `labels` key; set multilabel"):
        _ = module(tmp_path).task
    assert module(tmp_path, multilabel=False).class_names == ["a"]


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    pic = image(tmp_path, "ok.jpg")
    cut = image(tmp_path, "cut.jpg", truncated(jpeg_bytes(64, 64)))
    outside = tmp_path.parent / f"{tmp_path.name}-outside.jpg"
    outside.write_bytes(jpeg_bytes(8, 8))
    (tmp_path / "img" / "link.jpg").symlink_to(outside)
    rows = [
        {"id": "good", "image": pic, "text": "fine", "label": "a"},  # 1
        "{not json",  # 2
        "[1, 2]",  # 3
        {"id": "nolabel", "image": pic, "text": "x"},  # 4
        {"id": "listlabel", "image": pic, "text": "x", "label": ["a"]},  # 5
        {"id": "nothing", "label": "a"},  # 6
        {"id": "badtext", "image": pic, "text": 3, "label": "a"},  # 7
        {"id": "badimage", "image": 5, "text": "x", "label": "a"},  # 8
        {"id": "gone", "image": "img/gone.jpg", "text": "x", "label": "a"},  # 9
        {"id": "up", "image": f"../{outside.name}", "text": "x", "label": "a"},  # 10
        {"id": "absolute", "image": str(outside), "text": "x", "label": "a"},  # 11
        {"id": "link", "image": "img/link.jpg", "text": "x", "label": "a"},  # 12
        {"id": {"a": 1}, "image": pic, "text": "x", "label": "a"},  # 13
        {"id": "good", "image": pic, "text": "again", "label": "a"},  # 14
        {"image": "img/nul\u0000.jpg", "text": "x", "label": "a"},  # 15
        {"image": cut, "text": "x", "label": "a"},  # 16: found by the base's image probe
        "",  # 17: a blank line is no row
        {"image": pic, "text": "", "label": "a"},  # 18: an empty text is kept
    ]
    small_dataset(tmp_path, rows)
    (tmp_path / "train.jsonl").write_bytes(
        (tmp_path / "train.jsonl").read_bytes() + b'{"text": "\xff", "label": "a"}\n'  # 19
    )
    dm = module(tmp_path)
    expected = {
        "train.jsonl:2": (2, "malformed row"),
        "train.jsonl:3": (3, "malformed row"),
        "nolabel": (4, "missing label"),
        "listlabel": (5, "invalid label"),
        "nothing": (6, "empty row"),
        "badtext": (7, "invalid text"),
        "badimage": (8, "invalid image"),
        "gone": (9, "missing image"),
        "up": (10, "outside dataset root"),
        "absolute": (11, "outside dataset root"),
        "link": (12, "outside dataset root"),
        "train.jsonl:13": (13, "invalid id"),
        "train.jsonl:15": (15, "invalid image path"),
        "train.jsonl:16": (None, "unreadable image"),
        "train.jsonl:19": (19, "malformed row"),
    }
    with pytest.warns(UserWarning, match="dropped 16 bad sample"):
        dm.dataset("train")
    assert [r.id for r in dm.dataset("train").records] == ["good", "train.jsonl:18"]
    assert dm.dataset("train").records[1].text == "" and dm.dataset("train").records[1].text_present
    got = {b.id: b.reason for b in dm.bad_samples if b.split == "train" and b.id != "good"}
    assert set(got) == set(expected)
    for sample_id, (line, kind) in expected.items():
        assert got[sample_id].startswith(kind + ":"), got[sample_id]
        if line is not None:
            assert got[sample_id].endswith(f"(line {line} of {tmp_path / 'train.jsonl'})")
    duplicate = [b.reason for b in dm.bad_samples if b.id == "good"]
    assert duplicate == [f"duplicate id: first at line 1 (line 14 of {tmp_path / 'train.jsonl'})"]
    assert not any(str(outside) in str(r.image_path) for r in dm.dataset("train").records)


def test_csv_rows_and_headers(tmp_path):
    pic = image(tmp_path, "ok.jpg")
    lines = [
        "image,text,labels",
        f"{pic},two,a|b",
        f"{pic},none,",  # an empty cell: no class
        f"{pic},extra,a,surplus",
        f"{pic},,b| a |",  # no text; spaces and an empty part ignored
    ]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split in ("val", "test"):
        (tmp_path / f"{split}.csv").write_text(f"image,text,labels\n{pic},x,a\n")
    dm = module(tmp_path, suffix="csv")
    assert dm.task == "multilabel" and dm.class_names == ["a", "b"]
    with pytest.warns(UserWarning, match="dropped 1 bad sample"):
        records = dm.dataset("train").records
    assert [(r.id, r.label, r.text_present) for r in records] == [
        ("train.csv:2", [0, 1], True),
        ("train.csv:3", [], True),
        ("train.csv:5", [0, 1], False),
    ]
    assert [(b.id, b.reason) for b in dm.bad_samples] == [
        (
            "train.csv:4",
            f"malformed row: more fields than the CSV header names (line 4 of "
            f"{tmp_path / 'train.csv'})",
        )
    ]

    (tmp_path / "val.csv").write_text(f"image,text,label\n{pic},x,a\n")
    with pytest.raises(ValueError, match=r"val.csv: the CSV header must name a `labels` column"):
        module(tmp_path, suffix="csv").dataset("val")
    (tmp_path / "val.csv").write_bytes(b"image,text,labels\nimg/ok.jpg,\xff,a\n")
    with pytest.raises(ValueError, match=r"val.csv: not UTF-8 text"):
        module(tmp_path, suffix="csv").dataset("val")
    # a CSV saved by Excel (UTF-8 with a byte-order mark) reads as one without
    (tmp_path / "val.csv").write_text(f"\ufeffimage,text,labels\n{pic},x,a\n", encoding="utf-8")
    bom = module(tmp_path, suffix="csv").dataset("val").records
    assert [(r.image_path, r.text, r.label) for r in bom] == [(tmp_path / pic, "x", [0])]


def test_bad_files_are_one_clear_line(tmp_path):
    with pytest.raises(DatasetNotFoundError) as missing:
        _ = module(tmp_path / "nowhere").class_names
    message = str(missing.value)
    assert "train file not found; looked for" in message and "does not exist" in message
    assert "--data.train FILE" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match=r"the train file must be a .jsonl or a .csv file"):
        _ = module(tmp_path, suffix="txt").class_names
    (tmp_path / "a").mkdir()
    with pytest.raises(ValueError, match="different folders .* give image_root"):
        LabelledFileDataModule(
            train=str(tmp_path / "a" / "t.jsonl"),
            val=str(tmp_path / "v.jsonl"),
            test=str(tmp_path / "t.jsonl"),
        )
    with pytest.raises(ValueError, match=r"classes lists \['a'\] more than once"):
        module(tmp_path, classes=["a", "b", "a"])


def test_an_image_root_elsewhere(tmp_path):
    pic = image(tmp_path / "pictures", "ok.jpg")
    write_jsonl(tmp_path / "lists" / "train.jsonl", [{"image": pic, "text": "x", "label": "a"}])
    for split in ("val", "test"):
        write_jsonl(tmp_path / "lists" / f"{split}.jsonl", [{"image": pic, "label": "a"}])
    dm = module(tmp_path / "lists", image_root=str(tmp_path / "pictures"))
    assert dm.dataset("test").records[0].image_path == tmp_path / "pictures" / pic
    assert dm.bad_samples == []


def test_the_example_writer_command(tmp_path, capsys):
    write_example_cli([str(tmp_path / "ex"), "--format", "csv"])
    assert "train 48, val 16, test 16 rows" in capsys.readouterr().out
    with_image = [
        row["image"]
        for split in SPLITS
        for row in csv.DictReader(
            (tmp_path / "ex" / f"{split}.csv").read_text(encoding="utf-8").splitlines()
        )
        if row["image"]
    ]
    assert sorted(p.name for p in (tmp_path / "ex" / "images").iterdir()) == sorted(
        Path(i).name for i in with_image
    )
    with pytest.raises(SystemExit):  # an existing, non-empty folder is refused
        write_example_cli([str(tmp_path / "ex")])


# ---- end to end --------------------------------------------------------------------------------


def test_cache_fit_test_and_robustness_on_own_data(
    tmp_path, monkeypatch, tiny_vit_config, tiny_llama_dir
):
    monkeypatch.chdir(tmp_path)  # runs/ lands here
    written = write_labelled_example(tmp_path / "data", sizes={"train": 32, "val": 12, "test": 12})
    train = tmp_path / "data" / "train.jsonl"
    train.write_text(train.read_text() + '{"id": "bad", "text": "no label"}\n')  # one bad row
    cache = tmp_path / "cache"
    args = [
        "--config",
        str(CONFIGS / "trainer" / "default.yaml"),
        "--config",
        str(CONFIGS / "data" / "labelled_file.yaml"),
        "--config",
        str(CONFIGS / "model" / "demo.yaml"),
        *(f"--data.{s}={tmp_path / 'data' / f'{s}.jsonl'}" for s in SPLITS),
        "--data.batch_size=8",
        "--data.num_workers=0",
        f"--data.feature_cache={cache}",
        *tiny_encoder_args(tiny_vit_config, tiny_llama_dir),
        "--trainer.max_epochs=2",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
    ]
    with pytest.warns(UserWarning, match="train: dropped 1 bad sample"):
        main(["cache", *args])
    manifest = json.loads((cache / "test" / "manifest.json").read_text())
    assert manifest["num_samples"] == len(written["test"])

    with pytest.warns(UserWarning, match="train: dropped 1 bad sample"):
        main(["fit", *args])
    run = tmp_path / "runs" / "rlrt" / "version_0"
    report = json.loads((run / "bad_samples.json").read_text())
    assert report["kept"] == {"train": 32, "val": 12}
    assert [(s["id"], s["reason"].split(":")[0]) for s in report["samples"]] == [
        ("bad", "missing label")
    ]
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()

    main(["test", *args, "--ckpt_path", str(checkpoint)])
    tested = tmp_path / "runs" / "rlrt" / "version_1"
    metrics = json.loads((tested / "metrics.json").read_text())
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert json.loads((tested / "bad_samples.json").read_text())["kept"] == {"test": 12}

    out = tmp_path / "robust"
    main(
        [
            "robustness",
            "--ckpt_path",
            str(checkpoint),
            "--output",
            str(out),
            "--rates",
            "0,1",
            "--types",
            "image,text",
            "--noise_levels",
            "0,10",
            "--noise_modalities",
            "image",
        ]
    )
    frame = pd.read_csv(out / "robustness.csv", keep_default_na=False)
    assert list(frame.columns) == COLUMNS
    scores = frame[~frame["metric"].str.startswith("cca_corr")]  # and its noise floor
    points = 2 * 2 + 2  # (image, text) x (0, 1) missing, image noise at (0, 10)
    assert len(scores) == points
    assert set(scores["metric"]) == {"acc"}  # multiclass
    assert scores["value"].between(0, 1).all()
    # the clean setting from the cache is what `rlrt test` wrote (same checkpoint, same cache)
    clean = scores[
        (scores["perturbation"] == "missing")
        & (scores["missing_rate"] == 0)
        & (scores["metric"] == "acc")
    ]
    assert clean["value"].tolist() == [pytest.approx(metrics["test/acc"], abs=1e-6)] * 2
    assert set(frame[frame["perturbation"] == "noise"]["features"]) == {"online"}
