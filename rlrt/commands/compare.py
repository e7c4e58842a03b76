r"""`rlrt compare`: RLRT and its baselines or ablations side by side, under missing modalities and
noise, over several training seeds.

For every variant and training seed: `rlrt fit` (from a feature cache built on first use under
`WORKDIR/cache`), then `rlrt robustness` on the fit's best checkpoint into
`WORKDIR/<variant>/seed<N>`; at the end `rlrt robustness-report` of all of them into `--output`
(`robustness.csv`, `.md` with a headline table, `.png`). The fits' runs go where the trainer
config's logger puts them. A variant is a config of `--variants_dir` (`configs/model/variants`)
composed after the other configs; mean ± std are over training seeds x protocol seeds.

    rlrt compare --config configs/trainer/demo.yaml --config configs/data/demo.yaml \
        --config configs/model/demo.yaml --variants full,late_fusion,modality_dropout \
        --train_seeds 0,1,2 --output results/compare

`make robustness-evidence` runs this on the demo data (docs/evidence.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from rlrt.commands.fit_then_test import best_checkpoint, with_cache
from rlrt.commands.robustness import run_robustness
from rlrt.engine.lightning_cli import RLRTCLI
from rlrt.reports.robustness import headline, read_results, write_report

GRID_OPTIONS = ("seeds", "rates", "types", "noise_levels", "noise_modalities", "strategy")


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="rlrt compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog="Other arguments (--config, --data.*, --model.*, --trainer.*) go to every fit.",
    )
    parser.add_argument("--variants", default="full,late_fusion", help="comma-separated names")
    parser.add_argument("--variants_dir", default="configs/model/variants")
    parser.add_argument("--train_seeds", default="0", help="comma-separated training seeds")
    parser.add_argument("--output", required=True, help="folder for the combined report")
    parser.add_argument(
        "--workdir", default=None, help="caches and per-run results (default: OUTPUT/runs)"
    )
    parser.add_argument("--metric", default=None, help="headline metric (default: f1_macro/acc)")
    parser.add_argument("--seeds", default="0", help="protocol seeds of the robustness grid")
    for option in GRID_OPTIONS[1:]:
        parser.add_argument(f"--{option}", default=None, help="as in `rlrt robustness`")
    return parser.parse_known_args(argv)


def variant_configs(names: list[str], folder: Path) -> dict[str, Path]:
    """Each variant's config file; all are checked before anything trains."""
    configs = {name: folder / f"{name}.yaml" for name in names}
    missing = [str(path) for path in configs.values() if not path.is_file()]
    if missing:
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise FileNotFoundError(
            f"rlrt compare: no variant config {', '.join(missing)}; known variants in "
            f"{folder}: {', '.join(known) or 'none'}"
        )
    return configs


def run_compare(argv: list[str]) -> pd.DataFrame:
    """Fit and evaluate every (variant, training seed); returns the combined results frame."""

    args, rest = parse_args(argv)
    output = Path(args.output)
    configs = variant_configs(
        [v.strip() for v in args.variants.split(",") if v.strip()], Path(args.variants_dir)
    )
    seeds = [int(s) for s in args.train_seeds.split(",") if s.strip()]
    workdir = Path(args.workdir) if args.workdir else output / "runs"
    grid = [
        f"--{option}={getattr(args, option)}"
        for option in GRID_OPTIONS
        if getattr(args, option) is not None
    ]
    results = []
    runs = [(variant, seed) for variant in configs for seed in seeds]
    for index, (variant, seed) in enumerate(runs, start=1):
        print(f"rlrt compare: [{index}/{len(runs)}] {variant}, training seed {seed}", flush=True)
        fit_args = [*rest, "--config", str(configs[variant]), f"--seed_everything={seed}"]
        # one cache per data and encoder setting, shared by the variants that have the same
        fit_args = with_cache(workdir / "cache", fit_args)
        fit = RLRTCLI(args=["fit", *fit_args])
        folder = workdir / variant / f"seed{seed}"
        run_robustness(
            [
                f"--ckpt_path={best_checkpoint(fit.trainer)}",
                f"--output={folder}",
                f"--name={variant}",
                *grid,
            ]
        )
        results.append(folder / "robustness.csv")
    frame = read_results(results)
    write_report(frame, output, args.metric)
    print(headline(frame, args.metric))
    print(f"rlrt compare: wrote {output / 'robustness.md'} and {output / 'robustness.png'}")
    return frame
