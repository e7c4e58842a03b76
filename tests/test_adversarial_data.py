"""Adversarial data, round three: labelled files whose splits share ids, labels or types they
should not; image paths that are directories, FIFOs or symlink loops; empty, extreme and
animated images; a 100 MB text; ids that differ only by Unicode normalisation. Each case either
works or is reported as a bad sample (or one line with `on_bad_sample: error`), never a hang or a
traceback."""

from __future__ import annotations

import io
import json
import os
import struct
import threading
import tracemalloc
import unicodedata
import zlib
from pathlib import Path

import pytest
from PIL import Image

from data_modules import ImageTextDataModule, LabelledFileDataModule, MMIMDBDataModule
from data_modules.base import BadSampleError
from data_modules.fakes.common import jpeg_bytes
from data_modules.fakes.mmimdb import write_fake_mmimdb
from data_modules.images import load_image, probe_image
from data_modules.records import SampleRecord
from data_modules.text_limits import MAX_TEXT_CHARS
from rlrt.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPLITS = ("train", "val", "test")


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def labelled(folder: Path, splits: dict[str, list[dict]], **kwargs) -> LabelledFileDataModule:
    """A labelled-file module over `splits` (a split left out repeats the train rows)."""
    for split in SPLITS:
        write_jsonl(folder / f"{split}.jsonl", splits.get(split, splits["train"]))
    files = {split: str(folder / f"{split}.jsonl") for split in SPLITS}
    kwargs.setdefault("on_bad_sample", "skip")
    return LabelledFileDataModule(**files, image_size=16, **kwargs)


def quietly(dm: ImageTextDataModule, split: str) -> list[SampleRecord]:
    """The kept records of `split`; the summary warning of dropped samples is expected."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*dropped .* bad sample")
        return dm.dataset(split).records


def reasons(dm: ImageTextDataModule, split: str) -> dict[str, str]:
    return {b.id: b.reason for b in dm.bad_samples if b.split == split}


class ListedModule(ImageTextDataModule):
    """The base's checks over records given in a list (what any dataset reader yields)."""

    dataset_name = "listed"

    def __init__(self, *, root: str, rows: dict[str, list[SampleRecord]], **kwargs) -> None:
        super().__init__(root=root, image_size=16, **kwargs)
        self.rows = rows

    @property
    def class_names(self) -> list[str]:
        return ["a", "b"]

    @property
    def task(self) -> str:
        return "multiclass"

    def read_split(self, split: str):
        yield from self.rows.get(split, [])


def listed(root: Path, records: list[SampleRecord], **kwargs) -> ListedModule:
    return ListedModule(root=str(root), rows={"train": records}, **kwargs)


# ---- 1. labelled files: ids across splits, unseen labels, mixed label types ----------------


def test_a_train_id_repeated_in_val_or_test_is_reported_there(tmp_path):
    train = [{"id": "a", "text": "x", "label": "p"}, {"id": "b", "text": "y", "label": "q"}]
    val = [{"id": "a", "text": "x", "label": "p"}, {"id": "v", "text": "z", "label": "q"}]
    test = [{"id": "b", "text": "other", "label": "q"}, {"id": "v", "text": "z", "label": "q"}]
    dm = labelled(tmp_path, {"train": train, "val": val, "test": test})
    assert [r.id for r in quietly(dm, "train")] == ["a", "b"]
    assert [r.id for r in quietly(dm, "val")] == ["v"]
    assert [r.id for r in quietly(dm, "test")] == ["v"]  # shared with val only: kept
    for split, sample_id, line in (("val", "a", 1), ("test", "b", 2)):
        reason = reasons(dm, split)[sample_id]
        assert reason.startswith("duplicate id: also in the train split")
        assert f"line {line} of {tmp_path / 'train.jsonl'}" in reason
        assert f"line 1 of {tmp_path / f'{split}.jsonl'}" in reason
    # default ids (`<file name>:<line>`) name a place, not a sample: never refused
    plain = [{"text": "x", "label": "p"}, {"text": "y", "label": "q"}]
    dm = labelled(tmp_path / "plain", {"train": plain})
    assert all(len(quietly(dm, split)) == 2 for split in SPLITS) and not dm.bad_samples


def test_a_train_id_in_val_stops_the_run_with_on_bad_sample_error(tmp_path, capsys):
    rows = [{"id": "a", "text": "x", "label": "p"}]
    labelled(tmp_path, {"train": rows})
    files = [f"--data.{split}={tmp_path / f'{split}.jsonl'}" for split in SPLITS]
    config = str(CONFIGS / "data" / "labelled_file.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "inspect-data",
                "--config",
                config,
                "--seed_everything=0",
                *files,
                "--data.on_bad_sample=error",
            ]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert err[0].startswith("rlrt: error: labelled file val sample 'a': duplicate id")
    assert str(tmp_path / "val.jsonl") in err[0] and str(tmp_path / "train.jsonl") in err[0]


