"""`rlrt robustness-report`: combine `robustness.csv` files (e.g. RLRT beside a baseline) into one
table and one figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from rlrt.reports.robustness import read_results, write_report


def run_report(argv: list[str]) -> Path:
    """`rlrt robustness-report CSV [CSV ...] --output DIR [--metric NAME]`."""
    parser = argparse.ArgumentParser(
        prog="rlrt robustness-report",
        description="Combine robustness.csv files (e.g. RLRT and a baseline) into one table "
        "and figure: robustness.csv, robustness.md and robustness.png in --output.",
    )
    parser.add_argument("inputs", nargs="+", help="robustness.csv files written by rlrt robustness")
    parser.add_argument("--output", required=True, help="folder for the combined files")
    parser.add_argument(
        "--metric",
        default=None,
        help="the one metric to plot (default: F1-macro and F1-micro, or accuracy)",
    )
    args = parser.parse_args(argv)
    output = write_report(read_results(args.inputs), args.output, args.metric)
    print(f"wrote {output / 'robustness.md'} and {output / 'robustness.png'}")
    return output
