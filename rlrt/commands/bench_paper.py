"""`rlrt bench --sizes paper`: the paper's encoder shapes on one GPU, through the project's own
commands, on generated data (results/bench_gpu.json and .md).

The encoders are `configs/model/rlrt.yaml`'s with random weights: an open_clip ViT-L-14
(`pretrained: null`) and a LLaMA-2-7B-shaped model (6.6B parameters, bfloat16, drawn on the GPU;
`LLAMA_2_7B_SHAPE`). The data: 2,000 demo movies in MM-IMDB's layout, 300x450 posters, plots of
128-160 words cut at 128 tokens. Stages, each with its samples/s and peak GPU memory:

- `bare_forward`: both encoders over every split's samples, decoded into memory beforehand; the
  floating-point operations per sample (PyTorch's `FlopCounterMode`), the TFLOP/s achieved and
  their share of `matmul_peak_tflops` (a large bfloat16 matmul timed on the same GPU);
- `cache_build`: `rlrt cache` of all splits in one command (target: >= 0.9x the bare rate);
- `train_online`: one training epoch with the encoders run on every batch;
- `fit_cached`: a fit from that cache: seconds from the command's start to its first batch,
  whether it read the frozen weights (it must not), one epoch's samples/s;
- `train_cached`: epochs from a cache of `cached_samples` rows of random features of the same
  shapes at a batch large enough for the CCA: samples/s (target: >= 20,000) and the share of the
  epoch spent between steps (target: < 10%);
- `cca_linalg_ms`: the float64 canonical correlations of the loss (Cholesky whitening, triangular
  solves, singular values; forward and backward) at the model's `(L_s, d_c, d_c)`, on the CPU and
  on the GPU;
- `cache_bytes_per_sample` and the host's peak resident memory.

Without a GPU the size is refused in one line; `--rehearse` runs every stage with tiny shapes on
whatever device there is (a check of the code path before spending GPU time, not a measurement).
"""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlrt.commands.bench_timing import (
    MEASURING_TRAINER_ARGS,
    config_files,
    fill_random_cache,
    fit_once,
    peak_rss_mb,
    say,
)
from rlrt.commands.cache import run_cache
from rlrt.engine.files import atomic_write_json
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.losses import correlations_from_covariances
from rlrt.reports.tables import markdown_table
from rlrt.tiny_encoders import write_llama_config, write_tiny_llama, write_tiny_vit_config

# LLaMA-2-7B's published architecture (its config.json), the text encoder of the paper.
LLAMA_2_7B_SHAPE = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
BUILD_TARGET = 0.9  # cache build rate / bare forward rate
CACHED_RATE_TARGET = 20_000.0  # training samples/s from the cache
DATA_WAIT_TARGET = 0.10  # share of a cached epoch spent between steps


@dataclass(frozen=True)
class Scale:
    """The sizes of one run of this benchmark."""

    movies: int  # demo movies (70/10/20 train/val/test)
    poster_size: tuple[int, int]  # (W, H) pixels
    plot_words: tuple[int, int]  # filler words per plot, inclusive range
    train_batch: int  # online training and the first cached fit
    eval_batch: int  # bare forward and cache build
    cached_batch: int  # training from the large random cache
    cached_samples: int  # rows of that cache
    cached_epochs: int  # epochs over it (the first is not counted)


# Plots of 128-160 words are 130-170 word-level tokens: every one is cut at 128, as in the paper.
# Batch 2048 for the cached rate: the head's step at the paper's shapes costs about as much at 64.
PAPER = Scale(2000, (300, 450), (128, 160), 64, 256, 2048, 16384, 5)
REHEARSAL = Scale(40, (30, 45), (20, 30), 8, 16, 32, 256, 3)


class NoGPUError(ValueError):
    """The paper size needs a CUDA device (a user error: one line, exit status 2)."""