def test_a_label_train_never_had_is_reported_with_what_to_do(tmp_path):
    train = [{"id": "a", "text": "x", "label": "cat"}]
    test = [{"id": "t", "text": "y", "label": "dog"}, {"id": "u", "text": "z", "label": "cat"}]
    dm = labelled(tmp_path, {"train": train, "test": test})
    assert [r.id for r in quietly(dm, "test")] == ["u"]
    reason = reasons(dm, "test")["t"]
    assert reason.startswith("unknown label: 'dog' is not in the train file's labels")
    assert "list every class in `classes`" in reason and str(tmp_path / "test.jsonl") in reason
    # what the reason says to do keeps it, with its own output
    dm = labelled(tmp_path / "given", {"train": train, "test": test}, classes=["cat", "dog"])
    assert [(r.id, r.label) for r in quietly(dm, "test")] == [("t", 1), ("u", 0)]


def test_one_label_column_mixing_ints_strings_and_whole_floats(tmp_path):
    rows = [
        {"id": "int", "text": "x", "label": 2},
        {"id": "str", "text": "x", "label": "2"},
        {"id": "float", "text": "x", "label": 2.0},  # pandas writes ints of a column with NaN so
        {"id": "ten", "text": "x", "label": 10.0},
        {"id": "name", "text": "x", "label": "cat"},
        {"id": "half", "text": "x", "label": 2.5},
        {"id": "bool", "text": "x", "label": True},
        {"id": "huge", "text": "x", "label": 1e300},
    ]
    dm = labelled(tmp_path, {"train": rows})
    assert dm.class_names == ["10", "2", "cat"]  # not all integers: sorted as strings
    kept = {r.id: dm.class_names[r.label] for r in quietly(dm, "train")}
    assert kept == {"int": "2", "str": "2", "float": "2", "ten": "10", "name": "cat"}
    bad = reasons(dm, "train")
    assert set(bad) == {"half", "bool", "huge"}
    assert all(r.startswith("invalid label: `label` holds") for r in bad.values())
    assert "a whole number" in bad["half"]
    whole = [{"id": str(i), "text": "x", "label": v} for i, v in enumerate([3, 1.0, "2", 10])]
    assert labelled(tmp_path / "ints", {"train": whole}).class_names == ["1", "2", "3", "10"]


# ---- 2. image paths that are no regular file --------------------------------------------


