"""Synthetic MM-IMDB (same on-disk layout) whose genres are split between the two modalities.

Each modality alone carries only part of the label information, so fusing them should help:

- `IMAGE_ONLY` genres are drawn on the poster and have no keywords in the plot,
- `TEXT_ONLY` genres have plot keywords and nothing on the poster,
- `BOTH` genres have both.

`shared_fraction` (default 0.3) sets how many of the 23 genres are shown by both modalities:
`round(shared_fraction * 23)` (0.3 -> 7, 0.33 -> 8, 0.67 -> 15, 1 -> 23); the rest are split
evenly between image-only and text-only, image-only taking the odd one (`genre_groups`). The
groups are nested: a genre shared at one fraction stays shared at every larger one. At the
default they are the three tuples below, and the data is byte for byte what the generator wrote
before the knob existed. Genres that become text-visible use `EXTRA_KEYWORDS`; with more than
16 image-visible genres the poster grid is 5x5 instead of 4x4.

Posters (`image_size = (W, H)` px, default 96x144; JPEG): a noisy dark-grey background, 1-3
neutral-grey distractor shapes, and for each image-visible genre of the movie one element with a
unique colour, a unique cell of a 4x4 grid and a shape (circle, square, triangle, stripes). The
grid covers the central square of the poster, the part a resize-shorter-side + centre-crop keeps;
each cell is 1/16 of it, big enough to survive the random features of an untrained, frozen ViT.
An element is omitted with probability 0.1.

Plots: `plot_words = (min, max)` filler words (default 12-24; with 128-160 every plot reaches 128
tokens) from a label-independent vocabulary plus, per text-visible genre, 1-3 of its five English
keywords (each omitted with probability 0.15); 5% of plots get one decoy keyword of a genre the
movie does not have. A quarter of the movies have a second plot. The two sizes change only
poster pixels and plot lengths: genres, split and which genres are shown are the same for the
same `seed`.

Genres: 1-4 per movie; the first cycles through a shuffled list of all 23 (so every genre
occurs, about `num_movies / 23` times as first genre), the others follow MM-IMDB-like frequencies
with a few boosted co-occurring pairs. Everything is a pure function of `seed`.

`demo_meta.json` in the root records the grouping, keywords, poster elements and, per movie,
its genres, the genres drawn on its poster (`image_genres`) and, per plot, the genres whose
keywords it holds (`text_genres`) and its decoys (`decoys`).
"""

from __future__ import annotations

import colorsys
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..mmimdb import MMIMDB_GENRES

GENERATOR_VERSION = 1
META_FILE = "demo_meta.json"
DEFAULT_IMAGE_SIZE = (96, 144)  # (W, H)
DEFAULT_PLOT_WORDS = (12, 24)  # inclusive (min, max) filler words per plot
MIN_SIDE, MAX_SIDE = 8, 4096  # poster side bounds, px
MAX_PLOT_WORDS = 10_000

IMAGE_ONLY = ("Horror", "Sci-Fi", "Fantasy", "Animation", "Western", "War", "Sport", "Film-Noir")
TEXT_ONLY = (
    "Crime",
    "Mystery",
    "Documentary",
    "Biography",
    "History",
    "Music",
    "Musical",
    "Family",
)
BOTH = ("Drama", "Comedy", "Romance", "Thriller", "Action", "Adventure", "Short")
DEFAULT_SHARED_FRACTION = 0.3  # round(0.3 * 23) = 7 genres: the split above
IMAGE_VISIBLE = tuple(g for g in MMIMDB_GENRES if g not in TEXT_ONLY)  # 15, pinned order
TEXT_VISIBLE = tuple(g for g in MMIMDB_GENRES if g not in IMAGE_ONLY)  # 15, pinned order