def paper_args(configs: Path, root: Path, scratch: Path, scale: Scale, rehearse: bool) -> list[str]:
    """CLI arguments of `configs/model/rlrt.yaml` with random weights, on `root`'s demo data."""
    cuda = torch.cuda.is_available()
    args = [
        *config_files(configs, trainer="default", data="demo", model="rlrt"),
        f"--data.init_args.root={root}",
        f"--data.init_args.num_movies={scale.movies}",
        f"--data.init_args.poster_size=[{scale.poster_size[0]},{scale.poster_size[1]}]",
        f"--data.init_args.plot_words=[{scale.plot_words[0]},{scale.plot_words[1]}]",
        f"--data.init_args.batch_size={scale.train_batch}",
        f"--data.init_args.eval_batch_size={scale.eval_batch}",
        "--data.init_args.num_workers=4" if cuda else "--data.init_args.num_workers=1",
        "--model.image_encoder.init_args.pretrained=null",
        "--model.text_encoder.init_args.random_weights=true",
        f"--model.text_encoder.init_args.random_init_device={'cuda' if cuda else 'cpu'}",
        f"--trainer.precision={'bf16-mixed' if cuda else '32-true'}",
        *MEASURING_TRAINER_ARGS,
    ]
    if rehearse:  # tiny towers of the same kinds, and a common width the tiny data can fit
        vit = write_tiny_vit_config(scratch)
        llama = write_tiny_llama(scratch / "tiny-llama")
        return [
            *args,
            f"--model.image_encoder.init_args.config_file={vit}",
            f"--model.image_encoder.init_args.model_name={vit.stem}",
            "--model.image_encoder.init_args.image_size=32",
            "--model.image_encoder.init_args.layers=2",
            "--model.image_encoder.init_args.token_grid=2",
            f"--model.text_encoder.init_args.model_name_or_path={llama}",
            "--model.text_encoder.init_args.layers=2",
            "--model.text_encoder.init_args.dtype=float32",
            "--model.common_dim=8",
            "--model.fusion_dim=16",
            "--model.hidden_dim=16",
            "--model.cca_window=128",
        ]
    llama = write_llama_config(scratch / "llama-2-7b-shape", LLAMA_2_7B_SHAPE)
    return [*args, f"--model.text_encoder.init_args.model_name_or_path={llama}"]


def device_of_run() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextlib.contextmanager
def gpu_peak(out: dict[str, Any], key: str):
    """Record the peak GPU memory (MiB) allocated within, as `out[key]` (None without a GPU)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        out[key] = torch.cuda.max_memory_allocated() / 2**20
    else:
        out[key] = None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(device: torch.device, size: int, repeats: int = 20) -> float:
    """TFLOP/s of a `size`-cubed matmul (bfloat16 on a GPU, float32 on a CPU), best of 3 timings
    of `repeats` products: the ceiling the encoders' achieved rate is compared with."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up (kernel selection)
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 * repeats / best / 1e12


def counted_flops(run) -> int:
    """Floating-point operations of `run()` as PyTorch's `FlopCounterMode` counts them (matrix
    products and attention: the bulk of a transformer's work)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def bare_forward(model, items: list[dict[str, Any]], batch_size: int) -> dict[str, Any]:
    """Both encoders over `items` (decoded samples), batch by batch, nothing else: samples/s,
    FLOPs per sample (counted on the first batch, which is also the untimed warm-up)."""
    device = device_of_run()
    image_encoder, text_encoder = model.image_encoder.to(device), model.text_encoder.to(device)
    batches = [
        (torch.stack([i["image"] for i in chunk]), [i["text"] for i in chunk])
        for chunk in (items[k : k + batch_size] for k in range(0, len(items), batch_size))
    ]
    images, texts = batches[0]
    flops = counted_flops(lambda: (image_encoder(images.to(device)), text_encoder(texts)))
    synchronize(device)
    start = time.perf_counter()
    for images, texts in batches:
        image_encoder(images.to(device))
        text_encoder(texts)
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "samples": len(items),
        "seconds": seconds,
        "samples_per_s": len(items) / seconds,
        "flops_per_sample": flops / len(batches[0][1]),
    }


def cca_linalg_ms(layers: int, dim: int, device: torch.device, repeats: int = 10) -> float:
    """Milliseconds of the loss's float64 canonical correlations (forward and backward) for
    `layers` pairs of `(dim, dim)` covariances on `device`: median of `repeats`."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(layers, 4 * dim, dim, generator=generator, dtype=torch.float64)
    y = x + torch.randn(layers, 4 * dim, dim, generator=generator, dtype=torch.float64)
    s_xx, s_yy, s_xy = (a.mT @ b / (4 * dim) for a, b in ((x, x), (y, y), (x, y)))
    s_xx, s_yy, s_xy = (s.to(device).requires_grad_() for s in (s_xx, s_yy, s_xy))
    times = []
    for _ in range(repeats + 1):  # the first warms up (solver set-up, allocations)
        synchronize(device)
        start = time.perf_counter()
        correlations_from_covariances(s_xx, s_yy, s_xy, 1e-3).sum().backward()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times[1:]))


