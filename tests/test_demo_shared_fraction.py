"""`shared_fraction` of the demo generator: round(23 f) genres shown by both modalities, the rest
split evenly; the default is the original split, byte for byte; bookkeeping in demo_meta.json."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

from data_modules import MMIMDB_GENRES, DemoMMIMDBDataModule
from data_modules.fakes.demo import (
    BOTH,
    IMAGE_ONLY,
    META_FILE,
    TEXT_ONLY,
    ensure_demo_dataset,
    genre_groups,
    write_demo_dataset,
)
from rlrt.cli import main
from rlrt.commands.demo import shared_fraction_args
from tests.test_cli import CONFIGS, ParseOnlyCLI

N = 60
FRACTIONS = [0.0, 0.1, 0.3, 0.33, 0.5, 0.67, 0.9, 1.0]
# SHA-256 over (relative path, bytes) of every file of write_demo_dataset(num_movies=30, seed=5),
# computed with the generator as it was before shared_fraction existed (commit 502e17d).
DEFAULT_DIGEST = "9bfe1ce04f72046ecf9fff99b3fe3ef2637c55f4b51baf73dd9eacdf968cf142"


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for name, data in tree(root).items():
        h.update(name.encode())
        h.update(data)
    return h.hexdigest()


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[float, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("shared")
    return {
        f: (base / f"f{f}", write_demo_dataset(base / f"f{f}", num_movies=N, shared_fraction=f))
        for f in (0.0, 0.67, 1.0)
    }


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_groups_follow_the_fraction(fraction):
    groups = genre_groups(fraction)
    both, image, text = groups["both"], groups["image_only"], groups["text_only"]
    assert sorted(both + image + text) == sorted(MMIMDB_GENRES)  # a partition of the 23
    assert len(both) == round(fraction * 23)
    rest = 23 - len(both)
    assert (len(image), len(text)) == (math.ceil(rest / 2), rest // 2)


def test_groups_are_nested_and_the_default_is_the_original_split():
    shared = [set(genre_groups(k / 23)["both"]) for k in range(24)]
    assert all(a < b for a, b in zip(shared, shared[1:]))  # one more genre shared per step
    original = {"image_only": IMAGE_ONLY, "text_only": TEXT_ONLY, "both": BOTH}
    assert genre_groups() == genre_groups(0.3) == original


def test_default_data_is_byte_identical_to_the_generator_before_the_knob(tmp_path):
    write_demo_dataset(tmp_path / "default", num_movies=30, seed=5)
    write_demo_dataset(tmp_path / "explicit", num_movies=30, seed=5, shared_fraction=0.3)
    assert digest(tmp_path / "default") == digest(tmp_path / "explicit") == DEFAULT_DIGEST


def test_pure_function_of_seed_and_fraction(generated, tmp_path):
    root, _ = generated[0.67]
    write_demo_dataset(tmp_path / "again", num_movies=N, shared_fraction=0.67)
    write_demo_dataset(tmp_path / "seed1", num_movies=N, seed=1, shared_fraction=0.67)
    assert tree(tmp_path / "again") == tree(root)
    assert tree(tmp_path / "seed1") != tree(root)
    assert tree(generated[1.0][0]) != tree(root)


@pytest.mark.parametrize("fraction", [0.0, 0.67, 1.0])
def test_meta_bookkeeping_matches_the_fraction(generated, fraction):
    root, meta = generated[fraction]
    assert json.loads((root / META_FILE).read_text()) == meta
    groups = meta["groups"]
    assert len(groups["both"]) == round(23 * fraction)
    assert {k: tuple(v) for k, v in groups.items()} == genre_groups(fraction)
    image_visible = set(groups["image_only"]) | set(groups["both"])
    text_visible = set(groups["text_only"]) | set(groups["both"])
    assert set(meta["elements"]) == image_visible and set(meta["keywords"]) == text_visible
    cells = [tuple(e["cell"]) for e in meta["elements"].values()]
    assert len(set(cells)) == len(cells)  # one grid cell per drawn genre, 23 included
    words = [w for ws in meta["keywords"].values() for w in ws]
    assert len(words) == len(set(words))  # each keyword names one genre
    seen_image, seen_text = set(), set()
    for movie_id, movie in meta["movies"].items():
        assert set(movie["image_genres"]) <= set(movie["genres"]) & image_visible
        for plot_genres, decoys in zip(movie["text_genres"], movie["decoys"]):
            assert set(plot_genres) <= set(movie["genres"]) & text_visible
            assert set(decoys) <= text_visible - set(movie["genres"])
        plots = json.loads((root / "dataset" / f"{movie_id}.json").read_text())["plot"]
        for plot, plot_genres in zip(plots, movie["text_genres"]):
            words_in = set(plot.lower().rstrip(".").split())
            assert all(words_in & set(meta["keywords"][g]) for g in plot_genres)
        seen_image |= set(movie["image_genres"])
        seen_text |= {g for plot in movie["text_genres"] for g in plot}
    # genres really show where the groups say (60 movies cover every genre as a first genre)
    assert seen_image == image_visible and seen_text == text_visible


def test_a_root_of_another_fraction_is_refused(generated):
    root, _ = generated[1.0]
    stamp = (root / "split.json").stat().st_mtime_ns
    ensure_demo_dataset(root, num_movies=N, shared_fraction=1.0)  # same settings: reused
    with pytest.raises(ValueError) as error:
        ensure_demo_dataset(root, num_movies=N, shared_fraction=0.67)
    message = str(error.value)
    assert "\n" not in message and "shared genres=23" in message
    assert "shared genres=15" in message and "choose another root" in message
    assert (root / "split.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("bad", [-0.1, 1.5, "half", None, True, float("nan")])
def test_bad_fractions_are_one_line_errors_and_write_nothing(tmp_path, bad):
    for call in (write_demo_dataset, ensure_demo_dataset):
        with pytest.raises(ValueError, match=r"shared_fraction must be a number in \[0, 1\]") as e:
            call(tmp_path / "d", num_movies=N, shared_fraction=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="shared_fraction must be"):
        DemoMMIMDBDataModule(root=str(tmp_path / "d"), shared_fraction=bad)
    assert list(tmp_path.iterdir()) == []


def test_the_demo_config_and_the_cli_set_it():
    configs = [CONFIGS / "trainer" / "demo.yaml", CONFIGS / "data" / "demo.yaml"]
    args = [a for c in [*configs, CONFIGS / "model" / "demo.yaml"] for a in ("--config", str(c))]
    default = ParseOnlyCLI(args=args, run=False).config.data.init_args
    assert genre_groups(default.shared_fraction)["both"] == BOTH
    parsed = ParseOnlyCLI(args=[*args, "--data.init_args.shared_fraction=1"], run=False)
    assert parsed.config.data.init_args.shared_fraction == 1.0


def test_rlrt_demo_flag_sets_the_fraction_and_a_root_of_its_own():
    assert shared_fraction_args(None) == []
    # the shipped split keeps the shipped root (and so today's demo data)
    assert shared_fraction_args("0.3") == ["--data.init_args.shared_fraction=0.3"]
    assert shared_fraction_args("1") == [
        "--data.init_args.shared_fraction=1.0",
        "--data.init_args.root=data/demo_mmimdb_shared1",
    ]


@pytest.mark.parametrize("bad", ["1.5", "-1", "half", "nan"])
def test_rlrt_demo_refuses_a_bad_fraction_in_one_line(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as done:
        main(["demo", f"--shared_fraction={bad}", f"--output={tmp_path / 'out'}"])
    assert done.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--shared_fraction must be a number in [0, 1]" in error[0]
    assert list(tmp_path.iterdir()) == []
