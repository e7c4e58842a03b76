"""`rlrt bench` (`make bench`): what the feature cache buys, measured on this machine.

For two encoder sizes — `tiny` (the test encoders) and `base` (a ViT-B-32-sized open_clip tower
with random weights + the packaged pretrained MiniLM) — on generated demo data:

- `encoder_samples_per_s`: a bare forward pass of both frozen encoders over the training split's
  own images and texts, decoded into memory beforehand: the floor of any cache build;
- `cache_build_samples_per_s`: `rlrt cache` over the same samples (reading, decoding, encoding,
  writing; loading the encoders is once per command and is in `cache_build_command_seconds`);
- `train_online_samples_per_s` / `train_cached_samples_per_s`: one training epoch, encoders run
  online vs features read from the cache, and `epoch_speedup_cached` (their time ratio);
- `data_wait_fraction`: share of the cached training epochs (after the first, as the epoch time)
  spent between steps (fetching the next batch plus the loop's own bookkeeping, an upper bound
  on the data wait);
- `fit_online_startup_seconds` / `fit_cached_startup_seconds`: from the fit command's start
  (config, data, model, encoders) to its first training batch, and `fit_cached_loads_weights`
  (False: a fit from the cache never reads the frozen weights);
- `peak_rss_mb` (through the measurements above), `peak_rss_mb_with_scaling` (after the
  scaling rows below, whose larger memory-mapped caches add resident pages), `trainable_params`,
  `frozen_params`;
- `epoch_seconds_cached_by_n`: a cached epoch at 1k, 4k and 16k training samples (caches filled
  with random float16 features of the right shapes: the epoch time does not depend on the values).

Each size runs in its own process (so peak memory is its own) and the results go to
`results/bench.json` and `results/bench.md`. A GPU is used when present. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrt.commands.bench_paper import measure_paper, paper_markdown, require_gpu
from rlrt.commands.bench_timing import (
    MEASURING_TRAINER_ARGS,
    config_files,
    fill_random_cache,
    fit_once,
    machine,
    peak_rss_mb,
    say,
)
from rlrt.commands.cache import run_cache
from rlrt.engine.files import atomic_write_json, atomic_write_text
from rlrt.reports.tables import markdown_table
from rlrt.tiny_encoders import tiny_encoder_args, write_tiny_llama, write_tiny_vit_config

SCALING_SIZES = (1000, 4000, 16000)
CACHED_EPOCHS = 6  # the first warms the page cache; the median of the others is reported


def encoder_args(size: str, scratch: Path) -> list[str]:
    """CLI overrides selecting the encoders of one benchmark size."""
    if size == "tiny":
        vit = write_tiny_vit_config(scratch)
        llama = write_tiny_llama(scratch / "tiny-llama")
        return tiny_encoder_args(vit, llama, common_dim=None)
    return [
        "--model.image_encoder.init_args.config_file=null",
        "--model.image_encoder.init_args.model_name=ViT-B-32",
        "--model.image_encoder.init_args.image_size=224",
    ]


def common_args(configs: Path, root: Path, movies: int, train_samples: int) -> list[str]:
    return [
        *config_files(configs, trainer="demo", data="demo", model="demo"),
        f"--data.init_args.root={root}",
        f"--data.init_args.num_movies={movies}",
        f"--data.init_args.limit_samples={train_samples}",
        "--data.init_args.batch_size=128",
        *MEASURING_TRAINER_ARGS,
    ]


def bare_encoder_rate(model, dataset, batch_size: int) -> float:
    """Samples per second of both encoders' forward passes over `dataset`'s own images and texts,
    decoded into memory beforehand (untimed): the floor any cache build of the same data has."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.image_encoder.to(device)
    model.text_encoder.to(device)
    items = [dataset[i] for i in range(len(dataset))]
    batches = [
        (torch.stack([i["image"] for i in chunk]), [i["text"] for i in chunk])
        for chunk in (items[k : k + batch_size] for k in range(0, len(items), batch_size))
    ]
    start = time.perf_counter()
    for images, texts in batches:
        model.image_encoder(images.to(device))
        model.text_encoder(texts)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(items) / (time.perf_counter() - start)


