r"""`rlrt robustness`: evaluate one checkpoint over a grid of missing-modality and noise settings.

    rlrt robustness --ckpt_path RUN/checkpoints/last.ckpt --output results/robustness/rlrt \
        [--config ...] [--data.* / --model.* / --trainer.* overrides]

The grid (docs/datasets.md): missing rate 0-100% in steps of 10 for each type (`image`, `text`,
`both`), and noise level 0-10 for each modality, for each protocol seed. Without `--config` the
checkpoint's own run config (`RUN/config.yaml`, saved by `rlrt fit`) is used.

How: one ordinary `rlrt test` run on the checkpoint gives the clean result and builds the model,
data module and trainer; every other grid point is `trainer.test` on the same objects with one
perturbation callback (`callbacks.MissingModality` or `callbacks.ModalityNoise`, by class_path)
attached, so the frozen encoders are loaded once. Perturbation callbacks of the config are
dropped (`--trainer.callbacks=[]`): the grid sets the perturbation. Settings at rate 0 or level 0
are the clean setting and are evaluated once. The test metrics are written into `--output`:
`robustness.csv` (one row per setting and metric, protocol columns included), `robustness.md`
and `robustness.png` (see `rlrt.reports.robustness`); each build's `rlrt test` run keeps its
config.yaml, metrics.json and raw test logs in `OUTPUT/runs/robustness/version_N`.

With a feature cache in the config, the missing-modality grid runs on the cached features (the
dummy inputs' features are cached too); noise needs the raw pixels and words, so the noise grid
runs on a second build without the cache. The `features` column says which (`cache`, `online`);
each part has its own clean result (cached features are float16: they may differ slightly).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from lightning.pytorch.cli import instantiate_class
from tqdm.auto import tqdm

from callbacks.perturb import MAX_NOISE_LEVEL
from rlrt.engine.console import quiet_restores
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.metrics import is_reported
from rlrt.reports.robustness import COLUMNS, write_report


@dataclass(frozen=True)
class Setting:
    """One grid point: a missing type at a rate, or a noise modality at a level, and a seed."""

    perturbation: str  # "missing" or "noise"
    kind: str  # missing type (image | text | both) or noise modality (image | text)
    amount: float  # missing rate in [0, 1] or noise level in [0, 10]
    seed: int

    @property
    def clean(self) -> bool:
        return self.amount == 0

    def callback(self, strategy: str | None, fraction: float) -> dict[str, Any] | None:
        """The perturbation callback as a class_path dict (None for the clean setting)."""
        if self.clean:
            return None
        if self.perturbation == "missing":
            init = {"eval_rate": self.amount, "eval_type": self.kind, "seed": self.seed}
            return {
                "class_path": "callbacks.MissingModality",
                "init_args": {**init, "strategy": strategy},
            }
        level = {f"{self.kind}_level": self.amount}
        return {
            "class_path": "callbacks.ModalityNoise",
            "init_args": {**level, "seed": self.seed, "fraction": fraction},
        }

    def protocol(self, strategy: str, fraction: float) -> dict[str, Any]:
        """The protocol columns of this setting's rows."""
        missing = self.perturbation == "missing"
        return {
            "perturbation": self.perturbation,
            "missing_type": self.kind if missing else "",
            "missing_rate": self.amount if missing else 0.0,
            "noise_modality": "" if missing else self.kind,
            "noise_level": 0.0 if missing else self.amount,
            "noise_fraction": fraction,
            "missing_strategy": strategy,
            "seed": self.seed,
        }


def build_grid(
    *,
    rates: list[float],
    types: list[str],
    levels: list[float],
    modalities: list[str],
    seeds: list[int],
) -> list[Setting]:
    """Every (type, rate) and (modality, level) for every seed, in that order."""
    grid = []
    for seed in seeds:
        grid += [Setting("missing", t, float(r), seed) for t in types for r in rates]
        grid += [Setting("noise", m, float(v), seed) for m in modalities for v in levels]
    return grid


