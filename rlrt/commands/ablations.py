"""`rlrt ablations`: run a wandb grid sweep file here, without a W&B server, and table it.

    rlrt ablations [--sweep configs/sweeps/ablations.yaml] [--output results/ablations]
                   [--axis KEY=V1,V2 ...] [--quick] [extra CLI arguments for every run]

The grid is the Cartesian product of the sweep's `parameters` (`values` lists or one `value`),
in file order. Each combination runs the sweep's `command` in this process, as `wandb agent`
would run it: the part between `rlrt` and `${args}`, then `--KEY=VALUE` per parameter, then the
extra arguments. `--axis` replaces one axis's values (e.g. `--axis seed_everything=0`);
`--quick` keeps the first seed and shortens every run (see QUICK_ARGS), still long enough for
the variants to differ. The sweep's paths are relative to the repository root (so are the
paths inside the configs): started elsewhere it stops at once, saying where to start it. Each
combination is its own W&B run (its fit and its test), named by the combination, in one group
per invocation.

The runs append their rows to the results table named in the command (`callbacks.ResultsTable`);
this command then writes `<output>.md` and `<output>.csv`: per combination (the seed axis
averaged), mean ± std of every test metric over the runs of this invocation, and which settings
differ from the reference (per setting the most common value across combinations; on a tie,
the first combination's).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rlrt.cli import main
from rlrt.engine.files import atomic_write_text
from rlrt.metrics import is_reported
from rlrt.reports.names import metric_title
from rlrt.reports.tables import markdown_table

SEED_KEYS = ("seed_everything",)
# --quick, measured on the demo grid (seed 0): 2 epochs leave every F1 at 0; 20 epochs at twice
# the demo's learning rate give full 53.8, late fusion 52.0, no_cca 50.4, text only 51.6 and
# image only 9.6 F1-macro (40 epochs: full 61.1, late fusion 60.2).
QUICK_ARGS = ("--trainer.max_epochs=20", "--model.lr=0.006")
EPILOG = (
    "Time, measured on a 2-core CPU machine shared with other jobs: one grid point of the shipped "
    "sweep (fit 40 epochs from the feature cache, then test) takes about 40 s, so the full grid "
    "(12 variants x 3 seeds = 36 points, plus about 20 s per feature cache: the demo's and the "
    "two layer-pair variants') takes about 25 minutes; --quick (12 points, one seed, 20 epochs) "
    "about 5 minutes."
)
WANDB_MACROS = ("${env}", "${interpreter}")


def expand_grid(parameters: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The Cartesian product of a sweep's `parameters`, in file order."""
    axes = {}
    for key, spec in parameters.items():
        if "values" in spec:
            axes[key] = list(spec["values"])
        elif "value" in spec:
            axes[key] = [spec["value"]]
        else:
            raise ValueError(
                f"sweep parameter {key!r}: a grid needs `values` or `value`, got {sorted(spec)}"
            )
    return [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]


def command_parts(command: list[str]) -> tuple[str, list[str]]:
    """(rlrt subcommand, its fixed arguments) from a sweep `command` ending in `${args}`."""
    parts = [c for c in command if c not in WANDB_MACROS]
    if not parts or parts[0] != "rlrt" or parts[-1] != "${args}" or len(parts) < 3:
        raise ValueError(
            f"sweep command must be [${{env}}] rlrt SUBCOMMAND ... ${{args}}, got {command}"
        )
    return parts[1], parts[2:-1]


def wandb_arg(key: str, value: Any) -> str:
    """`--key=value` as `wandb agent` writes it for `${args}`."""
    return f"--{key}={value}"


def results_table_path(arguments: list[str]) -> Path:
    """The `path` of the `callbacks.ResultsTable` appended in the command's arguments."""
    for argument in arguments:
        name, _, value = argument.partition("=")
        if name == "--trainer.callbacks+" and "ResultsTable" in value:
            spec = json.loads(value)
            return Path(spec.get("init_args", {}).get("path", "results/results.csv"))
    raise ValueError("the sweep command attaches no callbacks.ResultsTable: nothing to collect")


def label(combination: dict[str, Any]) -> str:
    """A readable name of a combination without its seed (config paths by file stem)."""
    parts = []
    for key, value in combination.items():
        if key in SEED_KEYS:
            continue
        shown = Path(value).stem if key == "config" else f"{key}={value}"
        parts.append(str(shown))
    return ", ".join(parts) or "default"


