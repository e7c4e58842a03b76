"""Fuzzed records through every reader: each written record is kept or dropped with a one-line
reason (kept + dropped == written), and nothing raises."""

from __future__ import annotations

import csv
import io
import json
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_modules import Food101DataModule, MMIMDBDataModule, SNLIVEDataModule
from data_modules.fakes.raw import (
    mmimdb_split,
    write_image,
    write_raw_food101,
    write_raw_mmimdb,
    write_raw_snli_ve,
)
from data_modules.pairs import PairsDataModule

S = 8
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "9" * 5000

# ids: short and long text, path pieces, NUL, unicode
ids = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="ab7/.\\\x00é", max_size=12),
    st.integers(min_value=0, max_value=10**6).map(str),
    st.sampled_from(
        ["..", ".", "a/b", "../x", "../../x", "/abs", "a\x00b", "", " ", "~", "x" * 300]
    ),
    st.text(alphabet="é字z", min_size=90, max_size=130),  # over 255 bytes in UTF-8
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
# raw text that is not (good) JSON: garbage, too deep, too long an integer
bad_json_text = st.one_of(
    st.text(max_size=20),
    st.sampled_from([DEEP, HUGE_INT, '{"x": ' + HUGE_INT + "}", "[1, 2", "null", '"s"', "{}"]),
)
garbage_lines = st.one_of(
    bad_json_text.map(lambda t: t.encode("utf-8")),
    st.binary(max_size=20),
    json_values.map(lambda v: json.dumps(v).encode()),
)


def fresh_dir(factory) -> Path:
    return Path(tempfile.mkdtemp(dir=factory.getbasetemp()))


def quiet(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call()


def counts(dm, splits) -> tuple[int, int]:
    kept = sum(len(dm.dataset(s)) for s in splits)
    dropped = [b for b in dm.bad_samples if b.split in splits]
    for bad in dropped:
        assert isinstance(bad.id, str) and isinstance(bad.reason, str)
        assert "\n" not in bad.reason and ": " in bad.reason, bad.reason
        assert len(bad.reason) <= 2000
    return kept, len(dropped)


def nonblank(lines: list[bytes]) -> list[bytes]:
    """The physical lines of `lines` written one per line that are not only (ASCII)
    whitespace: the samples of a JSONL reader."""
    return [line for line in b"\n".join(lines).split(b"\n") if line.strip()]


def nonblank_text(lines: list[bytes]) -> list[str]:
    """The same for the Food101 CSV, whose lines are text (UTF-8, else Latin-1): a line of
    Unicode whitespace (Latin-1 NEL, say) is blank there too."""
    out = []
    for line in b"\n".join(lines).split(b"\n"):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("latin-1")
        if text.strip():
            out.append(text)
    return out


# ---- MM-IMDB ---------------------------------------------------------------------------------

movie_json = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "genres": st.one_of(
                st.lists(st.sampled_from(["Drama", "Comedy", "News", ""]), max_size=3), json_values
            ),
            "plot": st.one_of(st.text(max_size=10), st.lists(st.text(max_size=5)), json_values),
        },
    ).map(json.dumps),
    bad_json_text,
)


@FUZZ
@given(
    movies=st.lists(st.tuples(st.one_of(ids, json_values), movie_json, st.booleans()), max_size=8)
)
def test_mmimdb_fuzz(tmp_path_factory, movies):
    root = fresh_dir(tmp_path_factory) / "mm"
    split_ids = [movie_id for movie_id, _, _ in movies]
    files = {m: text for m, text, _ in movies if isinstance(m, str)}
    write_raw_mmimdb(root, mmimdb_split(split_ids), files)
    for movie_id, _, has_image in movies:  # some posters missing
        if isinstance(movie_id, str) and not has_image:
            try:
                (root / "dataset" / f"{movie_id}.jpeg").unlink(missing_ok=True)
            except (OSError, ValueError):
                pass
    dm = MMIMDBDataModule(root=str(root), image_size=S, batch_size=2)
    quiet(lambda: dm.setup("fit"))
    kept, dropped = counts(dm, ("train",))
    assert kept + dropped == len(movies)
    dm.write_bad_sample_report(root.parent / "bad.json")


# ---- SNLI-VE ---------------------------------------------------------------------------------

snli_rows = st.fixed_dictionaries(
    {},
    optional={
        "Flikr30kID": st.one_of(ids, st.sampled_from(["100", "100.jpg", 100]), json_values),
        "Flickr30K_ID": st.one_of(ids, json_values),
        "gold_label": st.one_of(st.sampled_from(["entailment", "neutral", "-", ""]), json_values),
        "sentence2": st.one_of(st.text(max_size=10), json_values),
        "pairID": st.one_of(ids, json_values),
    },
).map(lambda row: json.dumps(row).encode())


