"""The shared-information study's results: a tidy CSV, a Markdown summary and one figure.

`rlrt shared-fraction` (`make evidence-shared`) trains every model on demo datasets that differ
only in `shared_fraction` (how many genres both modalities show) and tests each under a few
missing-modality settings. Its results frame (`COLUMNS`) has one row per model, shared_fraction,
setting, training seed, protocol seed and metric. Summaries first average the protocol seeds of
each checkpoint, then give mean ± std over the training seeds (the seed spread).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from rlrt.engine.files import atomic_write_bytes, atomic_write_text
from rlrt.reports.names import metric_title, setting_title
from rlrt.reports.plots import _pyplot, figure_png, model_colors
from rlrt.reports.tables import markdown_table, percent_cell, spread

COLUMNS = [
    "model",
    "shared_fraction",
    "shared_genres",
    "setting",
    "train_seed",
    "seed",
    "metric",
    "value",
]
# (missing type, missing rate) of each setting, in table and figure order
SETTINGS = {
    setting_title("missing", kind, rate): (kind, rate)
    for kind, rate in [("image", 0.0), ("image", 0.7), ("text", 0.7), ("image", 1.0), ("text", 1.0)]
}
MODEL_TITLES = {
    "full": "RLRT",
    "modality_dropout": "RLRT + modality dropout",
    "late_fusion": "late fusion",
    "late_fusion_dropout": "late fusion + modality dropout",
}
# each RLRT model beside the baseline trained the same way (with or without modality dropout)
PAIRS = [("full", "late_fusion"), ("modality_dropout", "late_fusion_dropout")]


def model_title(model: str) -> str:
    return MODEL_TITLES.get(model, model.replace("_", " "))


def tidy(
    robustness: pd.DataFrame,
    *,
    model: str,
    shared_fraction: float,
    shared_genres: int,
    train_seed: int,
) -> pd.DataFrame:
    """The `SETTINGS` rows of one checkpoint's `robustness.csv` frame, in `COLUMNS`.

    The clean setting appears once per missing type in a robustness grid; it is kept once.
    """
    rows = []
    for setting, (kind, rate) in SETTINGS.items():
        part = robustness[
            (robustness["perturbation"] == "missing")
            & (robustness["missing_type"] == kind)
            & (robustness["missing_rate"].astype(float).sub(rate).abs() < 1e-9)
        ]
        for r in part.itertuples():
            rows.append(
                {
                    "model": model,
                    "shared_fraction": shared_fraction,
                    "shared_genres": shared_genres,
                    "setting": setting,
                    "train_seed": train_seed,
                    "seed": int(r.seed),
                    "metric": r.metric,
                    "value": float(r.value),
                }
            )
    return pd.DataFrame(rows, columns=COLUMNS)


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (0 for one value) and n over training seeds, after averaging each checkpoint's
    protocol seeds. Columns: model, shared_fraction, setting, metric, mean, std, n."""
    keys = ["model", "shared_fraction", "setting", "metric"]
    per_checkpoint = frame.groupby([*keys, "train_seed"], sort=False)["value"].mean()
    return spread(per_checkpoint.groupby(level=keys, sort=False))


def _lookup(stats: pd.DataFrame) -> dict[tuple, pd.Series]:
    return {
        (r.model, r.shared_fraction, r.setting, r.metric): r for r in stats.itertuples(index=False)
    }


def differences(stats: pd.DataFrame, metric: str = "f1_macro") -> pd.DataFrame:
    """RLRT minus its baseline (`PAIRS`) per shared_fraction and setting: `delta` (difference of
    the means) and `se` (sqrt(sd_a^2/n_a + sd_b^2/n_b), over training seeds)."""
    cells = _lookup(stats)
    rows = []
    for rlrt, baseline in PAIRS:
        for fraction in sorted(stats["shared_fraction"].unique()):
            for setting in SETTINGS:
                a = cells.get((rlrt, fraction, setting, metric))
                b = cells.get((baseline, fraction, setting, metric))
                if a is None or b is None:
                    continue
                se = math.sqrt(a.std**2 / a.n + b.std**2 / b.n)
                rows.append(
                    {
                        "pair": f"{model_title(rlrt)} − {model_title(baseline)}",
                        "shared_fraction": fraction,
                        "setting": setting,
                        "delta": a.mean - b.mean,
                        "se": se,
                    }
                )
    return pd.DataFrame(rows, columns=["pair", "shared_fraction", "setting", "delta", "se"])