class Evaluator:
    """Test runs of one checkpoint on one built model, data module and trainer.

    Building is an ordinary `rlrt test` run (no perturbation): its metrics are the clean result.
    Calling it with a setting runs `trainer.test` with that setting's perturbation callback.
    `source` says where the features come from: `cache` (a feature cache) or `online`.
    """

    def __init__(
        self, cli_args: list[str], checkpoint: str, strategy: str | None, fraction: float
    ) -> None:

        self.cli = RLRTCLI(args=["test", *cli_args, "--verbose=false", "--ckpt_path", checkpoint])
        self.checkpoint = checkpoint
        self.strategy = strategy
        self.fraction = fraction
        self.clean = dict(self.cli.test_metrics)
        cached = getattr(self.cli.datamodule, "feature_cache", None) is not None
        self.source = "cache" if cached else "online"

    def __call__(self, setting: Setting) -> dict[str, float]:
        callback = setting.callback(self.strategy, self.fraction)
        if callback is None:
            return self.clean
        trainer = self.cli.trainer
        added = instantiate_class((), callback)
        trainer.callbacks.append(added)
        try:
            results = trainer.test(
                self.cli.model,
                datamodule=self.cli.datamodule,
                ckpt_path=self.checkpoint,
                verbose=False,
                weights_only=True,  # as every rlrt command: never unpickle a checkpoint
            )
        finally:
            trainer.callbacks.remove(added)
        return {k: float(v) for k, v in results[0].items()}


