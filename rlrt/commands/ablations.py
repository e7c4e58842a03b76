"""`rlrt ablations`: run a wandb grid sweep file here, without a W&B server, and table it.

    rlrt ablations [--sweep configs/sweeps/ablations.yaml] [--output results/ablations]
                   [--axis KEY=V1,V2 ...] [extra CLI arguments for every run]

The grid is the Cartesian product of the sweep's `parameters` (`values` lists or one `value`),
in file order. Each combination runs the sweep's `command` in this process, as `wandb agent`
would run it: the part between `rlrt` and `${args}`, then `--KEY=VALUE` per parameter, then the
extra arguments (e.g. `--trainer.max_epochs=2`: tiny settings for a quick pass). `--axis`
replaces one axis's values (e.g. `--axis seed_everything=0`).

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
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from rlrt.cli import main
from rlrt.engine.files import atomic_write_text
from rlrt.metrics import is_reported

SEED_KEYS = ("seed_everything",)
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
LABEL_EXCLUDES = ("_encoder.", "class_names")


def differing_settings(rows: pd.DataFrame, groups: pd.Series) -> dict[str, str]:
    """Per group, the settings whose value differs from the reference: the most common value
    across groups (on a tie, the first group's, e.g. the full model listed first)."""
    columns = [
        c
        for c in rows.columns
        if c.startswith(SETTING_PREFIXES) and not any(x in c for x in LABEL_EXCLUDES)
    ]
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
    header = ["variant", *shown, "runs", "differs from the reference settings in"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        values = row._asdict()
        cells = [str(values["variant"])]
        for metric in shown:
            mean, std = values[f"{metric}_mean"], values[f"{metric}_std"]
            runs = values["runs"]
            cells.append(f"{100 * mean:.1f} ± {100 * std:.1f}" if runs > 1 else f"{100 * mean:.1f}")
        cells += [str(values["runs"]), str(values["differs_in"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_axis(text: str) -> tuple[str, list[Any]]:
    key, sep, values = text.partition("=")
    if not sep or not key:
        raise SystemExit(f"rlrt ablations: --axis takes KEY=V1,V2,..., got {text!r}")
    return key, [yaml.safe_load(v) for v in values.split(",")]


def run_ablations(argv: list[str]) -> pd.DataFrame:

    parser = argparse.ArgumentParser(
        prog="rlrt ablations",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--sweep", default="configs/sweeps/ablations.yaml")
    parser.add_argument(
        "--output", default="results/ablations", help="writes OUTPUT.md and OUTPUT.csv"
    )
    parser.add_argument("--axis", action="append", default=[], help="KEY=V1,V2 replaces an axis")
    args, extra = parser.parse_known_args(argv)
    sweep = yaml.safe_load(Path(args.sweep).read_text())
    if sweep.get("method") != "grid":
        raise SystemExit(f"rlrt ablations: {args.sweep} is not a grid sweep (method: grid)")
    parameters = dict(sweep["parameters"])
    for text in args.axis:
        key, values = parse_axis(text)
        if key not in parameters:
            raise SystemExit(f"rlrt ablations: --axis {key}: no such parameter in {args.sweep}")
        parameters[key] = {"values": values}
    subcommand, fixed = command_parts(sweep["command"])
    table_path = results_table_path(fixed)
    grid = expand_grid(parameters)
    start = len(pd.read_csv(table_path)) if table_path.is_file() else 0

    labels = []
    for index, combination in enumerate(grid, 1):
        print(f"\n=== ablations {index}/{len(grid)}: {json.dumps(combination)}", flush=True)
        params = [wandb_arg(k, v) for k, v in combination.items()]
        before = len(pd.read_csv(table_path)) if table_path.is_file() else 0
        main([subcommand, *fixed, *params, *extra])
        after = len(pd.read_csv(table_path)) if table_path.is_file() else 0
        labels += [label(combination)] * (after - before)

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
