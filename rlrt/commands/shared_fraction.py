r"""`rlrt shared-fraction`: when does RLRT help? The same models trained and tested on demo data
that differ only in how much label information both modalities carry.

For every `--fractions` value f, the demo data is generated with `shared_fraction=f` (round(23 f)
genres shown by poster and plot, the rest half image-only, half text-only) into
`DATA_ROOT/shared_<f>`, and one feature cache per f is built under `WORKDIR/cache` (the cache
folder is a hash of the data settings, f included) and shared by every model. Then, for every
variant (`--variants_dir`) and training seed: `rlrt fit` (the trainer config's epochs and its
checkpoint rule, the same for every model: the best validation task metric) and `rlrt
robustness` on the best checkpoint for complete data, 70% image missing, 70% text missing, no
image and no text, over the protocol seeds `--seeds`.

Re-entrant: each finished (f, variant, seed) cell leaves `WORKDIR/shared_<f>/<variant>/
seed<N>/cell.csv`; a later run skips those cells and redoes a cut one from scratch. After
every cell the combined report is rewritten into `--output` (`shared_fraction.csv`, `.md`,
`.png`, see `rlrt.reports.shared_fraction`), marked partial until every cell is done.

    rlrt shared-fraction --config configs/trainer/demo.yaml --config configs/data/demo.yaml \
        --config configs/model/demo.yaml --config configs/model/demo_mobilenet.yaml \
        --fractions 0,0.33,0.67,1 --train_seeds 0,1,2 --seeds 0,1 --output docs/evidence

`make evidence-shared` runs the study of docs/evidence.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from data_modules.fakes.demo import check_shared_fraction, genre_groups
from rlrt.commands.compare import variant_configs
from rlrt.commands.fit_then_test import best_checkpoint, with_cache
from rlrt.commands.robustness import run_robustness
from rlrt.engine.files import atomic_write_text
from rlrt.engine.lightning_cli import RLRTCLI, parse_only
from rlrt.reports.shared_fraction import COLUMNS, tidy, write_report

DEFAULT_VARIANTS = "full,modality_dropout,late_fusion,late_fusion_dropout"
CELL_FILE = "cell.csv"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="rlrt shared-fraction",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Other arguments (--config, --data.*, --model.*, --trainer.*) go to every fit.",
    )
    parser.add_argument("--fractions", default="0,0.33,0.67,1", help="shared fractions in [0, 1]")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated names")
    parser.add_argument("--variants_dir", default="configs/model/variants")
    parser.add_argument("--train_seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--seeds", default="0,1", help="protocol seeds of the missing settings")
    parser.add_argument("--output", required=True, help="folder for shared_fraction.csv/.md/.png")
    parser.add_argument("--workdir", default=None, help="caches and cells (default: OUTPUT/runs)")
    parser.add_argument(
        "--data_root", default="data/demo_shared", help="the demo datasets, one folder per fraction"
    )
    return parser.parse_known_args(argv)


def _numbers(text: str, option: str, kind: type) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(
            f"rlrt shared-fraction: --{option} must be comma-separated numbers, got {text!r}"
        ) from None


def parse_fractions(text: str) -> list[float]:
    """`--fractions` as floats, each checked to be in [0, 1]; at least one."""
    fractions = _numbers(text, "fractions", float)
    if not fractions:
        raise ValueError("rlrt shared-fraction: --fractions names no value")
    try:
        return [check_shared_fraction(f) for f in fractions]
    except ValueError as error:
        raise ValueError(f"rlrt shared-fraction: --fractions: {error}") from None


def cell_folder(workdir: Path, fraction: float, variant: str, seed: int) -> Path:
    return workdir / f"shared_{fraction:g}" / variant / f"seed{seed}"


def run_cell(
    rest: list[str],
    config: Path,
    *,
    fraction: float,
    variant: str,
    seed: int,
    workdir: Path,
    data_root: Path,
    protocol_seeds: str,
) -> pd.DataFrame:
    """Fit one (fraction, variant, training seed) and test it; writes and returns its rows."""
    folder = cell_folder(workdir, fraction, variant, seed)
    shutil.rmtree(folder, ignore_errors=True)  # a cut run's leftovers
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(folder), "name": "fit"},
    }
    fit_args = [
        *rest,
        f"--data.init_args.root={data_root / f'shared_{fraction:g}'}",
        f"--data.init_args.shared_fraction={fraction}",
        "--config",
        str(config),
        f"--seed_everything={seed}",
        f"--trainer.logger={json.dumps(logger)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    # one cache per fraction (the data settings' hash), shared by every variant and seed
    fit_args = with_cache(workdir / "cache", fit_args)
    fit = RLRTCLI(args=["fit", *fit_args])
    robustness = run_robustness(
        [
            f"--ckpt_path={best_checkpoint(fit.trainer)}",
            f"--output={folder / 'robustness'}",
            f"--name={variant}",
            f"--seeds={protocol_seeds}",
            "--rates=0,0.7,1",
            "--types=image,text",
            "--noise_modalities=",
        ]
    )
    rows = tidy(
        robustness,
        model=variant,
        shared_fraction=fraction,
        shared_genres=len(genre_groups(fraction)["both"]),
        train_seed=seed,
    )
    atomic_write_text(folder / CELL_FILE, rows.to_csv(index=False))  # the cell is done
    return rows


def fairness_note(rest: list[str], configs: dict[str, Path]) -> str:
    """What every model shares, read from the parsed configs (for the report)."""
    parsed = {name: parse_only([*rest, "--config", str(path)]) for name, path in configs.items()}
    epochs = sorted({int(c.trainer.max_epochs) for c in parsed.values()})
    lrs = sorted({float(c.model.lr) for c in parsed.values()})
    rates = {name: float(c.model.modality_dropout) for name, c in parsed.items()}
    dropout = ", ".join(f"{name} {rate:g}" for name, rate in rates.items() if rate > 0)
    lr = ", ".join(f"{x:g}" for x in lrs)
    return (
        f"Every model: {', '.join(map(str, epochs))} epochs, lr {lr}, the same training seeds, "
        "the checkpoint of the best validation task metric (F1-macro here; complete "
        "validation data for every model), and one feature cache per shared fraction (frozen "
        f"encoders) shared by all models. Training-time modality dropout: {dropout or 'none'}."
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run_shared_fraction(argv: list[str]) -> pd.DataFrame:
    """Run (or continue) the study; returns the combined results frame (`COLUMNS`)."""
    args, rest = parse_args(argv)
    fractions = parse_fractions(args.fractions)
    configs = variant_configs(
        [v.strip() for v in args.variants.split(",") if v.strip()], Path(args.variants_dir)
    )
    seeds = _numbers(args.train_seeds, "train_seeds", int)
    _numbers(args.seeds, "seeds", int)
    output = Path(args.output)
    workdir = Path(args.workdir) if args.workdir else output / "runs"
    cells = [(f, v, s) for f in fractions for v in configs for s in seeds]
    note = fairness_note(rest, configs)
    parts: list[pd.DataFrame] = []
    spent: list[float] = []
    for index, (fraction, variant, seed) in enumerate(cells, start=1):
        where = (
            f"[{index}/{len(cells)}] shared_fraction {fraction:g}, {variant}, training seed {seed}"
        )
        done = cell_folder(workdir, fraction, variant, seed) / CELL_FILE
        if done.is_file():
            print(f"rlrt shared-fraction: {where}: done before, skipped", flush=True)
            parts.append(pd.read_csv(done, keep_default_na=False)[COLUMNS])
            continue
        print(f"rlrt shared-fraction: {where} ...", flush=True)
        start = time.monotonic()
        rows = run_cell(
            rest,
            configs[variant],
            fraction=fraction,
            variant=variant,
            seed=seed,
            workdir=workdir,
            data_root=Path(args.data_root),
            protocol_seeds=args.seeds,
        )
        spent.append(time.monotonic() - start)
        parts.append(rows)
        left = len(cells) - index
        f1 = rows[(rows["metric"] == "f1_macro") & (rows["setting"] == "complete")]["value"]
        score = f", complete F1-macro {100 * f1.mean():.1f}" if len(f1) else ""
        print(
            f"rlrt shared-fraction: {where}: done in {_minutes(spent[-1])}{score}; "
            f"{left} cells left, about {_minutes(left * sum(spent) / len(spent))}",
            flush=True,
        )
        frame = pd.concat(parts, ignore_index=True)
        write_report(frame, output, expected_cells=len(cells), notes=note)
    frame = pd.concat(parts, ignore_index=True)
    paths = write_report(frame, output, expected_cells=len(cells), notes=note)
    print(f"rlrt shared-fraction: wrote {', '.join(str(p) for p in paths)}")
    return frame
