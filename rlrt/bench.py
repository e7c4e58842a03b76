"""`rlrt bench` (`make bench`): what the feature cache buys, measured on this machine.

For two encoder sizes — `tiny` (the test encoders) and `base` (a ViT-B-32-sized open_clip tower
with random weights + the packaged pretrained MiniLM) — on generated demo data:

- `encoder_samples_per_s`: a bare forward pass of both frozen encoders over in-memory inputs;
- `cache_build_samples_per_s`: `rlrt cache` over the same number of samples (decoding included);
- `train_online_samples_per_s` / `train_cached_samples_per_s`: one training epoch, encoders run
  online vs features read from the cache, and `epoch_speedup_cached` (their time ratio);
- `data_wait_fraction`: share of the cached training epoch spent between steps (fetching the next
  batch plus the loop's own bookkeeping, an upper bound on the data wait);
- `peak_rss_mb`, `trainable_params`, `frozen_params`;
- `epoch_seconds_cached_by_n`: a cached epoch at 1k, 4k and 16k training samples (caches filled
  with random float16 features of the right shapes: the epoch time does not depend on the values).

Each size runs in its own process (so peak memory is its own) and the results go to
`results/bench.json` and `results/bench.md`. A GPU is used when present. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning import Callback

from rlrt.io import atomic_write_json, atomic_write_text

SCALING_SIZES = (1000, 4000, 16000)


class EpochTimer(Callback):
    """Wall time of each training epoch, and time spent between steps vs inside them."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self.wait = 0.0
        self.step = 0.0
        self._mark = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._mark = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.wait += now - self._mark
        self._mark = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        self.step += now - self._mark
        self._mark = now

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epochs.append(time.perf_counter() - self._epoch_start)


def encoder_args(size: str, scratch: Path) -> list[str]:
    """CLI overrides selecting the encoders of one benchmark size."""
    if size == "tiny":
        from rlrt.tiny_encoders import write_tiny_llama, write_tiny_vit_config

        vit = write_tiny_vit_config(scratch)
        llama = write_tiny_llama(scratch / "tiny-llama")
        return [
            f"--model.image_encoder.init_args.config_file={vit}",
            "--model.image_encoder.init_args.image_size=32",
            "--model.image_encoder.init_args.layers=2",
            f"--model.text_encoder.init_args.model_name_or_path={llama}",
            "--model.text_encoder.init_args.layers=2",
            "--model.text_encoder.init_args.pooling=last",
        ]
    return [
        "--model.image_encoder.init_args.config_file=null",
        "--model.image_encoder.init_args.model_name=ViT-B-32",
        "--model.image_encoder.init_args.image_size=224",
    ]


def common_args(configs: Path, root: Path, movies: int, train_samples: int) -> list[str]:
    return [
        "--config",
        str(configs / "trainer" / "demo.yaml"),
        "--config",
        str(configs / "data" / "demo.yaml"),
        "--config",
        str(configs / "model" / "demo.yaml"),
        f"--data.init_args.root={root}",
        f"--data.init_args.num_movies={movies}",
        f"--data.init_args.limit_samples={train_samples}",
        "--data.init_args.batch_size=128",
        "--trainer.accelerator=auto",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.limit_val_batches=0",
        "--trainer.callbacks=rlrt.bench.EpochTimer",
    ]