KEYWORDS: dict[str, tuple[str, ...]] = {
    "Drama": ("grief", "struggle", "betrayal", "redemption", "sacrifice"),
    "Comedy": ("hilarious", "prank", "clumsy", "jokes", "mishap"),
    "Romance": ("love", "kiss", "wedding", "sweetheart", "passion"),
    "Thriller": ("suspense", "hostage", "conspiracy", "paranoia", "stalker"),
    "Action": ("explosion", "gunfight", "commando", "mercenary", "showdown"),
    "Adventure": ("expedition", "treasure", "jungle", "voyage", "quest"),
    "Short": ("vignette", "sketch", "minutes", "snapshot", "brief"),
    "Crime": ("gangster", "robbery", "detective", "heist", "mafia"),
    "Mystery": ("clue", "riddle", "disappearance", "puzzle", "enigma"),
    "Documentary": ("interviews", "footage", "archival", "filmmaker", "chronicles"),
    "Biography": ("memoir", "biographical", "childhood", "legacy", "autobiography"),
    "History": ("empire", "medieval", "revolution", "dynasty", "century"),
    "Music": ("band", "guitar", "concert", "album", "singer"),
    "Musical": ("dance", "broadway", "songs", "chorus", "choreography"),
    "Family": ("kids", "parents", "puppy", "grandmother", "siblings"),
}
# Keywords of the image-only genres, used only where `shared_fraction` makes them text-visible.
EXTRA_KEYWORDS: dict[str, tuple[str, ...]] = {
    "Horror": ("haunted", "ghost", "demon", "zombie", "curse"),
    "Sci-Fi": ("spaceship", "alien", "robot", "galaxy", "android"),
    "Fantasy": ("wizard", "dragon", "sorcery", "elves", "enchanted"),
    "Animation": ("cartoon", "animated", "talking", "toys", "fairytale"),
    "Western": ("cowboy", "saloon", "sheriff", "outlaw", "ranch"),
    "War": ("soldiers", "battlefield", "trenches", "platoon", "invasion"),
    "Sport": ("coach", "championship", "stadium", "tournament", "athlete"),
    "Film-Noir": ("fedora", "nightclub", "dame", "cigarette", "alibi"),
}
FILLER = (
    "a",
    "the",
    "an",
    "man",
    "woman",
    "young",
    "old",
    "town",
    "city",
    "house",
    "road",
    "night",
    "day",
    "morning",
    "evening",
    "finds",
    "meets",
    "learns",
    "decides",
    "returns",
    "leaves",
    "must",
    "after",
    "before",
    "when",
    "while",
    "with",
    "his",
    "her",
    "their",
    "friend",
    "stranger",
    "neighbor",
    "job",
    "car",
    "letter",
    "phone",
    "money",
    "years",
    "summer",
    "winter",
    "river",
    "village",
    "office",
    "school",
    "hotel",
    "train",
    "window",
    "door",
    "doctor",
    "teacher",
    "writer",
    "brother",
    "sister",
    "and",
    "but",
    "soon",
    "never",
    "again",
    "home",
    "street",
    "week",
    "plan",
    "name",
    "boat",
    "bridge",
    "garden",
    "market",
    "station",
)
FILLER_SET = frozenset(FILLER)
ALL_KEYWORDS = {**KEYWORDS, **EXTRA_KEYWORDS}
assert not FILLER_SET & {w for ws in ALL_KEYWORDS.values() for w in ws}  # keywords findable
SHAPES = ("circle", "square", "triangle", "stripes")
GRID = 4
# Rough MM-IMDB genre counts, the weights of a movie's extra genres.
FREQUENCY = dict(
    zip(
        MMIMDB_GENRES,
        (
            13967,
            8592,
            5364,
            5192,
            3838,
            3550,
            2710,
            2703,
            2082,
            2057,
            1991,
            1933,
            1668,
            1343,
            1335,
            1143,
            1045,
            997,
            841,
            705,
            634,
            471,
            338,
        ),
    )
)
PARTNERS = {  # extra-genre weight x3 when the partner is already drawn
    "Romance": ("Comedy", "Drama"),
    "Crime": ("Thriller", "Drama"),
    "Action": ("Adventure",),
    "Adventure": ("Action", "Fantasy"),
    "Horror": ("Thriller", "Mystery"),
    "Sci-Fi": ("Action",),
    "Animation": ("Family", "Comedy"),
    "Biography": ("History", "Drama"),
    "War": ("History",),
    "Music": ("Musical",),
    "Film-Noir": ("Crime",),
}


