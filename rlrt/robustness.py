"""`rlrt robustness`: evaluate one checkpoint over a grid of missing-modality and noise settings.

    rlrt robustness --ckpt_path RUN/checkpoints/last.ckpt --output results/robustness/rlrt \
        [--config ...] [--data.* / --model.* / --trainer.* overrides]

The grid (DATASETS.md): missing rate 0-100% in steps of 10 for each type (`image`, `text`,
`both`), and noise level 0-10 for each modality, for each protocol seed. Without `--config` the
checkpoint's own run config (`RUN/config.yaml`, saved by `rlrt fit`) is used.

How: one ordinary `rlrt test` run on the checkpoint gives the clean result and builds the model,
data module and trainer; every other grid point is `trainer.test` on the same objects with one
perturbation callback (`callbacks.MissingModality` or `callbacks.ModalityNoise`, by class_path)
attached, so the frozen encoders are loaded once. Perturbation callbacks of the config are
dropped (`--trainer.callbacks=[]`): the grid sets the perturbation. Settings at rate 0 or level 0
are the clean setting and are evaluated once. The test metrics are written into `--output`:
`robustness.csv` (one row per setting and metric, protocol columns included), `robustness.md`
and `robustness.png` (see `rlrt.robustness_report`); the clean `rlrt test` run also leaves its
`metrics.json` there.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from lightning.pytorch.cli import instantiate_class
from tqdm.auto import tqdm

from rlrt.robustness_report import COLUMNS, write_report

LOSS_KEYS = ("loss", "task_loss", "cca")


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


def evaluate_grid(
    grid: list[Setting],
    evaluate: Callable[[dict[str, Any] | None], dict[str, float]],
    *,
    strategy: str,
    fraction: float,
    model: str,
    checkpoint: str,
    callback_strategy: str | None = None,
    clean: dict[str, float] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate each grid point (the clean setting once) and return the results frame.

    Args:
        grid: the settings.
        evaluate: callback class_path dict (or None: clean) -> test metrics `{"test/<m>": v}`.
        strategy: the missing-modality substitution in effect (recorded).
        fraction: the noised share of the samples.
        model, checkpoint: recorded in every row.
        callback_strategy: the strategy given to `MissingModality` (None: the model's).
        clean: the clean metrics when already known (then not evaluated again).
    """
    rows = []
    for setting in tqdm(grid, desc="robustness grid", disable=not progress):
        if setting.clean:
            if clean is None:
                clean = evaluate(None)
            metrics = clean
        else:
            metrics = evaluate(setting.callback(callback_strategy, fraction))
        protocol = setting.protocol(strategy, fraction)
        for key, value in metrics.items():
            name = key.removeprefix("test/")
            if name in LOSS_KEYS:
                continue
            rows.append(
                {
                    "model": model,
                    "checkpoint": checkpoint,
                    **protocol,
                    "metric": name,
                    "value": float(value),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="rlrt robustness",
        description=__doc__.split("\n\n")[0],
        allow_abbrev=False,
        epilog="Other arguments (--config, --data.*, --model.*, --trainer.*) go to `rlrt test`.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the checkpoint to evaluate")
    parser.add_argument("--output", required=True, help="folder for robustness.csv/.md/.png")
    parser.add_argument("--name", default=None, help="model name in the results (default: run)")
    parser.add_argument("--rates", default=",".join(f"{r / 10:g}" for r in range(11)))
    parser.add_argument("--types", default="image,text,both", help="missing types")
    parser.add_argument("--noise_levels", default=",".join(str(v) for v in range(11)))
    parser.add_argument("--noise_modalities", default="image,text")
    parser.add_argument("--seeds", default="0", help="protocol seeds, comma-separated")
    parser.add_argument(
        "--strategy",
        choices=["dummy", "zero"],
        default=None,
        help="what replaces a missing modality (default: the model's missing_strategy)",
    )
    parser.add_argument("--noise_fraction", type=float, default=0.5)
    parser.add_argument("--metric", default=None, help="metric to plot (default: f1_macro/acc)")
    return parser.parse_known_args(argv)


def run_config(checkpoint: Path, overrides: list[str]) -> list[str]:
    """The user's `--config` arguments, or else the checkpoint's run config."""
    if any(a == "--config" or a.startswith("--config=") for a in overrides):
        return []
    saved = checkpoint.resolve().parent.parent / "config.yaml"
    if not saved.is_file():
        raise SystemExit(
            f"rlrt robustness: no --config given and no run config at {saved}; "
            "pass the trainer, data and model configs the checkpoint was trained with"
        )
    return ["--config", str(saved)]


def run_robustness(argv: list[str]) -> pd.DataFrame:
    from rlrt.cli import RLRTCLI

    args, overrides = parse_args(argv)
    checkpoint = Path(args.ckpt_path)
    if not checkpoint.is_file():
        raise SystemExit(f"rlrt robustness: checkpoint not found: {checkpoint}")
    output = Path(args.output)
    grid = build_grid(
        rates=_floats(args.rates),
        types=[t for t in args.types.split(",") if t],
        levels=_floats(args.noise_levels),
        modalities=[m for m in args.noise_modalities.split(",") if m],
        seeds=[int(s) for s in args.seeds.split(",") if s],
    )
    quiet = [
        "--trainer.callbacks=[]",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.default_root_dir={output}",
    ]
    cli = RLRTCLI(
        args=[
            "test",
            *run_config(checkpoint, overrides),
            *quiet,
            *overrides,
            "--ckpt_path",
            str(checkpoint),
        ]
    )
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule

    def evaluate(callback: dict[str, Any] | None) -> dict[str, float]:
        added = [] if callback is None else [instantiate_class((), callback)]
        trainer.callbacks.extend(added)
        try:
            results = trainer.test(
                model, datamodule=datamodule, ckpt_path=str(checkpoint), verbose=False
            )
        finally:
            for item in added:
                trainer.callbacks.remove(item)
        return {k: float(v) for k, v in results[0].items()}

    strategy = args.strategy or model.missing_strategy
    frame = evaluate_grid(
        grid,
        evaluate,
        strategy=strategy,
        fraction=args.noise_fraction,
        model=args.name or checkpoint.resolve().parent.parent.name,
        checkpoint=str(checkpoint),
        callback_strategy=args.strategy,
        clean=cli.test_metrics,  # the `rlrt test` run above: no perturbation
        progress=trainer.is_global_zero,
    )
    if trainer.is_global_zero:
        write_report(frame, output, args.metric)
        print(f"wrote {output / 'robustness.csv'}, robustness.md and robustness.png")
    return frame
