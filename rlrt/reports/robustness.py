"""Tables and plots of robustness results (`robustness.csv`), for one model or several.

`rlrt robustness` writes them for one checkpoint; `rlrt robustness-report A.csv B.csv --output
DIR` puts several (e.g. RLRT beside a baseline) into one table and one figure.

A results frame has one row per (model, setting, seed, metric): the columns of `COLUMNS`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from rlrt.engine.files import atomic_write_bytes, atomic_write_text
from rlrt.reports.names import kind_title, metric_title, model_title, setting_title
from rlrt.reports.plots import PANELS, figure_png, robustness_figure
from rlrt.reports.tables import markdown_table, percent_cell, spread

COLUMNS = [
    "model",
    "checkpoint",
    "perturbation",
    "missing_type",
    "missing_rate",
    "noise_modality",
    "noise_level",
    "noise_fraction",
    "missing_strategy",
    "features",
    "seed",
    "metric",
    "value",
]


def preferred_metric(frame: pd.DataFrame) -> str:
    """The headline metric: F1-macro for multi-label results, accuracy for multi-class."""
    metrics = list(dict.fromkeys(frame["metric"]))
    for name in ("f1_macro", "acc"):
        if name in metrics:
            return name
    return metrics[0]


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count over seeds (and checkpoints) of each model, setting and metric.

    Returns columns: model, perturbation, kind (missing type or noise modality), amount (missing
    rate or noise level), metric, mean, std (0 for a single value), n.
    """
    missing = frame[frame["perturbation"] == "missing"].assign(
        kind=lambda f: f["missing_type"], amount=lambda f: f["missing_rate"]
    )
    noise = frame[frame["perturbation"] == "noise"].assign(
        kind=lambda f: f["noise_modality"], amount=lambda f: f["noise_level"]
    )
    keys = ["model", "perturbation", "kind", "amount", "metric"]
    return spread(pd.concat([missing, noise]).groupby(keys, sort=False)["value"])


AMOUNT_TITLES = {"missing": "missing rate (%)", "noise": "noise level"}
# The headline settings: (perturbation, kind, amount); kind None is any kind at amount 0.
HEADLINE = [
    ("missing", None, 0.0),
    ("missing", "image", 0.7),
    ("missing", "text", 0.7),
    ("missing", "both", 0.7),
    ("missing", "image", 1.0),
    ("missing", "text", 1.0),
    ("noise", "image", 10.0),
    ("noise", "text", 10.0),
]


def headline(frame: pd.DataFrame, metric: str | None = None) -> str:
    """One row per model, one column per headline setting present in `frame` (values in %)."""
    metric = metric or preferred_metric(frame)
    stats = summarize(frame)
    stats = stats[stats["metric"] == metric]
    models = list(dict.fromkeys(frame["model"]))
    columns = []
    for perturbation, kind, amount in HEADLINE:
        part = stats[(stats["perturbation"] == perturbation) & (stats["amount"] == amount)]
        if kind is not None:
            part = part[part["kind"] == kind]
        if not part.empty:
            columns.append((setting_title(perturbation, kind, amount), part))
    rows = []
    for model in models:
        cells = [model_title(model)]
        for _, part in columns:
            found = part[part["model"] == model]
            cells.append("" if found.empty else percent_cell(*found.iloc[0][["mean", "std", "n"]]))
        rows.append(cells)
    header = [f"{metric_title(metric)} (%)", *(title for title, _ in columns)]
    return markdown_table(rows, header)


def markdown(frame: pd.DataFrame) -> str:
    """The headline table, then one table per metric and perturbation type (the figure's
    panels): rows are missing rates or noise levels, columns models.

    Values in %, mean ± std over protocol seeds and checkpoints (e.g. training seeds) where
    there are several.
    """
    stats = summarize(frame)
    models = list(dict.fromkeys(frame["model"]))
    strategies = ", ".join(sorted({str(s) for s in frame["missing_strategy"]}))
    fractions = ", ".join(sorted({f"{f:.0%}" for f in frame["noise_fraction"]}))
    seeds = sorted({int(s) for s in frame["seed"]})
    checkpoints = frame.groupby("model", sort=False)["checkpoint"].nunique()
    per_model = ", ".join(f"{model_title(m)}: {checkpoints[m]}" for m in models)
    lines = [
        f"Models: {', '.join(model_title(m) for m in models)}. Checkpoints per model: "
        f"{per_model}. Protocol seeds: {seeds}. Missing modality replaced by: {strategies}. "
        f'Noise on a seeded {fractions} of the test samples; "image or text missing": each '
        "dropped sample loses its image or its text, half and half. Values in %, mean ± std "
        "over checkpoints x protocol seeds.",
        "",
        headline(frame),
    ]
    metrics = list(dict.fromkeys(frame["metric"]))
    for metric in metrics:
        for perturbation, kind in PANELS:  # the figure's panels, in its order
            part = stats[
                (stats["metric"] == metric)
                & (stats["perturbation"] == perturbation)
                & (stats["kind"] == kind)
            ]
            if part.empty:
                continue
            cells = {(r.model, r.amount): r for r in part.itertuples()}
            rows = []
            for amount in sorted(part["amount"].unique()):
                row = [f"{100 * amount:.0f}" if perturbation == "missing" else f"{amount:g}"]
                for model in models:
                    r = cells.get((model, amount))
                    row.append("" if r is None else percent_cell(r.mean, r.std, r.n))
                rows.append(row)
            header = [AMOUNT_TITLES[perturbation], *(model_title(m) for m in models)]
            lines += [
                f"### {metric_title(metric)}, {kind_title(perturbation, kind)}",
                "",
                markdown_table(rows, header),
            ]
    return "\n".join(lines)


def plotted_metrics(frame: pd.DataFrame, metric: str | None = None) -> list[str]:
    """The figure's rows: `metric` if given, else the task scores present (F1-macro and F1-micro,
    or accuracy), else the headline metric."""
    if metric:
        return [metric]
    present = set(frame["metric"])
    scores = [m for m in ("f1_macro", "f1_micro", "acc") if m in present]
    return scores or [preferred_metric(frame)]


def plot_png(frame: pd.DataFrame, metric: str | None = None) -> bytes:
    """The robustness figure (`rlrt.reports.plots.robustness_figure`) as PNG bytes."""
    stats = summarize(frame)
    models = list(dict.fromkeys(frame["model"]))
    noised = frame[frame["perturbation"] == "noise"]["noise_fraction"]
    fractions = ", ".join(sorted({f"{f:.0%}" for f in noised}))
    caption = "Test scores under missing modalities" + (
        f" and noise (on a seeded {fractions} of the samples)" if fractions else ""
    )
    caption += "; mean ± std over checkpoints x protocol seeds"
    figure = robustness_figure(stats, plotted_metrics(frame, metric), models, caption)
    return figure_png(figure)


def write_report(frame: pd.DataFrame, output: str | Path, metric: str | None = None) -> Path:
    """Write `robustness.csv`, `robustness.md` and `robustness.png` into `output` (atomically)."""
    output = Path(output)
    frame = frame[COLUMNS]
    atomic_write_text(output / "robustness.csv", frame.to_csv(index=False))
    atomic_write_text(output / "robustness.md", markdown(frame))
    atomic_write_bytes(output / "robustness.png", plot_png(frame, metric))
    return output


def read_results(paths: list[str | Path]) -> pd.DataFrame:
    """Concatenate `robustness.csv` files; refuse one without the expected columns."""
    frames = []
    for path in paths:
        frame = pd.read_csv(path, keep_default_na=False)
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path} is not a robustness.csv: no column(s) {missing}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)