def check_shared_fraction(value: Any) -> float:
    """`value` as a float in [0, 1]; a ValueError of one line otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(
            f"shared_fraction must be a number in [0, 1] (the fraction of the 23 genres shown "
            f"by both poster and plot; default {DEFAULT_SHARED_FRACTION}), got {value!r}"
        )
    return float(value)


def genre_groups(shared_fraction: float = DEFAULT_SHARED_FRACTION) -> dict[str, tuple[str, ...]]:
    """`{"image_only", "text_only", "both"}` genre tuples for `shared_fraction`.

    `round(shared_fraction * 23)` genres are shared. Below the default 7, the last genres of
    `BOTH` leave it, alternately to image-only and text-only; above it, genres of `TEXT_ONLY`
    and `IMAGE_ONLY` join it alternately (text first), each in its listed order. So image-only
    holds `ceil(rest / 2)` and text-only `floor(rest / 2)` of the `rest` unshared genres.
    """
    n = round(check_shared_fraction(shared_fraction) * len(MMIMDB_GENRES))
    image, text, both = list(IMAGE_ONLY), list(TEXT_ONLY), list(BOTH)
    for k in range(len(BOTH) - n):  # demote from the end of BOTH: image, text, image, ...
        (image if k % 2 == 0 else text).append(both.pop())
    for k in range(n - len(BOTH)):  # promote: text, image, text, ...
        both.append((text if k % 2 == 0 else image).pop(0))
    return {"image_only": tuple(image), "text_only": tuple(text), "both": tuple(both)}


def _visible(groups: dict[str, tuple[str, ...]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(image-visible, text-visible) genres, each in MM-IMDB's pinned order."""
    image = tuple(g for g in MMIMDB_GENRES if g not in groups["text_only"])
    text = tuple(g for g in MMIMDB_GENRES if g not in groups["image_only"])
    return image, text


def _grid(image_visible: tuple[str, ...]) -> int:
    """Side of the poster's cell grid: 4 (16 cells) unless more genres must be drawn."""
    return GRID if len(image_visible) <= GRID * GRID else GRID + 1


def _element_spec(image_visible: tuple[str, ...] = IMAGE_VISIBLE) -> dict[str, dict[str, Any]]:
    """Colour (RGB), grid cell (row, col) and shape of each image-visible genre."""
    spec = {}
    grid = _grid(image_visible)
    for i, genre in enumerate(image_visible):
        r, g, b = colorsys.hsv_to_rgb(i / len(image_visible), 1.0, 1.0 if i % 2 == 0 else 0.7)
        cell = (i * 7) % (grid * grid)  # 7 is coprime with 16 and 25: distinct cells
        spec[genre] = {
            "colour": [round(255 * r), round(255 * g), round(255 * b)],
            "cell": [cell // grid, cell % grid],
            "shape": SHAPES[i % len(SHAPES)],
        }
    return spec


def _draw_genres(rng: random.Random, order: list[str]) -> list[str]:
    n = rng.choices((1, 2, 3, 4), weights=(0.3, 0.35, 0.23, 0.12))[0]
    genres = [order.pop()]
    while len(genres) < n:
        pool = [g for g in MMIMDB_GENRES if g not in genres]
        weights = [
            FREQUENCY[g] * (3 if set(PARTNERS.get(g, ())) & set(genres) else 1) for g in pool
        ]
        genres.append(rng.choices(pool, weights=weights)[0])
    return genres


def _pair(value: Any, name: str) -> tuple[int, int]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of integers, got {value!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (a, b)):
        raise ValueError(f"{name} must be a pair of integers, got {value!r}")
    return a, b


def check_sizes(
    image_size: Any = DEFAULT_IMAGE_SIZE,
    plot_words: Any = DEFAULT_PLOT_WORDS,
    size_name: str = "image_size",
) -> tuple[tuple[int, int], tuple[int, int]]:
    """`(image_size, plot_words)` as int pairs; a ValueError of one line when out of bounds,
    naming the poster size `size_name` (the option the caller was given)."""
    w, h = _pair(image_size, size_name)
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise ValueError(
            f"{size_name} must be (W, H) with each side in {MIN_SIDE}..{MAX_SIDE} px, "
            f"got {tuple(image_size)}"
        )
    lo, hi = _pair(plot_words, "plot_words")
    if not 1 <= lo <= hi <= MAX_PLOT_WORDS:
        raise ValueError(
            f"plot_words must be (min, max) with 1 <= min <= max <= {MAX_PLOT_WORDS}, "
            f"got {tuple(plot_words)}"
        )
    return (w, h), (lo, hi)


def _plot(
    rng: random.Random,
    genres: list[str],
    prng: random.Random | None = None,
    plot_words: tuple[int, int] = DEFAULT_PLOT_WORDS,
    text_visible: tuple[str, ...] = TEXT_VISIBLE,
) -> tuple[str, list[str], list[str]]:
    """One plot; returns (text, genres whose keywords it holds, decoy genres). Only the genres of
    `text_visible` have keywords in it.

    `rng` always draws a plot of `DEFAULT_PLOT_WORDS` filler words (the same draws whatever the
    sizes, so that later movies do not change); with `prng`, its filler words are then replaced
    by `plot_words = (min, max)` ones drawn from `prng` and its keywords re-inserted at `prng`
    positions.
    """
    words = [rng.choice(FILLER) for _ in range(rng.randint(*DEFAULT_PLOT_WORDS))]
    shown, decoys = [], []
    for genre in genres:
        if genre not in text_visible:
            continue
        keywords = ALL_KEYWORDS[genre]
        picked = [w for w in rng.sample(keywords, rng.randint(1, 3)) if rng.random() > 0.15]
        if picked:
            shown.append(genre)
        for word in picked:
            words.insert(rng.randrange(len(words) + 1), word)
    if rng.random() < 0.05:
        decoy = rng.choice([g for g in text_visible if g not in genres])
        decoys.append(decoy)
        words.insert(rng.randrange(len(words) + 1), rng.choice(ALL_KEYWORDS[decoy]))
    if prng is not None:
        keywords = [w for w in words if w not in FILLER_SET]
        words = [prng.choice(FILLER) for _ in range(prng.randint(*plot_words))]
        for word in keywords:
            words.insert(prng.randrange(len(words) + 1), word)
    text = " ".join(words)
    return text[0].upper() + text[1:] + ".", shown, decoys


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, ...], fill: tuple) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # three horizontal stripes
        h = (y1 - y0) / 5
        for k in (0, 2, 4):
            draw.rectangle((x0, y0 + k * h, x1, y0 + (k + 1) * h), fill=fill)