def measure(
    size: str, configs: Path, samples: int, scaling: tuple[int, ...] = SCALING_SIZES
) -> dict[str, Any]:
    """Every figure of one size (runs in its own process; its scratch folder is removed)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"rlrt-bench-{size}-"))
    try:
        return _measure(size, configs, samples, scaling, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(
    size: str, configs: Path, samples: int, scaling: tuple[int, ...], scratch: Path
) -> dict[str, Any]:

    movies = int(samples / 0.7) + 20
    base = common_args(configs, scratch / "data", movies, samples) + encoder_args(size, scratch)
    out: dict[str, Any] = {"train_samples": samples}

    say(f"{size}: one online epoch (encoders run on every batch)")
    online, online_timer, out["fit_online_startup_seconds"] = fit_once(base)
    model = online.model
    out["trainable_params"] = sum(p.numel() for p in model.trainable_parameters())
    out["frozen_params"] = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    train_set = online.datamodule.dataset("train")
    n_train = len(train_set)
    say(f"{size}: bare encoder pass over the same {n_train} samples")
    batch_size = online.datamodule.eval_batch_size  # the cache build's batch size
    out["encoder_samples_per_s"] = bare_encoder_rate(model, train_set, batch_size)

    say(f"{size}: cache build")
    cache = scratch / "cache"
    start = time.perf_counter()
    report = run_cache([*base, f"--data.init_args.feature_cache={cache}", "--splits=train"])
    out["cache_build_command_seconds"] = time.perf_counter() - start
    # The rate of the build itself (read, decode, encode, write), as the bare pass's rate excludes
    # loading the encoders; the whole command's time, set-up included, is kept beside it.
    out["cache_build_samples_per_s"] = report.samples["train"] / report.seconds["train"]
    run_cache([*base, f"--data.init_args.feature_cache={cache}", "--splits=val"])  # fit wants val

    say(f"{size}: {CACHED_EPOCHS} epochs from the cache")
    args = [*base, f"--data.init_args.feature_cache={cache}"]
    cached, cached_timer, out["fit_cached_startup_seconds"] = fit_once(args, epochs=CACHED_EPOCHS)
    # a fit from the cache never reads the frozen weights (they load on first use)
    out["fit_cached_loads_weights"] = (
        cached.model.image_encoder.is_loaded or cached.model.text_encoder.is_loaded
    )
    online_epoch = online_timer.epochs[0]
    cached_epoch = float(np.median(cached_timer.epochs[1:]))  # epoch 0 warms the page cache
    out["train_online_samples_per_s"] = n_train / online_epoch
    out["train_cached_samples_per_s"] = n_train / cached_epoch
    out["epoch_speedup_cached"] = online_epoch / cached_epoch
    out["data_wait_fraction"] = cached_timer.wait_fraction(skip=1)  # as the epoch time
    # Peak resident memory of everything above; the scaling rows below add the pages of their
    # larger memory-mapped caches (file-backed, reclaimable), reported separately.
    out["peak_rss_mb"] = peak_rss_mb()

    by_n = {}
    for n in scaling:
        say(f"{size}: cached epoch at {n} training samples")
        root = scratch / f"data-{n}"
        args = common_args(configs, root, int(n / 0.7) + 50, n) + encoder_args(size, scratch)
        scaled = scratch / f"cache-{n}"
        fill_random_cache(scaled, cache, args)
        _, timer, _ = fit_once([*args, f"--data.init_args.feature_cache={scaled}"], epochs=2)
        by_n[str(n)] = timer.epochs[-1]
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(scaled, ignore_errors=True)
    out["epoch_seconds_cached_by_n"] = by_n
    out["peak_rss_mb_with_scaling"] = peak_rss_mb()
    return out


def to_markdown(results: dict[str, Any]) -> str:
    rows = [
        ("encoder forward (samples/s)", "encoder_samples_per_s", "{:.1f}"),
        ("cache build (samples/s)", "cache_build_samples_per_s", "{:.1f}"),
        ("train online (samples/s)", "train_online_samples_per_s", "{:.1f}"),
        ("train from cache (samples/s)", "train_cached_samples_per_s", "{:.1f}"),
        ("epoch speed-up from the cache", "epoch_speedup_cached", "{:.1f}x"),
        ("data wait share (cached)", "data_wait_fraction", "{:.1%}"),
        ("fit start-up to first batch, online (s)", "fit_online_startup_seconds", "{:.1f}"),
        ("fit start-up to first batch, from cache (s)", "fit_cached_startup_seconds", "{:.1f}"),
        ("fit from cache reads encoder weights", "fit_cached_loads_weights", "{}"),
        ("peak RSS (MB)", "peak_rss_mb", "{:.0f}"),
        ("peak RSS with the scaling rows (MB)", "peak_rss_mb_with_scaling", "{:.0f}"),
        ("trainable parameters", "trainable_params", "{:,}"),
        ("frozen parameters", "frozen_params", "{:,}"),
    ]
    sizes = list(results["sizes"])
    table = [
        [label, *(fmt.format(results["sizes"][s][key]) for s in sizes)] for label, key, fmt in rows
    ]
    for n in sorted(results["sizes"][sizes[0]]["epoch_seconds_cached_by_n"], key=int):
        cells = [f"{results['sizes'][s]['epoch_seconds_cached_by_n'][n]:.2f}" for s in sizes]
        table.append([f"cached epoch at {n} samples (s)", *cells])
    lines = [
        "# rlrt benchmark",
        "",
        f"Machine: `{json.dumps(results['machine'])}`",
        "",
        markdown_table(table, ["", *sizes]).rstrip("\n"),
    ]
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


def measure_in_child(
    size: str, args: argparse.Namespace, progress: Path | None = None
) -> dict[str, Any]:
    """`measure(size)` in a fresh process (so its peak memory is its own), showing its progress
    lines as they come (and, for the paper size, writing its figures so far to `progress`); a
    failure raises with the end of the child's stderr."""
    command = [
        sys.executable,
        "-m",
        "rlrt.cli",
        "bench",
        f"--one={size}",
        f"--samples={args.samples}",
        f"--scaling={args.scaling}",
        f"--configs={args.configs}",
        *(["--rehearse"] if args.rehearse else []),
        *([f"--progress={progress}"] if progress is not None else []),
    ]
    result = None
    with tempfile.TemporaryFile(mode="w+") as errors:
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True) as child:
            for line in child.stdout:
                if line.startswith("RLRT_BENCH_RESULT "):
                    result = json.loads(line.split(" ", 1)[1])
                elif line.startswith("rlrt "):
                    print("  " + line.rstrip(), flush=True)
        if child.returncode != 0 or result is None:
            errors.seek(0)
            kept = f" (the figures measured before: {progress})" if progress else ""
            raise RuntimeError(f"benchmark of {size} failed{kept}:\n{errors.read()[-4000:]}")
    return result