@FUZZ
@given(
    lines=st.lists(st.one_of(snli_rows, garbage_lines), max_size=10),
    images=st.lists(ids, max_size=3),
)
def test_snli_ve_fuzz(tmp_path_factory, lines, images):
    root = write_raw_snli_ve(fresh_dir(tmp_path_factory) / "snli", lines, ["100", *images])
    dm = SNLIVEDataModule(root=str(root), image_size=S)
    quiet(lambda: dm.setup("fit"))
    kept, dropped = counts(dm, ("train",))
    assert kept + dropped == len(nonblank(lines))


# ---- UPMC-Food101 ----------------------------------------------------------------------------

food_fields = st.one_of(
    st.tuples(
        st.one_of(
            st.builds(lambda n: f"pizza_{n}.jpg", st.integers(0, 30)),
            st.builds(lambda n: f"sushi_{n}.txt", st.integers(0, 3)),
            st.builds(lambda n: f"pizza_{'1' * n}.jpg", st.integers(250, 300)),
            ids,
        ),
        st.text(alphabet="ab ,\"'\x00é", max_size=12),
        st.one_of(st.sampled_from(["pizza", "sushi", "", "no_class", "pizza/x", "../pizza"]), ids),
    ).map(lambda f: ",".join(f).encode("utf-8")),
    st.binary(max_size=20),  # wrong column counts, stray bytes, Latin-1
    st.text(max_size=20).map(lambda t: t.encode("utf-8")),
)
GOOD_FOOD = [b"pizza_100.jpg,a pizza,pizza", b"pizza_101.jpg,another,pizza"]


@FUZZ
@given(lines=st.lists(food_fields, max_size=10))
def test_food101_fuzz(tmp_path_factory, lines):
    lines = [line.replace(b"\r", b"") for line in lines]  # "\r" ends a line for splitlines tests
    all_lines = GOOD_FOOD + lines  # two valid rows first: a val split and no header detection
    images = [("pizza", f"pizza_{n}.jpg") for n in (*range(0, 30, 2), 100, 101)]
    root = write_raw_food101(fresh_dir(tmp_path_factory) / "food", all_lines, images)
    dm = Food101DataModule(root=str(root), image_size=S, val_size=0.2)
    quiet(lambda: dm.setup("fit"))
    kept, dropped = counts(dm, ("train", "val"))
    assert kept + dropped == len(nonblank_text(all_lines))
    assert kept >= 2


# ---- pairs (rlrt predict) ----------------------------------------------------------------------

pair_objects = st.fixed_dictionaries(
    {},
    optional={
        "image": st.one_of(st.just("ok.jpg"), ids, json_values),
        "text": st.one_of(st.text(max_size=10), json_values),
        "id": st.one_of(ids, json_values),
    },
).map(lambda row: json.dumps(row).encode())


def pairs_module(path: Path) -> PairsDataModule:
    dm = PairsDataModule(path=str(path), on_bad_sample="skip", image_size=S)
    dm.__dict__["_classes"] = {"class_names": ["a", "b"], "num_classes": 2, "task": "multiclass"}
    return dm


@FUZZ
@given(lines=st.lists(st.one_of(pair_objects, garbage_lines), max_size=10))
def test_pairs_jsonl_fuzz(tmp_path_factory, lines):
    folder = fresh_dir(tmp_path_factory)
    write_image(folder / "ok.jpg")
    path = folder / "pairs.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    dm = pairs_module(path)
    quiet(lambda: dm.setup("predict"))
    kept, dropped = counts(dm, ("predict",))
    assert kept + dropped == len(nonblank(lines))


csv_cells = st.one_of(
    st.just("ok.jpg"), st.just(""), ids, st.text(alphabet='a,"\n\r é', max_size=8)
)


@FUZZ
@given(rows=st.lists(st.lists(csv_cells, min_size=1, max_size=5), max_size=8))
def test_pairs_csv_fuzz(tmp_path_factory, rows):
    folder = fresh_dir(tmp_path_factory)
    write_image(folder / "ok.jpg")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["image", "text", "id"])
    writer.writerows(rows)  # wrong column counts, quotes, empty fields, newlines in fields
    path = folder / "pairs.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    dm = pairs_module(path)
    quiet(lambda: dm.setup("predict"))
    kept, dropped = counts(dm, ("predict",))
    assert kept + dropped == len(rows)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_pairs_all_bad_rows_are_reported(tmp_path, suffix):
    path = tmp_path / f"pairs{suffix}"
    path.write_text("image,text\n,\n" if suffix == ".csv" else "[]\n")
    dm = pairs_module(path)
    quiet(lambda: dm.setup("predict"))
    assert len(dm.dataset("predict")) == 0 and len(dm.bad_samples) == 1