def markdown(frame: pd.DataFrame, *, expected_cells: int | None = None, notes: str = "") -> str:
    """Per setting, a table of F1-macro (models x shared fractions); the RLRT-minus-baseline
    differences; the held-out `cca_corr` on complete data."""
    stats = summarize(frame)
    cells = _lookup(stats)
    models = list(dict.fromkeys(frame["model"]))
    fractions = sorted(frame["shared_fraction"].unique())
    genres = frame.groupby("shared_fraction")["shared_genres"].first().to_dict()
    done = frame.groupby(["model", "shared_fraction", "train_seed"]).ngroups
    train_seeds = sorted({int(s) for s in frame["train_seed"]})
    seeds = sorted({int(s) for s in frame["seed"]})
    lines = []
    if expected_cells is not None and done < expected_cells:
        lines += [f"**Partial results: {done} of {expected_cells} trained models.**", ""]
    lines += [
        f"Models: {', '.join(model_title(m) for m in models)}. Shared fractions: "
        + ", ".join(f"{f:g} ({genres[f]} of 23 genres)" for f in fractions)
        + f". Training seeds: {train_seeds}; protocol seeds: {seeds}. Values in %, mean ± std "
        "over training seeds of each checkpoint's mean over protocol seeds.",
    ]
    if notes:
        lines += ["", notes]
    header = ["model", *(f"f = {f:g}" for f in fractions)]
    for metric, settings in (("f1_macro", list(SETTINGS)), ("cca_corr", ["complete"])):
        for setting in settings:
            rows = []
            for model in models:
                row = [model_title(model)]
                for f in fractions:
                    r = cells.get((model, f, setting, metric))
                    row.append("" if r is None else percent_cell(r.mean, r.std, r.n))
                if any(row[1:]):
                    rows.append(row)
            if rows:
                title = f"{metric_title(metric)}, {setting}"
                if metric == "cca_corr":
                    title += " (held-out test split; models without MoLT have none)"
                lines += ["", f"### {title}", "", markdown_table(rows, header).rstrip()]
    delta = differences(stats)
    if not delta.empty:
        lines += [
            "",
            "### RLRT minus the baseline trained the same way (F1-macro points)",
            "",
            "Difference of the means ± its standard error over training seeds.",
        ]
        for pair, part in delta.groupby("pair", sort=False):
            shown = {
                (r.shared_fraction, r.setting): f"{100 * r.delta:+.1f} ± {100 * r.se:.1f}"
                for r in part.itertuples()
            }
            rows = [
                [setting, *(shown.get((f, setting), "") for f in fractions)] for setting in SETTINGS
            ]
            table = markdown_table(rows, ["setting", *header[1:]]).rstrip()
            lines += ["", f"**{pair}**", "", table]
    return "\n".join(lines) + "\n"


def plot_png(frame: pd.DataFrame, metric: str = "f1_macro") -> bytes:
    """F1-macro against shared_fraction: one panel per setting, one colour per model, error bars
    ± std over training seeds."""
    plt = _pyplot()
    stats = summarize(frame)
    stats = stats[stats["metric"] == metric]
    models = list(dict.fromkeys(frame["model"]))
    colors = model_colors(models)
    settings = [s for s in SETTINGS if (stats["setting"] == s).any()] or list(SETTINGS)[:1]
    fig, axes = plt.subplots(
        1, len(settings), figsize=(2.9 * len(settings) + 0.6, 3.3), sharey=True, squeeze=False
    )
    offsets = {m: (i - (len(models) - 1) / 2) * 0.012 for i, m in enumerate(models)}
    for ax, setting in zip(axes[0], settings):
        part = stats[stats["setting"] == setting]
        for model in models:
            line = part[part["model"] == model].sort_values("shared_fraction")
            if line.empty:
                continue
            ax.errorbar(
                line["shared_fraction"] + offsets[model],  # side by side, bars readable
                100 * line["mean"],
                yerr=100 * line["std"],
                fmt="-o",
                ms=3,
                lw=1.4,
                capsize=2.5,
                color=colors[model],
            )
        ax.set_title(setting, fontsize=10)
        ax.set_xlabel("shared_fraction")
        ticks = sorted(frame["shared_fraction"].unique())
        ax.set_xticks(ticks)
        ax.set_xlim(ticks[0] - 0.08, ticks[-1] + 0.08)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric_title(metric)} (%)")
    handles = [
        plt.Line2D([], [], color=colors[m], marker="o", ms=3, lw=1.4, label=model_title(m))
        for m in models
    ]
    fig.suptitle(
        "Test F1-macro against the fraction of genres both modalities show; "
        "mean ± std over training seeds",
        fontsize=10,
    )
    fig.tight_layout()
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(models),
        frameon=False,
    )
    return figure_png(fig)


def write_report(
    frame: pd.DataFrame,
    output: str | Path,
    *,
    stem: str = "shared_fraction",
    expected_cells: int | None = None,
    notes: str = "",
) -> list[Path]:
    """Write `<stem>.csv`, `.md` and `.png` into `output`, each atomically; returns the paths."""
    output = Path(output)
    frame = frame[COLUMNS]
    paths = [output / f"{stem}.{ext}" for ext in ("csv", "md", "png")]
    atomic_write_text(paths[0], frame.to_csv(index=False))
    atomic_write_text(paths[1], markdown(frame, expected_cells=expected_cells, notes=notes))
    atomic_write_bytes(paths[2], plot_png(frame))
    return paths
