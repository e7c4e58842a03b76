"""Input-pipeline benchmark: images per second decoded, resized and batched by a DataModule.

`python -m data_modules.bench` (`make bench-data`) writes a folder of poster-sized JPEGs in the
MM-IMDB layout once (1,000 of 500 x 750 pixels by default, about 45 KB each, reused on later
runs), then reads every split through `MMIMDBDataModule` loaders at the encoder's input size
with 0, 1 and 2 DataLoader workers, and writes `results/bench_data.json`.

Per worker count: `setup_s` (validating every record and image header), `cold_images_per_s`
(the first pass, worker start-up included) and `images_per_s` (the median of the later passes;
workers are persistent, as in training). A separate in-process loop measures what JPEG draft
mode buys (`draft_speedup`: decode + resize rate with draft mode over the rate without). The
files are read from the page cache (just written or read by the first pass), so this measures
decoding, not the disk. Numbers depend on the machine and its load; the JSON records both.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import PIL
import torch

from rlrt.engine.files import atomic_write_json

from .fakes import write_fake_mmimdb
from .images import load_image
from .mmimdb import MMIMDBDataModule


def ensure_posters(root: Path, count: int, size: tuple[int, int]) -> None:
    """Write `count` clean poster-sized movies at `root` unless a copy is already there."""
    if (root / "split.json").is_file():
        return
    write_fake_mmimdb(root, dirty=False, num_movies=count, poster_size=size)


def time_passes(datamodule: MMIMDBDataModule, repeats: int) -> tuple[float, list[float], int]:
    """Seconds of the first pass and of `repeats` later passes over every split's loader, and
    the images in one pass."""
    loaders = [
        datamodule.train_dataloader(),
        datamodule.val_dataloader(),
        datamodule.test_dataloader(),
    ]
    times, images = [], 0
    for _ in range(1 + repeats):
        images = 0
        start = time.perf_counter()
        for loader in loaders:
            for batch in loader:
                images += batch["image"].shape[0]
        times.append(time.perf_counter() - start)
    return times[0], times[1:], images


def decode_rate(paths: list[Path], size: int, *, draft: bool) -> float:
    """Images per second of `load_image` over `paths`, in this process."""
    start = time.perf_counter()
    for path in paths:
        load_image(path, size, draft=draft)
    return len(paths) / (time.perf_counter() - start)


def machine_info() -> dict[str, Any]:
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": len(cpus) if cpus is not None else None,
        "load_average_1m_at_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "pillow": PIL.__version__,
    }


def run_bench(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m data_modules.bench", description=__doc__)
    parser.add_argument("--images", type=int, default=1000, help="posters to write and read")
    parser.add_argument("--poster-size", default="500x750", help="poster W x H in pixels")
    parser.add_argument("--image-size", type=int, default=224, help="the encoder's input size")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed passes after the first")
    parser.add_argument("--data-dir", default=None, help="default: data/bench_posters_<N>_<WxH>")
    parser.add_argument("--output", default="results/bench_data.json")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.poster_size.lower().split("x"))
    data_dir = Path(args.data_dir or f"data/bench_posters_{args.images}_{width}x{height}")
    info = machine_info()
    ensure_posters(data_dir, args.images, (width, height))

    runs = []
    for workers in args.workers:
        start = time.perf_counter()
        datamodule = MMIMDBDataModule(
            root=str(data_dir),
            image_size=args.image_size,
            batch_size=args.batch_size,
            num_workers=workers,
        )
        datamodule.setup()
        setup_s = time.perf_counter() - start
        cold, warm, images = time_passes(datamodule, args.repeats)
        runs.append(
            {
                "num_workers": workers,
                "images_per_pass": images,
                "setup_s": round(setup_s, 3),
                "cold_images_per_s": round(images / cold, 1),
                "images_per_s": round(images / statistics.median(warm), 1),
                "pass_s": [round(t, 3) for t in warm],
            }
        )
        print(
            f"workers={workers}: {runs[-1]['images_per_s']:8.1f} images/s "
            f"(first pass {runs[-1]['cold_images_per_s']:.1f}/s, setup {setup_s:.2f} s)"
        )

    paths = [r.image_path for r in datamodule.dataset("train").records][:200]
    with_draft = decode_rate(paths, args.image_size, draft=True)
    without = decode_rate(paths, args.image_size, draft=False)
    print(f"draft mode: {with_draft:.1f} vs {without:.1f} images/s in one process")
    result = {
        "benchmark": "input pipeline: decode + resize + centre crop + batch, MMIMDBDataModule",
        "images": args.images,
        "poster_size": [width, height],
        "mean_file_kb": round(
            sum(p.stat().st_size for p in paths) / len(paths) / 1024,
            1,
        ),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "runs": runs,
        "decode_images_per_s": {"draft": round(with_draft, 1), "no_draft": round(without, 1)},
        "draft_speedup": round(with_draft / without, 2),
        "machine": info,
    }
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    run_bench()