def release_memory() -> None:
    """Free what the stage before left (its models sit in reference cycles of Lightning's
    objects), so each stage's GPU peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def require_gpu(rehearse: bool) -> None:
    """Refuse the paper size, in one line, where no GPU is visible (unless rehearsing)."""
    if not rehearse and not torch.cuda.is_available():
        raise NoGPUError(
            "rlrt bench --sizes paper needs a CUDA GPU and none is visible here; run it on a GPU "
            "machine, or add --rehearse to run its stages with tiny shapes on this one"
        )


def measure_paper(configs: Path, rehearse: bool, progress: Path | None = None) -> dict[str, Any]:
    """Every figure of the paper size (or its rehearsal), the figures so far written to
    `progress` after each stage; the scratch folder is removed."""
    require_gpu(rehearse)
    scratch = Path(tempfile.mkdtemp(prefix="rlrt-bench-paper-"))
    try:
        scale = REHEARSAL if rehearse else PAPER
        return _measure_paper(configs, scale, rehearse, scratch, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_stage(out: dict[str, Any], name: str, stage: Callable[[], None], progress: Path | None):
    """Run one stage; a failure is recorded in `out["failed"][name]` (one line) and the stages
    that do not need this one still run, so one GPU session measures all it can. After each
    stage the figures so far go to `progress` (`"complete": false` in it)."""
    try:
        stage()
    except Exception as error:  # noqa: BLE001 - recorded, and the run goes on
        out.setdefault("failed", {})[name] = (
            f"{type(error).__name__}: {' '.join(str(error).split())}"
        )
        say(f"paper: {name} failed: {out['failed'][name][:300]}")
    finally:
        release_memory()
        if progress is not None:
            atomic_write_json(progress, {**out, "complete": False})


def _measure_paper(
    configs: Path, scale: Scale, rehearse: bool, scratch: Path, progress: Path | None = None
) -> dict[str, Any]:
    device = device_of_run()
    out: dict[str, Any] = {"rehearsal": rehearse, "scale": asdict(scale), "device": str(device)}
    base = paper_args(configs, scratch / "data", scratch, scale, rehearse)
    cache = scratch / "cache"
    cached_args = [*base, f"--data.init_args.feature_cache={cache}"]

    say(f"paper: {scale.movies} movies of {scale.poster_size[0]}x{scale.poster_size[1]} posters")
    start = time.perf_counter()
    cli = RLRTCLI(args=base, run=False, save_config_callback=None)
    data, model = cli.datamodule, cli.model
    data.prepare_data()
    data.setup("fit")
    data.setup("test")
    out["data_generation_seconds"] = time.perf_counter() - start
    out["encoders"] = {
        "image": model.image_encoder.model_name,
        "text": f"{model.text_encoder.model_type}, {model.text_encoder.num_blocks} blocks of "
        f"{model.text_encoder.width}",
    }
    layer_pairs, common_dim = len(model.image_encoder.layer_indices), model.hparams.common_dim
    out["samples"] = sum(len(data.dataset(s)) for s in ("train", "val", "test"))
    n_train = len(data.dataset("train"))

    def bare() -> None:
        say("paper: bare forward of both encoders over every split")
        items = [
            dataset[i]
            for dataset in (data.dataset(s) for s in ("train", "val", "test"))
            for i in range(len(dataset))
        ]
        with gpu_peak(out, "bare_forward_gpu_peak_mib"):
            start = time.perf_counter()
            loaded = [
                encoder.to(device).load() for encoder in (model.image_encoder, model.text_encoder)
            ]
            out["encoders_load_seconds"] = time.perf_counter() - start
            out["frozen_params"] = sum(p.numel() for m in loaded for p in m.parameters())
            out["bare_forward"] = bare_forward(model, items, scale.eval_batch)

    def peak() -> None:
        out["matmul_peak_tflops"] = matmul_peak_tflops(
            device, 8192 if device.type == "cuda" else 512
        )
        bare = out["bare_forward"]
        bare["tflops"] = bare["flops_per_sample"] * bare["samples_per_s"] / 1e12
        bare["share_of_matmul_peak"] = bare["tflops"] / out["matmul_peak_tflops"]

    def build() -> None:
        say("paper: rlrt cache, every split in one command")
        with gpu_peak(out, "cache_build_gpu_peak_mib"):
            start = time.perf_counter()
            report = run_cache(cached_args)
            command_seconds = time.perf_counter() - start
        samples, seconds = sum(report.samples.values()), sum(report.seconds.values())
        bare = out.get("bare_forward", {}).get("samples_per_s")
        out["cache_build"] = {
            "samples": samples,
            "seconds": seconds,
            "command_seconds": command_seconds,
            "samples_per_s": samples / seconds,
            "ratio_to_bare_forward": None if bare is None else samples / seconds / bare,
        }
        out["cache_bytes_per_sample"] = folder_bytes(cache / "train") / report.samples["train"]

    def online() -> None:
        say("paper: one online training epoch")
        with gpu_peak(out, "train_online_gpu_peak_mib"):
            fitted, timer, startup = fit_once(base)
        out["train_online"] = {
            "samples": n_train,
            "samples_per_s": n_train / timer.epochs[0],
            "startup_seconds": startup,
        }
        out["trainable_params"] = sum(p.numel() for p in fitted.model.trainable_parameters())

    def fit_cached() -> None:
        say("paper: fit from the cache")
        with gpu_peak(out, "fit_cached_gpu_peak_mib"):
            fitted, timer, startup = fit_once(cached_args)
        encoders = (fitted.model.image_encoder, fitted.model.text_encoder)
        out["fit_cached"] = {
            "startup_seconds": startup,
            "loads_weights": any(encoder.is_loaded for encoder in encoders),
            "samples_per_s": n_train / timer.epochs[0],
            "batch_size": scale.train_batch,
        }

    def train_cached() -> None:
        n = scale.cached_samples
        say(f"paper: training from a cache of {n} random rows, batch {scale.cached_batch}")
        sized = ("--data.init_args.num_movies", "--data.init_args.batch_size")
        paper_only = ("--data.init_args.poster_size", "--data.init_args.plot_words")
        scaled_args = [
            a
            for a in paper_args(configs, scratch / f"data-{n}", scratch, scale, rehearse)
            if not a.startswith((*sized, *paper_only))
        ]
        scaled_args += [
            f"--data.init_args.num_movies={int(n / 0.7) + 50}",
            f"--data.init_args.limit_samples={n}",
            f"--data.init_args.batch_size={scale.cached_batch}",
        ]
        scaled = scratch / f"cache-{n}"
        start = time.perf_counter()
        fill_random_cache(scaled, cache, scaled_args)
        out["random_cache_seconds"] = time.perf_counter() - start
        with gpu_peak(out, "train_cached_gpu_peak_mib"):
            fitted, timer, _ = fit_once(
                [*scaled_args, f"--data.init_args.feature_cache={scaled}"],
                epochs=scale.cached_epochs,
            )
        epoch = float(np.median(timer.epochs[1:]))
        out["train_cached"] = {
            "samples": n,
            "batch_size": scale.cached_batch,
            "epoch_seconds": epoch,
            "samples_per_s": n / epoch,
            "data_wait_fraction": timer.wait_fraction(skip=1),
            "in_device_memory": fitted.datamodule._cached["train"].resident,
        }
        shutil.rmtree(scaled, ignore_errors=True)

    def linalg() -> None:
        say("paper: the CCA's float64 linear algebra, CPU and GPU")
        timings = {"cpu": cca_linalg_ms(layer_pairs, common_dim, torch.device("cpu"))}
        if device.type == "cuda":
            timings["cuda"] = cca_linalg_ms(layer_pairs, common_dim, device)
        out["cca_linalg_ms"] = timings

    stages = {
        "bare_forward": bare,
        "matmul_peak": peak,
        "cache_build": build,
        "train_online": online,
        "fit_cached": fit_cached,
        "train_cached": train_cached,
        "cca_linalg": linalg,
    }
    for name, stage in stages.items():
        run_stage(out, name, stage, progress)
        if name == "bare_forward":
            del cli, model  # the encoders' memory, before the commands build their own
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def verdict(measured: float, target: float, higher_is_better: bool = True) -> str:
    """`met` or `missed by N%` of the target."""
    ok = measured >= target if higher_is_better else measured < target
    if ok:
        return "met"
    return f"missed by {abs(measured - target) / target:.0%} of the target"


def shown(value: Any, spec: str = "") -> str:
    """`value` formatted by `spec`, or `-` when it was not measured."""
    return "-" if value is None else format(value, spec)


def target_line(label: str, measured: Any, spec: str, target: float, higher: bool = True) -> str:
    """`- <label>: <measured>, met` (or how far it missed), or `not measured`."""
    if measured is None:
        return f"- {label}: not measured (see the failed stages)"
    return f"- {label}: {format(measured, spec)}, " + verdict(measured, target, higher)


def paper_markdown(results: dict[str, Any]) -> str:
    """results/bench_gpu.md: a row per stage and the issue's targets, each met or missed; a
    stage that failed shows `-` and is listed with its error."""
    r = results["paper"]
    bare, build = r.get("bare_forward", {}), r.get("cache_build", {})
    online, fit, cached = (
        r.get("train_online", {}),
        r.get("fit_cached", {}),
        r.get("train_cached", {}),
    )
    linalg = r.get("cca_linalg_ms", {})
    rows = [
        [
            "bare forward, both encoders",
            shown(bare.get("samples_per_s"), ",.1f"),
            shown(r.get("bare_forward_gpu_peak_mib"), ",.0f"),
            f"{shown(bare.get('tflops'), '.1f')} TFLOP/s = "
            f"{shown(bare.get('share_of_matmul_peak'), '.0%')} of the matmul peak",
        ],
        [
            "rlrt cache, all splits",
            shown(build.get("samples_per_s"), ",.1f"),
            shown(r.get("cache_build_gpu_peak_mib"), ",.0f"),
            f"{shown(build.get('ratio_to_bare_forward'), '.2f')}x the bare forward; "
            f"command {shown(build.get('command_seconds'), '.1f')} s",
        ],
        [
            "one online training epoch",
            shown(online.get("samples_per_s"), ",.1f"),
            shown(r.get("train_online_gpu_peak_mib"), ",.0f"),
            f"start-up {shown(online.get('startup_seconds'), '.1f')} s",
        ],
        [
            f"fit from the cache, batch {r['scale']['train_batch']}",
            shown(fit.get("samples_per_s"), ",.1f"),
            shown(r.get("fit_cached_gpu_peak_mib"), ",.0f"),
            f"start-up {shown(fit.get('startup_seconds'), '.1f')} s; "
            f"reads frozen weights: {shown(fit.get('loads_weights'))}",
        ],
        [
            f"training from the cache, batch {r['scale']['cached_batch']}",
            shown(cached.get("samples_per_s"), ",.0f"),
            shown(r.get("train_cached_gpu_peak_mib"), ",.0f"),
            f"{r['scale']['cached_samples']} rows; data wait "
            f"{shown(cached.get('data_wait_fraction'), '.1%')}; "
            f"in device memory: {shown(cached.get('in_device_memory'))}",
        ],
    ]
    flops = bare.get("flops_per_sample")
    lines = [
        "# rlrt benchmark at the paper's sizes"
        + (" (rehearsal, tiny shapes)" if r["rehearsal"] else ""),
        "",
        f"Machine: `{json.dumps(results['machine'], sort_keys=True)}`",
        "",
        f"{r['samples']} samples; encoders {r['encoders']['image']} and "
        f"{r['encoders']['text']} (random weights); "
        f"{shown(r.get('frozen_params'), ',')} frozen and "
        f"{shown(r.get('trainable_params'), ',')} trained parameters; "
        f"{shown(None if flops is None else flops / 1e9, ',.4g')} GFLOP per sample; "
        f"matmul peak {shown(r.get('matmul_peak_tflops'), '.1f')} TFLOP/s.",
        "",
        markdown_table(rows, ["stage", "samples/s", "GPU peak MiB", "note"]).rstrip("\n"),
        "",
        f"Cache: {shown(r.get('cache_bytes_per_sample', 0) / 1024 or None, ',.0f')} KiB per "
        f"sample (float16). CCA float64 linear algebra (forward + backward): "
        f"CPU {shown(linalg.get('cpu'), '.2f')} ms, GPU {shown(linalg.get('cuda'), '.2f')} ms. "
        f"Host peak RSS {r['peak_rss_mb']:,.0f} MB.",
        "",
        "Targets:",
        target_line(
            f"cache build >= {BUILD_TARGET}x the bare forward",
            build.get("ratio_to_bare_forward"),
            ".2f",
            BUILD_TARGET,
        ),
        target_line(
            f"training from the cache >= {CACHED_RATE_TARGET:,.0f} samples/s",
            cached.get("samples_per_s"),
            ",.0f",
            CACHED_RATE_TARGET,
        ),
        target_line(
            f"data wait < {DATA_WAIT_TARGET:.0%}",
            cached.get("data_wait_fraction"),
            ".1%",
            DATA_WAIT_TARGET,
            higher=False,
        ),
        "- a fit from the cache reads no frozen weights: "
        + {None: "not measured", False: "met", True: "missed"}[fit.get("loads_weights")],
    ]
    failed = r.get("failed", {})
    if failed:
        lines += ["", "Failed stages:", *(f"- {name}: {error}" for name, error in failed.items())]
    return "\n".join(lines) + "\n"
