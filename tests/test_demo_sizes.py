"""Poster size and plot length of the synthetic demo data: the defaults give today's dataset,
other sizes change only poster pixels and plot lengths, a folder of other sizes is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from data_modules import DemoMMIMDBDataModule
from data_modules.fakes.demo import META_FILE, ensure_demo_dataset, write_demo_dataset
from tests.test_cli import CONFIGS, ParseOnlyCLI

N = 24
PAPER = {"image_size": (300, 450), "plot_words": (110, 140)}


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def filler_counts(root: Path, meta: dict) -> list[int]:
    """Words of each plot that are not keywords (keywords as `demo_meta.json` records them)."""
    keywords = {w for ws in meta["keywords"].values() for w in ws}
    counts = []
    for movie_id in meta["movies"]:
        for plot in json.loads((root / "dataset" / f"{movie_id}.json").read_text())["plot"]:
            words = plot.lower().rstrip(".").split()
            counts.append(sum(w not in keywords for w in words))
    return counts


def plot_keywords(root: Path, meta: dict) -> dict[str, list[list[str]]]:
    """Per movie, per plot: its keywords, sorted."""
    keywords = {w for ws in meta["keywords"].values() for w in ws}
    out = {}
    for movie_id in meta["movies"]:
        plots = json.loads((root / "dataset" / f"{movie_id}.json").read_text())["plot"]
        out[movie_id] = [sorted(set(p.lower().rstrip(".").split()) & keywords) for p in plots]
    return out


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("sizes")
    settings = {
        "default": {},
        "explicit": {"image_size": (96, 144), "plot_words": (12, 24)},
        "paper": PAPER,
        "poster_only": {"image_size": PAPER["image_size"]},
        "plots_only": {"plot_words": PAPER["plot_words"]},
    }
    return {
        name: (base / name, write_demo_dataset(base / name, num_movies=N, seed=3, **kw))
        for name, kw in settings.items()
    }


def test_defaults_give_the_same_files_as_explicit_defaults(datasets):
    (root, meta), (explicit, _) = datasets["default"], datasets["explicit"]
    assert tree(root) == tree(explicit)
    assert meta["image_size"] == [96, 144] and meta["plot_words"] == [12, 24]
    for poster in (root / "dataset").glob("*.jpeg"):
        with Image.open(poster) as img:
            assert img.size == (96, 144)
    assert all(12 <= n <= 24 for n in filler_counts(root, meta))


def test_paper_sizes_give_paper_posters_and_plots(datasets):
    root, meta = datasets["paper"]
    assert meta["image_size"] == [300, 450] and meta["plot_words"] == [110, 140]
    posters = sorted((root / "dataset").glob("*.jpeg"))
    assert len(posters) == N
    for poster in posters:
        with Image.open(poster) as img:
            assert img.format == "JPEG" and img.size == (300, 450)
    counts = filler_counts(root, meta)
    assert len(counts) >= N and all(110 <= n <= 140 for n in counts)
    assert max(counts) - min(counts) >= 10  # drawn over the range, not one fixed length


def test_other_sizes_keep_genres_split_and_keywords(datasets):
    root, meta = datasets["default"]
    for name in ("paper", "poster_only", "plots_only"):
        other, other_meta = datasets[name]
        assert (other / "split.json").read_bytes() == (root / "split.json").read_bytes(), name
        assert other_meta["movies"] == meta["movies"], name  # genres, drawn, shown, decoys
        sizes = ("image_size", "plot_words")
        assert {k: v for k, v in other_meta.items() if k not in sizes} == {
            k: v for k, v in meta.items() if k not in sizes
        }, name
        assert plot_keywords(other, other_meta) == plot_keywords(root, meta), name
        for movie_id in meta["movies"]:
            a = json.loads((root / "dataset" / f"{movie_id}.json").read_text())
            b = json.loads((other / "dataset" / f"{movie_id}.json").read_text())
            assert len(a.pop("plot")) == len(b.pop("plot")) and a == b, (name, movie_id)


def test_each_size_changes_only_its_own_files(datasets):
    default = tree(datasets["default"][0])
    posters = {k for k in default if k.endswith(".jpeg")}
    records = {k for k in default if k.startswith("dataset/") and k.endswith(".json")}
    for name, changed in (("poster_only", posters), ("plots_only", records)):
        other = tree(datasets[name][0])
        assert set(other) == set(default)
        differ = {k for k in default if other[k] != default[k]}
        assert differ == changed | {META_FILE}, name


def test_exact_plot_length(tmp_path):
    meta = write_demo_dataset(tmp_path / "d", num_movies=5, seed=0, plot_words=(7, 7))
    assert set(filler_counts(tmp_path / "d", meta)) == {7}


def test_ensure_refuses_a_folder_of_other_sizes(tmp_path):
    root = tmp_path / "demo"
    ensure_demo_dataset(root, num_movies=N)
    stamp = (root / "split.json").stat().st_mtime_ns
    ensure_demo_dataset(root, num_movies=N, image_size=(96, 144), plot_words=(12, 24))
    assert (root / "split.json").stat().st_mtime_ns == stamp
    for kw, have, want in (
        ({"plot_words": (110, 140)}, "plot_words=(12, 24)", "plot_words=(110, 140)"),
        ({"image_size": (300, 450)}, "image_size=(96, 144)", "image_size=(300, 450)"),
    ):
        with pytest.raises(ValueError) as error:
            ensure_demo_dataset(root, num_movies=N, **kw)
        message = str(error.value)
        assert "\n" not in message and str(root) in message
        assert message.index(have) < message.index("), not ") < message.index(want)
        assert "delete it or choose another root" in message
    assert (root / "split.json").stat().st_mtime_ns == stamp


def test_ensure_accepts_a_meta_without_the_size_keys(tmp_path):
    root = tmp_path / "old"
    write_demo_dataset(root, num_movies=N)
    meta = json.loads((root / META_FILE).read_text())
    del meta["image_size"], meta["plot_words"]
    (root / META_FILE).write_text(json.dumps(meta, indent=1))
    stamp = (root / "split.json").stat().st_mtime_ns
    ensure_demo_dataset(root, num_movies=N)
    DemoMMIMDBDataModule(root=str(root), num_movies=N).prepare_data()
    assert (root / "split.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"plot_words=\(12, 24\).* not .*plot_words=\(110, 140\)"):
        ensure_demo_dataset(root, num_movies=N, plot_words=(110, 140))
    with pytest.raises(ValueError, match=r"image_size=\(96, 144\).* not .*image_size=\(64, 64\)"):
        ensure_demo_dataset(root, num_movies=N, image_size=(64, 64))


BAD = [
    ({"image_size": (4, 144)}, "image_size must be"),
    ({"image_size": (96, 5000)}, "image_size must be"),
    ({"image_size": (96,)}, "image_size must be a pair"),
    ({"image_size": (96.0, 144)}, "image_size must be a pair"),
    ({"plot_words": (0, 5)}, "plot_words must be"),
    ({"plot_words": (30, 20)}, "plot_words must be"),
    ({"plot_words": 12}, "plot_words must be a pair"),
]


@pytest.mark.parametrize("kw,match", BAD, ids=lambda v: str(v))
def test_bad_sizes_are_refused(tmp_path, kw, match):
    for call in (write_demo_dataset, ensure_demo_dataset):
        with pytest.raises(ValueError, match=match) as error:
            call(tmp_path / "d", num_movies=N, **kw)
        assert "\n" not in str(error.value)
    module_kw = {"poster_size" if k == "image_size" else k: v for k, v in kw.items()}
    module_match = match.replace("image_size", "poster_size")  # the module's own option name
    with pytest.raises(ValueError, match=module_match):
        DemoMMIMDBDataModule(root=str(tmp_path / "d"), num_movies=N, **module_kw)
    assert not (tmp_path / "d").exists() and list(tmp_path.iterdir()) == []  # nothing written


def test_datamodule_writes_and_reads_paper_sizes(tmp_path):
    root = tmp_path / "paper"
    dm = DemoMMIMDBDataModule(
        root=str(root), num_movies=10, poster_size=(300, 450), plot_words=(110, 140), image_size=32
    )
    dm.setup("fit")
    meta = json.loads((root / META_FILE).read_text())
    assert meta["image_size"] == [300, 450] and meta["plot_words"] == [110, 140]
    assert len(dm.dataset("train")) == 7
    with Image.open(next((root / "dataset").glob("*.jpeg"))) as img:
        assert img.size == (300, 450)
    with pytest.raises(ValueError, match="generated with"):
        DemoMMIMDBDataModule(root=str(root), num_movies=10).prepare_data()


def test_cli_parses_poster_size_and_plot_words():
    configs = [CONFIGS / "trainer" / "demo.yaml", CONFIGS / "data" / "demo.yaml"]
    args = [a for c in [*configs, CONFIGS / "model" / "demo.yaml"] for a in ("--config", str(c))]
    sizes = ["--data.init_args.poster_size=[300,450]", "--data.init_args.plot_words=[110,140]"]
    parsed = ParseOnlyCLI(args=[*args, *sizes], run=False).config.data.init_args
    assert tuple(parsed.poster_size) == (300, 450) and tuple(parsed.plot_words) == (110, 140)
    default = ParseOnlyCLI(args=args, run=False).config.data.init_args
    assert tuple(default.poster_size) == (96, 144) and tuple(default.plot_words) == (12, 24)