def bare_encoder_rate(model, n: int, batch_size: int = 64) -> float:
    """Samples per second of both encoders' forward passes over in-memory inputs."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.image_encoder.to(device)
    model.text_encoder.to(device)
    size = model.image_encoder.image_size
    generator = torch.Generator().manual_seed(0)
    words = "a lonely detective follows a ghost through the old city at night".split()
    start = time.perf_counter()
    for first in range(0, n, batch_size):
        b = min(batch_size, n - first)
        images = torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=generator)
        texts = [" ".join(words[(i % 5) :] * 3) for i in range(b)]
        model.image_encoder(images.to(device))
        model.text_encoder(texts)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def fit_once(args: list[str], epochs: int = 1):
    from rlrt.cli import RLRTCLI

    cli = RLRTCLI(args=["fit", *args, f"--trainer.max_epochs={epochs}"], save_config_callback=None)
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, EpochTimer))
    return cli, timer


def fill_random_cache(cache: Path, source: Path, root_args: list[str]) -> None:
    """A cache of `root_args`' train and val splits, random features shaped like `source`'s."""
    from rlrt.cli import RLRTCLI
    from rlrt.feature_cache import Shapes, SplitCacheWriter

    manifest = json.loads((source / "train" / "manifest.json").read_text())

    def shape(name: str) -> tuple[int, ...]:
        return np.load(source / "train" / f"{name}.npy", mmap_mode="r").shape

    tokens_i, tokens_t = shape("image_tokens"), shape("text_tokens")
    shapes = Shapes(
        tokens_i[1],
        tokens_i[2],
        tokens_i[3],
        shape("image_embedding")[1],
        tokens_t[2],
        tokens_t[3],
        shape("text_embedding")[1],
    )
    cli = RLRTCLI(args=root_args, run=False, save_config_callback=None)
    data = cli.datamodule
    data.prepare_data()
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        sources = data.cache_sources(split)
        build = {
            **{k: manifest[k] for k in ("format_version", "dtype", "encoders")},
            **data.cache_identity(split),
            "root": str(data.root),
            "benchmark": "random",
        }
        folder = cache / split
        SplitCacheWriter.create(
            folder,
            build=build,
            ids=sources.ids,
            sample_image_row=sources.sample_image_row,
            num_images=len(sources.image_paths),
            shapes=shapes,
        )
        writer = SplitCacheWriter(folder).open()
        for name, array in writer.arrays.items():
            if name.endswith("done") or name == "text_mask":
                array[:] = True
            else:
                array[:] = rng.standard_normal(array.shape, dtype=np.float32).astype(array.dtype)
        writer.finalize({**build, "complete": True})
    os.symlink((source / "dummy").resolve(), cache / "dummy")


def measure(size: str, configs: Path, samples: int) -> dict[str, Any]:
    """Every figure of one size (runs in its own process)."""
    from rlrt.cache import run_cache

    scratch = Path(tempfile.mkdtemp(prefix=f"rlrt-bench-{size}-"))
    movies = int(samples / 0.7) + 20
    base = common_args(configs, scratch / "data", movies, samples) + encoder_args(size, scratch)
    out: dict[str, Any] = {"train_samples": samples}

    online, online_timer = fit_once(base)
    model = online.model
    out["trainable_params"] = sum(p.numel() for p in model.trainable_parameters())
    out["frozen_params"] = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    n_train = len(online.datamodule.dataset("train"))
    out["encoder_samples_per_s"] = bare_encoder_rate(model, n_train)

    cache = scratch / "cache"
    start = time.perf_counter()
    run_cache([*base, f"--data.init_args.feature_cache={cache}", "--splits=train"])
    out["cache_build_samples_per_s"] = n_train / (time.perf_counter() - start)
    run_cache([*base, f"--data.init_args.feature_cache={cache}", "--splits=val"])  # fit wants val

    cached, cached_timer = fit_once([*base, f"--data.init_args.feature_cache={cache}"], epochs=3)
    online_epoch = online_timer.epochs[0]
    cached_epoch = float(np.median(cached_timer.epochs[1:]))  # epoch 0 warms the page cache
    out["train_online_samples_per_s"] = n_train / online_epoch
    out["train_cached_samples_per_s"] = n_train / cached_epoch
    out["epoch_speedup_cached"] = online_epoch / cached_epoch
    out["data_wait_fraction"] = cached_timer.wait / (cached_timer.wait + cached_timer.step)

    by_n = {}
    for n in SCALING_SIZES:
        root = scratch / f"data-{n}"
        args = common_args(configs, root, int(n / 0.7) + 50, n) + encoder_args(size, scratch)
        scaled = scratch / f"cache-{n}"
        fill_random_cache(scaled, cache, args)
        _, timer = fit_once([*args, f"--data.init_args.feature_cache={scaled}"], epochs=2)
        by_n[str(n)] = timer.epochs[-1]
    out["epoch_seconds_cached_by_n"] = by_n
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def machine() -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def to_markdown(results: dict[str, Any]) -> str:
    rows = [
        ("encoder forward (samples/s)", "encoder_samples_per_s", "{:.1f}"),
        ("cache build (samples/s)", "cache_build_samples_per_s", "{:.1f}"),
        ("train online (samples/s)", "train_online_samples_per_s", "{:.1f}"),
        ("train from cache (samples/s)", "train_cached_samples_per_s", "{:.1f}"),
        ("epoch speed-up from the cache", "epoch_speedup_cached", "{:.1f}x"),
        ("data wait share (cached)", "data_wait_fraction", "{:.1%}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("trainable parameters", "trainable_params", "{:,}"),
        ("frozen parameters", "frozen_params", "{:,}"),
    ]
    sizes = list(results["sizes"])
    lines = [
        "# rlrt benchmark",
        "",
        f"Machine: `{json.dumps(results['machine'])}`",
        "",
        "| | " + " | ".join(sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for label, key, fmt in rows:
        cells = [fmt.format(results["sizes"][s][key]) for s in sizes]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for n in SCALING_SIZES:
        cells = [f"{results['sizes'][s]['epoch_seconds_cached_by_n'][str(n)]:.2f}" for s in sizes]
        lines.append(f"| cached epoch at {n} samples (s) | " + " | ".join(cells) + " |")
    base = results["sizes"].get("base")
    if base:
        lines += [
            "",
            "Targets at `base`: cached epoch >= 20x faster than online "
            f"(measured {base['epoch_speedup_cached']:.1f}x); data wait < 10% "
            f"(measured {base['data_wait_fraction']:.1%}); cache build within 1.2x of the "
            "bare encoder pass (measured "
            f"{base['encoder_samples_per_s'] / base['cache_build_samples_per_s']:.2f}x).",
        ]
    return "\n".join(lines) + "\n"


def run_bench(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="rlrt bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="tiny,base")
    parser.add_argument("--samples", type=int, default=512, help="training samples per size")
    parser.add_argument("--configs", default="configs")
    parser.add_argument("--output", default="results")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args(argv)
    if args.one:
        result = measure(args.one, Path(args.configs), args.samples)
        print("RLRT_BENCH_RESULT " + json.dumps(result))
        return result
    results: dict[str, Any] = {"machine": machine(), "sizes": {}}
    for size in args.sizes.split(","):
        print(f"rlrt bench: measuring {size} ...", flush=True)
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "rlrt.cli",
                "bench",
                f"--one={size}",
                f"--samples={args.samples}",
                f"--configs={args.configs}",
            ],
            capture_output=True,
            text=True,
        )
        line = [x for x in child.stdout.splitlines() if x.startswith("RLRT_BENCH_RESULT ")]
        if child.returncode != 0 or not line:
            raise RuntimeError(f"benchmark of {size} failed:\n{child.stderr[-4000:]}")
        results["sizes"][size] = json.loads(line[-1].split(" ", 1)[1])
    output = Path(args.output)
    atomic_write_json(output / "bench.json", results)
    markdown = to_markdown(results)
    atomic_write_text(output / "bench.md", markdown)
    print(markdown)
    return results