def _poster(
    rng: random.Random,
    nrng: np.random.Generator,
    genres: list[str],
    spec: dict[str, dict[str, Any]],
    size: tuple[int, int],
) -> tuple[Image.Image, list]:
    """One poster `size=(W, H)`; returns (image, genres drawn on it)."""
    w, h = size
    base = nrng.integers(30, 100)
    pixels = base + nrng.normal(0.0, 12.0, (h, w, 1)) + nrng.normal(0.0, 4.0, (h, w, 3))
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 3)):  # neutral-grey distractors, anywhere
        s = rng.uniform(0.1, 0.3) * w
        x, y = rng.uniform(0, w - s), rng.uniform(0, h - s)
        grey = rng.randint(90, 200)
        _shape(draw, rng.choice(SHAPES), (x, y, x + s, y + s), (grey, grey, grey))
    side = min(w, h)
    ox, oy, cell = (w - side) / 2, (h - side) / 2, side / _grid(tuple(spec))
    drawn = []
    for genre in genres:
        if genre not in spec or rng.random() < 0.1:
            continue
        row, col = spec[genre]["cell"]
        s = cell * rng.uniform(0.85, 1.0)
        x = ox + col * cell + rng.uniform(0, cell - s)
        y = oy + row * cell + rng.uniform(0, cell - s)
        _shape(draw, spec[genre]["shape"], (x, y, x + s, y + s), tuple(spec[genre]["colour"]))
        drawn.append(genre)
    return img, drawn