SETTING_PREFIXES = ("model.", "data.", "missing_", "noise_")
# Not what a variant changes in the model: encoder internals (shown as model.layer_pairs), where
# the data and its feature cache live, loader workers, and jsonargparse's own fields.
LABEL_EXCLUDES = ("_encoder.", "class_names", "_instantiator")
RUN_LOCAL = ("data.root", "data.feature_cache", "data.num_workers", "data.class")


def is_model_setting(column: str) -> bool:
    """True for a results-table column that says how a run's model or protocol differs."""
    return (
        column.startswith(SETTING_PREFIXES)
        and not any(x in column for x in LABEL_EXCLUDES)
        and column not in RUN_LOCAL
        and not any(part.startswith("_") for part in column.split("."))
    )


def differing_settings(rows: pd.DataFrame, groups: pd.Series) -> dict[str, str]:
    """Per group, the settings whose value differs from the reference: the most common value
    across groups (on a tie, the first group's, e.g. the full model listed first)."""
    columns = [c for c in rows.columns if is_model_setting(c)]
    shown = rows[columns].map(lambda v: "" if pd.isna(v) else str(v))
    per_group = shown.groupby(groups, sort=False).first()
    reference = {}
    for column in columns:
        values = per_group[column].tolist()
        counts = Counter(values)
        top = max(counts.values(), default=0)
        reference[column] = next((v for v in values if counts[v] == top), "")
    out = {}
    for group, values in per_group.iterrows():
        diffs = [f"{c.split('.', 1)[-1]}={values[c]}" for c in columns if values[c] != reference[c]]
        out[group] = ", ".join(diffs) or "-"
    return out