def odd_paths(folder: Path) -> dict[str, str]:
    """id -> image name of a directory, a FIFO, a symlink loop, a self-link and a good JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "folder.jpg").mkdir()
    os.mkfifo(folder / "pipe.jpg")
    (folder / "loop_a.jpg").symlink_to("loop_b.jpg")
    (folder / "loop_b.jpg").symlink_to("loop_a.jpg")
    (folder / "self.jpg").symlink_to("self.jpg")
    (folder / "good.jpg").write_bytes(jpeg_bytes(8, 8))
    return {
        "dir": "folder.jpg",
        "fifo": "pipe.jpg",
        "loop": "loop_a.jpg",
        "self": "self.jpg",
        "good": "good.jpg",
    }


EXPECTED_KIND = {
    "dir": "unreadable image: a directory, not an image file",
    "fifo": "unreadable image: a FIFO (named pipe), not an image file",
    "loop": "unreadable image: a symlink loop",
    "self": "unreadable image: a symlink loop",
}


def test_a_directory_fifo_or_symlink_loop_image_is_reported(tmp_path):
    names = odd_paths(tmp_path)
    rows = [{"id": i, "image": name, "text": "t", "label": "c"} for i, name in names.items()]
    dm = labelled(tmp_path, {"train": rows})
    assert [r.id for r in quietly(dm, "train")] == ["good"]
    bad = reasons(dm, "train")
    assert set(bad) == set(EXPECTED_KIND)
    for sample_id, kind in EXPECTED_KIND.items():
        assert bad[sample_id].startswith(kind), bad[sample_id]
        assert names[sample_id] in bad[sample_id] and "train.jsonl" in bad[sample_id]


@pytest.mark.parametrize("verify", ["header", "decode"])
def test_the_base_reports_a_directory_fifo_or_symlink_loop_of_any_reader(tmp_path, verify):
    names = odd_paths(tmp_path)
    records = [SampleRecord(i, tmp_path / name, "t", 0) for i, name in names.items()]
    dm = listed(tmp_path, records, verify_images=verify)
    assert [r.id for r in quietly(dm, "train")] == ["good"]
    bad = reasons(dm, "train")
    for sample_id, kind in EXPECTED_KIND.items():
        assert bad[sample_id].startswith(kind) and names[sample_id] in bad[sample_id]
    with pytest.raises(BadSampleError, match=r"^listed train sample 'dir': unreadable image"):
        listed(tmp_path, records, on_bad_sample="error").dataset("train")


@pytest.mark.parametrize("kind", ["dir", "fifo", "loop"])
def test_a_split_file_that_is_a_directory_fifo_or_loop_is_one_line(tmp_path, capsys, kind):
    rows = [{"id": "a", "text": "x", "label": "p"}]
    labelled(tmp_path, {"train": rows})
    val = tmp_path / "val.jsonl"
    val.unlink()
    {"dir": val.mkdir, "fifo": lambda: os.mkfifo(val), "loop": lambda: val.symlink_to(val)}[kind]()
    files = [f"--data.{split}={tmp_path / f'{split}.jsonl'}" for split in SPLITS]
    config = str(CONFIGS / "data" / "labelled_file.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(["inspect-data", "--config", config, "--seed_everything=0", *files])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    what = {"dir": "a directory", "fifo": "a FIFO (named pipe)", "loop": "a symlink loop"}[kind]
    assert err == [
        f"rlrt: error: val file {val} is {what}: give a .jsonl or .csv file (--data.val FILE)"
    ]


def test_mmimdb_json_and_poster_that_are_loops_fifos_or_directories(tmp_path):
    fake = write_fake_mmimdb(tmp_path / "mmimdb", dirty=False, num_movies=5)
    folder = fake.root / "dataset"
    first, second, third = fake.kept["train"][:3]
    (folder / f"{first}.json").unlink()
    (folder / f"{first}.json").symlink_to(f"{first}.json")  # the movie's JSON: a loop
    (folder / f"{second}.jpeg").unlink()
    os.mkfifo(folder / f"{second}.jpeg")  # its poster: a FIFO
    (folder / f"{third}.jpeg").unlink()
    (folder / f"{third}.jpeg").mkdir()  # a directory
    dm = MMIMDBDataModule(root=str(fake.root), image_size=16)
    assert [r.id for r in quietly(dm, "train")] == fake.kept["train"][3:]
    bad = reasons(dm, "train")
    assert bad[first].startswith("unreadable file: a symlink loop")
    assert bad[second].startswith("unreadable image: a FIFO (named pipe), not an image file")
    assert bad[third].startswith("unreadable image: a directory, not an image file")


def call_with_timeout(function, path: Path, seconds: float = 30.0):
    """`function(path)` in a thread; a FIFO it still blocks on after `seconds` is opened for
    writing and closed (its reader then sees the end) so that the test ends, and fails."""
    result: dict[str, object] = {}

    def run() -> None:
        try:
            result["value"] = function(path)
        except Exception as err:  # noqa: BLE001 - what was raised is what the test checks
            result["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    blocked = thread.is_alive()
    if blocked:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(seconds)
    assert not blocked, f"{function.__name__} blocked on the FIFO {path}"
    return result


def test_decoding_a_fifo_never_blocks(tmp_path):
    """A file that passed set-up and became a FIFO before its batch: the decode at load time
    (and the header probe) open it without waiting for a writer, and refuse it."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    loaded = call_with_timeout(lambda p: load_image(p, 16), fifo)
    assert isinstance(loaded.get("error"), OSError) and "not a regular file" in str(loaded["error"])
    probed = call_with_timeout(probe_image, fifo)
    assert probed["value"].startswith("unreadable image: a FIFO (named pipe)")


# ---- 3. empty, extreme and animated images ----------------------------------------------