def evaluate_grid(
    grid: list[Setting],
    evaluate: Callable[[Setting], tuple[dict[str, float], str]],
    *,
    strategy: str,
    fraction: float,
    model: str,
    checkpoint: str,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate each grid point and return the results frame (columns `COLUMNS`).

    Args:
        grid: the settings.
        evaluate: setting -> (test metrics `{"test/<m>": v}`, features source).
        strategy: the missing-modality substitution in effect (recorded).
        fraction: the noised share of the samples (recorded).
        model, checkpoint: recorded in every row.
    """
    rows = []
    for setting in tqdm(grid, desc="robustness grid", disable=not progress):
        metrics, source = evaluate(setting)
        protocol = setting.protocol(strategy, fraction)
        for key, value in metrics.items():
            name = key.removeprefix("test/")
            # Losses are not results; a metric without a value (`cca_corr` where no sample keeps
            # both modalities) has no row.
            if not is_reported(name) or not math.isfinite(value):
                continue
            rows.append(
                {
                    "model": model,
                    "checkpoint": checkpoint,
                    **protocol,
                    "features": source,
                    "metric": name,
                    "value": float(value),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


MISSING_TYPES = ("image", "text", "both")
NOISE_MODALITIES = ("image", "text")


def _floats(text: str, option: str, low: float, high: float) -> list[float]:
    """The comma-separated numbers of `option`, each in [low, high]; else one line naming it."""
    values = []
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # NaN and infinity too
            raise ValueError(
                f"{option} {text}: {item!r} is not a number in [{low:g}, {high:g}]; give "
                f"comma-separated values in that range, e.g. {option} {low:g},{high:g}"
            )
        values.append(value)
    return values


def _names(text: str, option: str, accepted: tuple[str, ...]) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    for name in names:
        if name not in accepted:
            raise ValueError(
                f"{option} {text}: {name!r} is not one of {', '.join(accepted)}; give "
                "comma-separated names from those"
            )
    return names


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"{option} {text}: give comma-separated integers, e.g. {option} 0,1,2"
        ) from None


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="rlrt robustness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Other arguments (--config, --data.*, --model.*, --trainer.*) go to `rlrt test`.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint to evaluate")
    parser.add_argument("--output", required=True, help="folder for robustness.csv/.md/.png")
    parser.add_argument("--name", default=None, help="model name in the results (default: run)")
    parser.add_argument(
        "--rates",
        default=",".join(f"{r / 10:g}" for r in range(11)),
        help="missing rates, comma-separated, each in [0, 1]",
    )
    parser.add_argument("--types", default="image,text,both", help="missing types")
    parser.add_argument(
        "--noise_levels",
        default=",".join(str(v) for v in range(11)),
        help=f"noise levels, comma-separated, each in [0, {MAX_NOISE_LEVEL}]",
    )
    parser.add_argument("--noise_modalities", default="image,text")
    parser.add_argument("--seeds", default="0", help="protocol seeds, comma-separated")
    parser.add_argument(
        "--strategy",
        choices=["dummy", "zero"],
        default=None,
        help="what replaces a missing modality (default: the model's missing_strategy)",
    )
    parser.add_argument(
        "--noise_fraction", type=float, default=0.5, help="noised share of the samples, in [0, 1]"
    )
    parser.add_argument(
        "--metric", default=None, help="the one metric to plot (default: the task scores)"
    )
    return parser.parse_known_args(argv)


def run_config(checkpoint: Path, overrides: list[str]) -> list[str]:
    """The user's `--config` arguments, or else the checkpoint's run config."""
    if any(a == "--config" or a.startswith("--config=") for a in overrides):
        return []
    saved = checkpoint.resolve().parent.parent / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(
            f"no --config given and no run config at {saved}; "
            "pass the trainer, data and model configs the checkpoint was trained with"
        )
    return ["--config", str(saved)]


def run_robustness(argv: list[str]) -> pd.DataFrame:
    args, overrides = parse_args(argv)
    # the grid is checked before anything loads or is written (user errors: one line, exit 2)
    grid = build_grid(
        rates=_floats(args.rates, "--rates", 0.0, 1.0),
        types=_names(args.types, "--types", MISSING_TYPES),
        levels=_floats(args.noise_levels, "--noise_levels", 0.0, MAX_NOISE_LEVEL),
        modalities=_names(args.noise_modalities, "--noise_modalities", NOISE_MODALITIES),
        seeds=_ints(args.seeds, "--seeds"),
    )
    _floats(str(args.noise_fraction), "--noise_fraction", 0.0, 1.0)
    checkpoint = Path(args.ckpt_path)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint} (--ckpt_path)")
    output = Path(args.output)
    logger = {  # each build's config.yaml, metrics.json and raw test logs, a new version each
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(output / "runs"), "name": "robustness"},
    }
    quiet = [
        "--trainer.callbacks=[]",
        f"--trainer.logger={json.dumps(logger)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    cli_args = [*run_config(checkpoint, overrides), *quiet, *overrides]
    print(f"robustness: {len(grid)} grid points on {checkpoint}")
    with quiet_restores():  # one checkpoint, restored at every grid point: named once, above
        return _run_grid(args, grid, cli_args, checkpoint, output)


def _run_grid(
    args: argparse.Namespace,
    grid: list[Setting],
    cli_args: list[str],
    checkpoint: Path,
    output: Path,
) -> pd.DataFrame:
    primary = Evaluator(cli_args, str(checkpoint), args.strategy, args.noise_fraction)
    raw: list[Evaluator] = []  # built on first need: noise on the raw inputs

    def evaluate(setting: Setting) -> tuple[dict[str, float], str]:
        evaluator = primary
        if setting.perturbation == "noise" and primary.source == "cache":
            if not raw:
                print("robustness: noise needs the raw inputs; evaluating it without the cache")
                no_cache = [*cli_args, "--data.init_args.feature_cache=null"]
                raw.append(Evaluator(no_cache, str(checkpoint), args.strategy, args.noise_fraction))
            evaluator = raw[0]
        return evaluator(setting), evaluator.source

    trainer = primary.cli.trainer
    frame = evaluate_grid(
        grid,
        evaluate,
        strategy=args.strategy or primary.cli.model.missing_strategy,
        fraction=args.noise_fraction,
        model=args.name or checkpoint.resolve().parent.parent.name,
        checkpoint=str(checkpoint),
        progress=trainer.is_global_zero,
    )
    if trainer.is_global_zero:
        write_report(frame, output, args.metric)
        print(f"wrote {output / 'robustness.csv'}, robustness.md and robustness.png")
    return frame