def summarize(rows: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Mean, std and count of each test metric per combination label."""
    groups = pd.Series(labels, index=rows.index, name="variant")
    metrics = [c for c in rows.columns if c.startswith("test/")]
    stats = rows[metrics].groupby(groups, sort=False).agg(["mean", "std", "count"])
    table = pd.DataFrame(index=stats.index)
    for metric in metrics:
        name = metric.removeprefix("test/")
        table[f"{name}_mean"] = stats[(metric, "mean")]
        table[f"{name}_std"] = stats[(metric, "std")].fillna(0.0)
    table["runs"] = stats[(metrics[0], "count")] if metrics else 0
    table["differs_in"] = pd.Series(differing_settings(rows, groups))
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    """The summary as a markdown table, metrics in % as mean ± std over the runs."""
    metrics = [c.removesuffix("_mean") for c in table.columns if c.endswith("_mean")]
    shown = [m for m in metrics if is_reported(m)]
    rows = []
    for values in table.to_dict("records"):
        cells = [values["variant"]]
        for metric in shown:
            mean, std = 100 * values[f"{metric}_mean"], 100 * values[f"{metric}_std"]
            if pd.isna(mean):  # e.g. cca_corr of a variant without L_CCA
                cells.append("-")
            else:
                cells.append(f"{mean:.1f} ± {std:.1f}" if values["runs"] > 1 else f"{mean:.1f}")
        rows.append([*cells, values["runs"], values["differs_in"]])
    header = ["variant", *(metric_title(m) for m in shown), "runs"]
    return markdown_table(rows, [*header, "differs from the reference settings in"])


def parse_axis(text: str) -> tuple[str, list[Any]]:
    key, sep, values = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"rlrt ablations: --axis takes KEY=V1,V2,..., got {text!r}")
    return key, [yaml.safe_load(v) for v in values.split(",")]


def repository_root(sweep: Path) -> Path:
    """The folder holding the `configs/` folder the sweep file lies in (where its relative paths
    start), or the working folder for a sweep file kept elsewhere."""
    sweep = sweep.resolve()
    for folder in sweep.parents:
        if folder.name == "configs":
            return folder.parent
    return Path.cwd()


def check_configs(values: list[Any], root: Path, sweep: Path) -> None:
    """Stop with one line when a relative `configs/...` path of the sweep is not found from the
    working folder: the configs name more paths relative to the repository root (encoder
    configs, data folders), so the runs must start there."""
    for value in values:
        if isinstance(value, str) and value.startswith("configs/") and not Path(value).exists():
            where = f"start it from {root}" if (root / value).exists() else "no such file"
            raise SystemExit(
                f"rlrt ablations: {value} (named in {sweep}) is not found from {Path.cwd()}: "
                f"{where}; the sweep's paths are relative to the repository root"
            )


def per_point_loggers(arguments: list[str], group: str, name: str) -> list[str]:
    """`arguments` whose W&B loggers (`--trainer.logger[+]=` JSON) get the grid point's `name`
    and the sweep's `group`, so each point is its own W&B run and one sweep is one group."""
    out = []
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if sep and key in ("--trainer.logger", "--trainer.logger+") and "WandbLogger" in value:
            specs = json.loads(value)
            for spec in specs if isinstance(specs, list) else [specs]:
                if str(spec.get("class_path", "")).endswith("WandbLogger"):
                    init = spec.setdefault("init_args", {})
                    init.setdefault("group", group)
                    init["name"] = name
            argument = f"{key}={json.dumps(specs)}"
        out.append(argument)
    return out


def finish_wandb_run() -> None:
    """End the W&B run of the point just run: Lightning's WandbLogger leaves it open, and the
    next point's logger would otherwise join it ("a run is already in progress")."""
    wandb = sys.modules.get("wandb")  # never imported: no run to end
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def run_ablations(argv: list[str]) -> pd.DataFrame:

    parser = argparse.ArgumentParser(
        prog="rlrt ablations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        epilog=EPILOG,
    )
    parser.add_argument("--sweep", default="configs/sweeps/ablations.yaml")
    parser.add_argument(
        "--output", default="results/ablations", help="writes OUTPUT.md and OUTPUT.csv"
    )
    parser.add_argument("--axis", action="append", default=[], help="KEY=V1,V2 replaces an axis")
    parser.add_argument(
        "--quick", action="store_true", help="the first seed only, " + " ".join(QUICK_ARGS)
    )
    args, extra = parser.parse_known_args(argv)
    sweep_path = Path(args.sweep)
    if not sweep_path.is_file():
        raise SystemExit(
            f"rlrt ablations: no sweep file {sweep_path} here: start it from the repository root "
            "or give --sweep FILE.yaml"
        )
    sweep = yaml.safe_load(sweep_path.read_text())
    if not isinstance(sweep, dict) or sweep.get("method") != "grid":
        raise SystemExit(f"rlrt ablations: {args.sweep} is not a grid sweep (method: grid)")
    root = repository_root(sweep_path)
    parameters = dict(sweep["parameters"])
    for text in args.axis:
        key, values = parse_axis(text)
        if key not in parameters:
            raise SystemExit(f"rlrt ablations: --axis {key}: no such parameter in {args.sweep}")
        parameters[key] = {"values": values}
    if args.quick:
        extra = [*QUICK_ARGS, *extra]  # the user's own arguments come last and win
        for key in SEED_KEYS:  # one seed, unless --axis asked for more
            if key in parameters and not any(a.startswith(f"{key}=") for a in args.axis):
                parameters[key] = {"values": [expand_grid({key: parameters[key]})[0][key]]}
    subcommand, fixed = command_parts(sweep["command"])
    grid = expand_grid(parameters)
    check_configs([*fixed, *(v for point in grid for v in point.values())], root, sweep_path)
    table_path = results_table_path(fixed)
    group = f"{sweep.get('name') or sweep_path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = len(pd.read_csv(table_path)) if table_path.is_file() else 0

    labels = []
    for index, combination in enumerate(grid, 1):
        print(f"\n=== ablations {index}/{len(grid)}: {json.dumps(combination)}", flush=True)
        params = [wandb_arg(k, v) for k, v in combination.items()]
        seed = "".join(f", seed {combination[k]}" for k in SEED_KEYS if k in combination)
        command = per_point_loggers(fixed, group, label(combination) + seed)
        before = len(pd.read_csv(table_path)) if table_path.is_file() else 0
        try:
            with warnings.catch_warnings():
                # fit-test's test joins its fit's W&B run on purpose: one run per grid point
                warnings.filterwarnings("ignore", message="There is a wandb run already")
                main([subcommand, *command, *params, *extra])
        finally:
            finish_wandb_run()
        after = len(pd.read_csv(table_path)) if table_path.is_file() else 0
        labels += [label(combination)] * (after - before)

    if not labels:
        raise SystemExit(f"rlrt ablations: the runs appended no row to {table_path}: no table")
    rows = pd.read_csv(table_path).iloc[start:].reset_index(drop=True)
    if len(rows) != len(labels):
        raise RuntimeError(
            f"{table_path} changed during the ablations ({len(rows)} new rows, {len(labels)} "
            "from these runs): another process appended to it; summarize it separately"
        )
    table = summarize(rows, labels)
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    output = Path(args.output)
    atomic_write_text(output.with_suffix(".csv"), buffer.getvalue())
    atomic_write_text(output.with_suffix(".md"), markdown(table))
    print(
        f"\n{markdown(table)}\nwrote {output.with_suffix('.md')} and {output.with_suffix('.csv')}"
    )
    return table