def write_demo_dataset(
    root: str | Path,
    *,
    num_movies: int = 1500,
    seed: int = 0,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    plot_words: tuple[int, int] = DEFAULT_PLOT_WORDS,
    shared_fraction: float = DEFAULT_SHARED_FRACTION,
) -> dict[str, Any]:
    """Write a synthetic MM-IMDB under `root` (must not exist or be empty); returns its metadata.

    Layout: `split.json` (train/dev/test ~ 70/10/20), `dataset/<7-digit id>.json` (`plot`,
    `genres`, `title`, `year`, `director`), `dataset/<id>.jpeg` posters of `image_size = (W, H)`
    px, and `demo_meta.json`. Each plot has `plot_words = (min, max)` filler words (inclusive)
    plus its keywords. `shared_fraction` sets the genre groups (`genre_groups`). Deterministic
    in `seed`; the sizes change only poster pixels and plot lengths, not genres or split.
    Written to a temporary sibling folder and renamed into place, so a half-written dataset
    never appears at `root`.
    """
    root = Path(root)
    if num_movies < 3:
        raise ValueError(f"num_movies must be >= 3 (one per split), got {num_movies}")
    image_size, plot_words = check_sizes(image_size, plot_words)
    groups = genre_groups(shared_fraction)
    image_visible, text_visible = _visible(groups)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    # Plots of other lengths: filler from a stream of their own, `rng`'s draws stay the same.
    prng = None if plot_words == DEFAULT_PLOT_WORDS else random.Random(f"demo-plots-{seed}")
    spec = _element_spec(image_visible)
    ids = [f"{i:07d}" for i in rng.sample(range(100_000, 5_000_000), num_movies)]
    order: list[str] = []
    movies: dict[str, dict[str, Any]] = {}

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private
        (tmp / "dataset").mkdir()
        for movie_id in ids:
            if not order:  # every genre once per cycle of 23 movies, in a seeded order
                order = rng.sample(MMIMDB_GENRES, len(MMIMDB_GENRES))
            genres = _draw_genres(rng, order)
            plots, shown, decoys = [], [], []
            for _ in range(2 if rng.random() < 0.25 else 1):
                text, s, d = _plot(rng, genres, prng, plot_words, text_visible)
                plots.append(text)
                shown.append(s)
                decoys.append(d)
            poster, drawn = _poster(rng, nrng, genres, spec, image_size)
            poster.save(tmp / "dataset" / f"{movie_id}.jpeg", quality=90)
            record = {
                "title": " ".join(rng.sample(FILLER, 3)).title(),
                "year": rng.randint(1930, 2015),
                "director": f"Person {rng.randint(1, 500)}",
                "plot": plots,
                "genres": genres,
            }
            (tmp / "dataset" / f"{movie_id}.json").write_text(json.dumps(record), "utf-8")
            movies[movie_id] = {
                "genres": genres,
                "image_genres": drawn,
                "text_genres": shown,  # per plot: genres whose keywords it holds
                "decoys": decoys,  # per plot: genres of decoy keywords
            }

        shuffled = rng.sample(ids, len(ids))
        n_dev, n_test = max(1, round(0.1 * num_movies)), max(1, round(0.2 * num_movies))
        split = {
            "train": shuffled[n_dev + n_test :],
            "dev": shuffled[:n_dev],
            "test": shuffled[n_dev : n_dev + n_test],
        }
        (tmp / "split.json").write_text(json.dumps(split), "utf-8")
        meta = {
            "generator_version": GENERATOR_VERSION,
            "num_movies": num_movies,
            "seed": seed,
            "image_size": list(image_size),
            "plot_words": list(plot_words),
            # the groups record shared_fraction (a new key would change the default's bytes)
            "groups": {name: list(genres) for name, genres in groups.items()},
            "keywords": {g: list(v) for g, v in ALL_KEYWORDS.items() if g in text_visible},
            "elements": spec,
            "movies": movies,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), "utf-8")
        os.rename(tmp, root)  # atomic; fails if root is a non-empty folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _settings(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in values.items())


def ensure_demo_dataset(
    root: str | Path,
    *,
    num_movies: int = 1500,
    seed: int = 0,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    plot_words: tuple[int, int] = DEFAULT_PLOT_WORDS,
    shared_fraction: float = DEFAULT_SHARED_FRACTION,
) -> None:
    """Generate the demo dataset at `root` unless a complete one is there.

    A root with `split.json` counts as complete (a real MM-IMDB is used as is); a demo dataset
    generated with other settings is an error, as is a non-empty root without `split.json`.
    A `demo_meta.json` without `image_size`/`plot_words` (older generator) has the defaults;
    its `groups` say which `shared_fraction` wrote it.
    """
    root = Path(root)
    image_size, plot_words = check_sizes(image_size, plot_words)
    groups = {name: list(genres) for name, genres in genre_groups(shared_fraction).items()}
    want = {
        "generator_version": GENERATOR_VERSION,
        "num_movies": num_movies,
        "seed": seed,
        "shared genres": len(groups["both"]),
        "image_size": list(image_size),
        "plot_words": list(plot_words),
    }
    if not (root / "split.json").is_file():
        if root.is_dir() and any(root.iterdir()):
            raise FileExistsError(
                f"demo data: {root} is not empty but holds no split.json; "
                f"refusing to write into it, choose an empty or new root"
            )
        try:
            write_demo_dataset(
                root,
                num_movies=num_movies,
                seed=seed,
                image_size=image_size,
                plot_words=plot_words,
                shared_fraction=shared_fraction,
            )
            return
        except OSError:
            if not (root / "split.json").is_file():  # not a concurrent writer that won the race
                raise
    meta_path = root / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text("utf-8"))
        defaults = {"image_size": list(DEFAULT_IMAGE_SIZE), "plot_words": list(DEFAULT_PLOT_WORDS)}
        have = {k: meta.get(k, defaults.get(k)) for k in want}
        have["shared genres"] = len(meta.get("groups", {}).get("both", BOTH))
        if have != want or meta.get("groups", groups) != groups:
            raise ValueError(
                f"demo data: {root} was generated with {_settings(have)}, not {_settings(want)}; "
                f"delete it or choose another root"
            )