def png_bytes(width: int, height: int) -> bytes:
    """A PNG whose header says `width x height` (PIL refuses to write an empty image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\x00" * 3 * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def animated(fmt: str) -> bytes:
    """Three frames, red, green, blue (an animated GIF, APNG or WebP)."""
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], lossless=True)
    return buf.getvalue()


@pytest.mark.parametrize("verify", ["header", "decode"])
def test_empty_extreme_and_animated_images(tmp_path, verify):
    files = {
        "empty": ("empty.png", png_bytes(0, 0)),
        "no_width": ("no_width.png", png_bytes(0, 7)),
        "gif": ("anim.gif", animated("GIF")),
        "apng": ("anim.png", animated("PNG")),
        "webp": ("anim.webp", animated("WEBP")),
    }
    tall = Image.new("RGB", (1, 100_000), (0, 0, 0))
    tall.paste((200, 40, 90), (0, 49_990, 1, 50_010))  # around the centre square (one pixel)
    tall.save(tmp_path / "tall.png")
    records = [SampleRecord("tall", tmp_path / "tall.png", "t", 0)]
    for sample_id, (name, data) in files.items():
        (tmp_path / name).write_bytes(data)
        records.append(SampleRecord(sample_id, tmp_path / name, "t", 0))
    dm = listed(tmp_path, records, verify_images=verify)
    kept = quietly(dm, "train")
    assert [r.id for r in kept] == ["tall", "gif", "apng", "webp"]
    bad = reasons(dm, "train")
    assert set(bad) == {"empty", "no_width"}
    assert all(r.startswith("unreadable image: cannot identify image file") for r in bad.values())
    batch = next(iter(dm._loader("train", 8)))
    assert batch["id"] == ["tall", "gif", "apng", "webp"]
    assert batch["image"].shape == (4, 3, 16, 16)
    # the 1-pixel centre square upscaled; the first frame of an animation
    assert (batch["image"][0] == batch["image"][0, :, :1, :1]).all()
    assert batch["image"][0, :, 0, 0].tolist() == [200, 40, 90]
    for row in batch["image"][1:]:
        assert row[0].min() >= 250 and row[1:].max() <= 5, "the first frame is red"


# ---- 4. a 100 MB text --------------------------------------------------------------------


def test_a_100_mb_text_is_cut_at_reading_and_not_held(tmp_path):
    big = tmp_path / "train.jsonl"
    size = 100 * 2**20
    with big.open("w", encoding="utf-8") as out:
        out.write('{"id": "big", "label": "c", "text": "')
        chunk = "word " * (2**20 // 5) + "w" * (2**20 % 5)
        for _ in range(size // len(chunk)):
            out.write(chunk)
        out.write('"}\n{"id": "small", "label": "c", "text": "hi"}\n')
    files = {split: str(big) for split in SPLITS}
    dm = LabelledFileDataModule(**files, image_size=16, classes=["c"], multilabel=False)
    tracemalloc.start()
    try:
        with pytest.warns(UserWarning, match=r"train: cut 1 text\(s\) longer than 100,000"):
            records = dm.dataset("train").records
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [(r.id, len(r.text)) for r in records] == [("big", MAX_TEXT_CHARS), ("small", 2)]
    assert records[0].text == ("word " * (MAX_TEXT_CHARS // 5 + 1))[:MAX_TEXT_CHARS]
    assert held < 5 * 2**20, f"{held / 2**20:.0f} MiB held after reading"
    assert peak < 2.5 * size, f"{peak / 2**20:.0f} MiB at the peak"  # the line and its text


def test_a_csv_field_over_the_csv_limit_is_reported_at_its_line(tmp_path):
    for split in SPLITS:
        with (tmp_path / f"{split}.csv").open("w", encoding="utf-8") as out:
            out.write("id,text,label\na,short,c\n")
            out.write("big," + "x" * 200_000 + ",c\nz,after,c\n")
    files = {split: str(tmp_path / f"{split}.csv") for split in SPLITS}
    dm = LabelledFileDataModule(**files, image_size=16, on_bad_sample="skip")
    assert [r.id for r in quietly(dm, "train")] == ["a", "z"]
    [reason] = reasons(dm, "train").values()
    assert reason.startswith("malformed row: field larger than field limit (131072)")
    assert f"(line 3 of {tmp_path / 'train.csv'})" in reason and ".jsonl" in reason


# ---- 5. ids that differ only by Unicode normalisation ------------------------------------


NFC = unicodedata.normalize("NFC", "café")
NFD = unicodedata.normalize("NFD", "café")


def test_ids_equal_after_unicode_normalisation_are_duplicates_naming_both(tmp_path):
    assert NFC != NFD
    rows = [{"id": NFC, "text": "x", "label": "c"}, {"id": NFD, "text": "y", "label": "c"}]
    dm = labelled(tmp_path, {"train": rows, "val": rows[:1], "test": rows[1:]})
    assert [r.id for r in quietly(dm, "train")] == [NFC]  # kept as written, not normalised
    reason = reasons(dm, "train")[NFD]
    assert reason.startswith("duplicate id: first at line 1") and "line 2 of" in reason
    assert ascii(NFC) in reason and ascii(NFD) in reason and "NFC" in reason
    assert not quietly(dm, "test") and "also in the train split" in reasons(dm, "test")[NFD]
    # any reader: the base refuses them too
    records = [SampleRecord(NFD, None, "x", 0), SampleRecord(NFC, None, "y", 1)]
    base = listed(tmp_path, records)
    assert [r.id for r in quietly(base, "train")] == [NFD]
    reason = reasons(base, "train")[NFC]
    assert reason.startswith("duplicate id:") and ascii(NFC) in reason and ascii(NFD) in reason