def run_bench(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="rlrt bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        default="tiny,base",
        help="comma-separated: tiny, base (CPU or GPU; results/bench.*) and paper (the paper's "
        "encoders, GPU only; results/bench_gpu.*)",
    )
    parser.add_argument(
        "--rehearse",
        action="store_true",
        help="paper size: run every stage with tiny shapes on any device "
        "(results/bench_gpu_rehearsal.*), to check the code path before spending GPU time",
    )
    parser.add_argument("--samples", type=int, default=512, help="training samples per size")
    parser.add_argument(
        "--scaling",
        default=",".join(map(str, SCALING_SIZES)),
        help="training-set sizes of the cached-epoch scaling rows",
    )
    parser.add_argument("--configs", default="configs")
    parser.add_argument("--output", default="results")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--progress", default=None, help=argparse.SUPPRESS)  # the child's
    args = parser.parse_args(argv)
    if args.one:  # the measuring child of one size
        if args.one == "paper":
            progress = None if args.progress is None else Path(args.progress)
            result = measure_paper(Path(args.configs), args.rehearse, progress)
        else:
            scaling = tuple(int(n) for n in args.scaling.split(","))
            result = measure(args.one, Path(args.configs), args.samples, scaling)
        print("RLRT_BENCH_RESULT " + json.dumps(result))
        return result
    sizes = args.sizes.split(",")
    unknown = sorted(set(sizes) - {"tiny", "base", "paper"})
    if unknown:
        raise ValueError(f"rlrt bench: unknown size {unknown[0]!r}; choose from tiny, base, paper")
    if args.rehearse and "paper" not in sizes:
        raise ValueError("rlrt bench: --rehearse applies to the paper size; add --sizes paper")
    if "paper" in sizes:
        require_gpu(args.rehearse)  # before any other size spends its minutes
    output = Path(args.output)
    results: dict[str, Any] = {"machine": machine(), "sizes": {}}
    for size in (s for s in sizes if s != "paper"):
        say(f"measuring {size} ...")
        results["sizes"][size] = measure_in_child(size, args)
    if results["sizes"]:
        atomic_write_json(output / "bench.json", results)
        markdown = to_markdown(results)
        atomic_write_text(output / "bench.md", markdown)
        print(markdown)
    if "paper" in sizes:
        say("measuring paper ..." + (" (rehearsal: tiny shapes)" if args.rehearse else ""))
        name = "bench_gpu_rehearsal" if args.rehearse else "bench_gpu"
        # the figures so far after each stage, `"complete": false`: what a run killed midway
        # (a time limit, a lost machine) still leaves; removed once the whole run is written
        progress = output / f"{name}.partial.json"
        paper = {"machine": machine(), "paper": measure_in_child("paper", args, progress)}
        atomic_write_json(output / f"{name}.json", paper)
        progress.unlink(missing_ok=True)
        markdown = paper_markdown(paper)
        atomic_write_text(output / f"{name}.md", markdown)
        print(markdown)
        results["paper"] = paper["paper"]
    return results
