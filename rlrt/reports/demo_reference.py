"""The demo's published numbers (`docs/demo/reference.json`) and how a run compares with them.

The demo is deterministic on one machine (`tests/test_demo_determinism.py`), but its numbers
depend on the CPU kernels torch runs: the same seed on AVX-512 and on AVX2 kernels trains to
other weights (last-bit differences in the float arithmetic, amplified by 40 epochs and by the
choice of the best epoch). The reference therefore holds every run of
`python -m rlrt.reports.demo_spread`: training seeds x CPU kernel levels, and `rlrt demo` prints
its own result beside the one for its seed and kernels and beside the spread of all of them.

Reference file: `{"runs": [{"cpu_capability": "AVX512", "seed": 0, "metrics": {"complete":
{"f1_macro": ..}, ..}}, ..], "commit": .., "machine": ..}`; metrics as fractions, as in the
demo's `metrics.json`.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import torch

REFERENCE_FILE = Path("docs") / "demo" / "reference.json"


def cpu_capability() -> str:
    """The vector instruction level of torch's CPU kernels in this process ("AVX512", "AVX2",
    "DEFAULT"; `ATEN_CPU_CAPABILITY` lowers it)."""
    return torch.backends.cpu.get_cpu_capability()


def load_reference(path: Path) -> dict[str, Any] | None:
    """The reference file's content, or None when there is none to compare with (an installed
    rlrt run outside its checkout) or it is unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def spread(runs: list[dict[str, Any]], setting: str, metric: str) -> dict[str, float] | None:
    """Mean, sample standard deviation, min and max of `metric` in `setting` over `runs`."""
    values = [r["metrics"][setting][metric] for r in runs]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def comparison_lines(
    rows: dict[str, dict[str, float]], reference: dict[str, Any], seed: int, capability: str
) -> list[str]:
    """What `rlrt demo` prints under its table: per setting, this run's F1-macro beside the
    reference run of the same seed and CPU kernels (when there is one) and the range of all
    reference runs."""
    runs = reference.get("runs", [])
    if not runs:
        return []
    # `seed_everything: false` is no seed (and False == 0 in Python): no run is this one's
    seeded = type(seed) is int
    same = [r for r in runs if seeded and r["seed"] == seed and r["cpu_capability"] == capability]
    kinds = sorted({r["cpu_capability"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    lines = [
        f"Reference ({REFERENCE_FILE}, {len(runs)} runs: seeds {seeds[0]}-{seeds[-1]} on "
        f"{' and '.join(kinds)} kernels); this run: seed {seed}, {capability} kernels."
    ]
    for setting, row in rows.items():
        mine = row.get("f1_macro")
        summary = spread(runs, setting, "f1_macro")
        if mine is None or summary is None:
            continue
        text = f"  {setting}: F1-macro {100 * mine:.2f}"
        if same:
            published = same[0]["metrics"][setting]["f1_macro"]
            verdict = "the same" if f"{mine:.4f}" == f"{published:.4f}" else "differs"
            text += f"; reference for this seed and kernels {100 * published:.2f} ({verdict})"
        text += (
            f"; all reference runs {100 * summary['min']:.2f}-{100 * summary['max']:.2f} "
            f"(mean {100 * summary['mean']:.2f} ± {100 * summary['std']:.2f})"
        )
        lines.append(text)
    if not same:
        lines.append(f"  no reference run has seed {seed} on {capability} kernels")
    return lines
