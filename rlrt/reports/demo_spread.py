"""How far the demo's numbers move with the training seed and with the CPU's kernels.

    python -m rlrt.reports.demo_spread [--seeds 0,1,2,3,4] [--kernels native,AVX2]

runs `rlrt demo` once per (kernel level, seed), each in its own process, and writes every run's
metrics to `docs/demo/reference.json` (the file `rlrt demo` compares itself with) and a table to
`docs/demo/reference.md`. `native` is whatever the machine offers (AVX-512 here); `AVX2` caps
torch's own kernels (`ATEN_CPU_CAPABILITY`) and oneDNN's (`ONEDNN_MAX_CPU_ISA`) at AVX2, as on a
CPU without AVX-512, which is how a machine of another CPU generation computes. One feature
cache per kernel level (built on that level, as on that machine); each run's folder is kept
under `--workdir`, and a run whose `metrics_runs.json` (written last) is there is not run
again, so a cut study goes on where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from rlrt.engine.files import atomic_write_json, atomic_write_text
from rlrt.reports.demo_reference import REFERENCE_FILE, spread
from rlrt.reports.tables import markdown_table

KERNEL_ENV = {
    "native": {},
    "AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}
SETTINGS = ("complete", "missing_image", "missing_text")


def run_one(kernels: str, seed: int, workdir: Path) -> dict:
    """`rlrt demo` with `seed` under `kernels`; its `metrics_runs.json` and `metrics.json`."""
    output = workdir / kernels / f"seed{seed}"
    # `rlrt demo` writes metrics_runs.json after metrics.json: the run is finished once it exists
    if not (output / "metrics_runs.json").is_file():
        env = {**os.environ, **KERNEL_ENV[kernels]}
        for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
            if name not in KERNEL_ENV[kernels]:
                env.pop(name, None)
        command = [
            sys.executable,
            "-m",
            "rlrt.cli",
            "demo",
            f"--output={output}",
            f"--cache={workdir / kernels / 'cache'}",
            f"--seed_everything={seed}",
            "--trainer.enable_progress_bar=false",
        ]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(
                f"demo_spread: `rlrt demo` for {kernels} kernels, seed {seed} failed "
                f"(exit {done.returncode}): {(done.stderr.strip().splitlines() or [''])[-1]}"
            )
    runs = json.loads((output / "metrics_runs.json").read_text())
    return {
        "kernels": kernels,
        "cpu_capability": runs["cpu_capability"],
        "seed": seed,
        "metrics": json.loads((output / "metrics.json").read_text()),
    }


def summary_table(runs: list[dict]) -> str:
    """Markdown: one row per run, then mean ± std and min-max over all runs (metrics in %)."""

    def cell(value):
        return "-" if value is None else f"{100 * value:.2f}"

    body = []
    for run in runs:
        body.append(
            [
                run["cpu_capability"],
                str(run["seed"]),
                *(cell(run["metrics"][s].get("f1_macro")) for s in SETTINGS),
                cell(run["metrics"]["complete"].get("f1_micro")),
                cell(run["metrics"]["complete"].get("cca_corr")),
            ]
        )
    for label, key in (("mean ± std", None), ("min-max", "range")):
        row = [label, "all"]
        for setting, metric in [
            *((s, "f1_macro") for s in SETTINGS),
            *(("complete", m) for m in ("f1_micro", "cca_corr")),
        ]:
            found = spread(runs, setting, metric)
            if found is None:
                row.append("-")
            elif key is None:
                row.append(f"{100 * found['mean']:.2f} ± {100 * found['std']:.2f}")
            else:
                row.append(f"{100 * found['min']:.2f}-{100 * found['max']:.2f}")
        body.append(row)
    header = [
        "kernels",
        "seed",
        "F1-macro complete",
        "F1-macro no image",
        "F1-macro no text",
        "F1-micro complete",
        "cca_corr complete",
    ]
    return markdown_table(body, header)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlrt.reports.demo_spread", description=__doc__)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="training seeds, comma-separated")
    parser.add_argument("--kernels", default="native,AVX2", help=f"of {', '.join(KERNEL_ENV)}")
    parser.add_argument("--workdir", default="results/demo_spread", help="the runs' folders")
    parser.add_argument("--output", default=str(REFERENCE_FILE), help="the reference file")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds: {args.seeds!r} is not a comma-separated list of integers")
    kernels = args.kernels.split(",")
    unknown = [k for k in kernels if k not in KERNEL_ENV]
    if unknown:
        parser.error(f"--kernels: unknown {unknown}, choose from {', '.join(KERNEL_ENV)}")
    grid = [(k, s) for k in kernels for s in seeds]
    runs, start = [], time.monotonic()
    for index, (kernel, seed) in enumerate(grid, 1):
        print(f"[{index}/{len(grid)}] {kernel} kernels, seed {seed} ...", flush=True)
        runs.append(run_one(kernel, seed, Path(args.workdir)))
        f1 = runs[-1]["metrics"]["complete"]["f1_macro"]
        print(
            f"    F1-macro complete {100 * f1:.2f} ({time.monotonic() - start:.0f} s)", flush=True
        )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    output = Path(args.output)
    atomic_write_json(output, {"commit": commit or None, "runs": runs})
    atomic_write_text(output.with_suffix(".md"), summary_table(runs) + "\n")
    print(f"wrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
