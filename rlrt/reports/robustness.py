"""Tables and plots of robustness results (`robustness.csv`), for one model or several.

`rlrt robustness` writes them for one checkpoint; `rlrt robustness-report A.csv B.csv --output
DIR` puts several (e.g. RLRT beside a baseline) into one table and one figure.

A results frame has one row per (model, setting, seed, metric): the columns of `COLUMNS`.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from rlrt.engine.files import atomic_write_bytes, atomic_write_text

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
TYPE_COLORS = {"image": "tab:blue", "text": "tab:orange", "both": "tab:green"}
MODEL_STYLES = ["-", "--", ":", "-."]
KIND_LABELS = {  # legend entries: what was done to the test samples
    "missing": {"image": "image missing", "text": "text missing", "both": "image or text missing"},
    "noise": {"image": "image noise", "text": "text noise"},
}


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
    stats = (
        pd.concat([missing, noise])
        .groupby(keys, sort=False)["value"]
        .agg(mean="mean", std="std", n="count")
        .reset_index()
    )
    stats["std"] = stats["std"].fillna(0.0)
    return stats


def _cell(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


# The headline columns: (title, perturbation, kind, amount); kind None is any kind at amount 0.
HEADLINE = [
    ("complete", "missing", None, 0.0),
    ("70% missing image", "missing", "image", 0.7),
    ("70% missing text", "missing", "text", 0.7),
    ("70% missing either", "missing", "both", 0.7),
    ("no image", "missing", "image", 1.0),
    ("no text", "missing", "text", 1.0),
    ("image noise 10", "noise", "image", 10.0),
    ("text noise 10", "noise", "text", 10.0),
]


def headline(frame: pd.DataFrame, metric: str | None = None) -> str:
    """One row per model, one column per headline setting present in `frame` (values in %)."""
    metric = metric or preferred_metric(frame)
    stats = summarize(frame)
    stats = stats[stats["metric"] == metric]
    models = list(dict.fromkeys(frame["model"]))
    columns = []
    for title, perturbation, kind, amount in HEADLINE:
        part = stats[(stats["perturbation"] == perturbation) & (stats["amount"] == amount)]
        if kind is not None:
            part = part[part["kind"] == kind]
        if not part.empty:
            columns.append((title, part))
    lines = [
        f"| {metric} (%) | " + " | ".join(title for title, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for model in models:
        cells = []
        for _, part in columns:
            rows = part[part["model"] == model]
            cells.append("" if rows.empty else _cell(*rows.iloc[0][["mean", "std", "n"]]))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown(frame: pd.DataFrame) -> str:
    """The headline table, then one table per metric and perturbation: rows are rates or
    levels, columns model x type.

    Values in %, mean ± std over protocol seeds and checkpoints (e.g. training seeds) where
    there are several.
    """
    stats = summarize(frame)
    models = list(dict.fromkeys(frame["model"]))
    strategies = ", ".join(sorted({str(s) for s in frame["missing_strategy"]}))
    fractions = ", ".join(sorted({f"{f:g}" for f in frame["noise_fraction"]}))
    seeds = sorted({int(s) for s in frame["seed"]})
    checkpoints = frame.groupby("model", sort=False)["checkpoint"].nunique()
    per_model = ", ".join(f"{m}: {checkpoints[m]}" for m in models)
    lines = [
        f"Models: {', '.join(models)}. Checkpoints per model: {per_model}. Protocol seeds: "
        f"{seeds}. Missing modality replaced by: {strategies}. Noise on a seeded {fractions} "
        "of the test samples. Values in %, mean ± std over checkpoints x protocol seeds.",
        "",
        headline(frame),
    ]
    metrics = list(dict.fromkeys(frame["metric"]))
    for metric in metrics:
        for perturbation, axis in (("missing", "missing rate (%)"), ("noise", "noise level")):
            part = stats[(stats["metric"] == metric) & (stats["perturbation"] == perturbation)]
            if part.empty:
                continue
            kinds = list(dict.fromkeys(part["kind"]))
            columns = [(m, k) for m in models for k in kinds]
            title = "missing modality" if perturbation == "missing" else "noise"
            label = (lambda m, k: k) if len(models) == 1 else (lambda m, k: f"{m}: {k}")
            lines += [
                f"### {metric}, {title}",
                "",
                "| " + " | ".join([axis] + [label(m, k) for m, k in columns]) + " |",
                "|" + "---|" * (len(columns) + 1),
            ]
            cells = {(r.model, r.kind, r.amount): r for r in part.itertuples()}
            for amount in sorted(part["amount"].unique()):
                shown = f"{100 * amount:.0f}" if perturbation == "missing" else f"{amount:g}"
                row = [shown]
                for model, kind in columns:
                    r = cells.get((model, kind, amount))
                    row.append("" if r is None else _cell(r.mean, r.std, r.n))
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    return "\n".join(lines)


def plot_png(frame: pd.DataFrame, metric: str | None = None) -> bytes:
    """Metric against missing rate (one line per model and type) and, in a second panel, against
    noise level (one line per model and modality); bands show ± std over seeds. Returns PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or preferred_metric(frame)
    stats = summarize(frame)
    stats = stats[stats["metric"] == metric]
    models = list(dict.fromkeys(frame["model"]))
    panels = [p for p in ("missing", "noise") if (stats["perturbation"] == p).any()]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.2 * max(len(panels), 1), 4.0))
    axes = [axes] if len(panels) <= 1 else list(axes)
    for ax, perturbation in zip(axes, panels):
        part = stats[stats["perturbation"] == perturbation]
        for m_index, model in enumerate(models):
            for kind in dict.fromkeys(part["kind"]):
                line = part[(part["model"] == model) & (part["kind"] == kind)]
                line = line.sort_values("amount")
                if line.empty:
                    continue
                x = 100 * line["amount"] if perturbation == "missing" else line["amount"]
                y, band = 100 * line["mean"], 100 * line["std"]
                what = KIND_LABELS[perturbation].get(kind, kind)
                name = what if len(models) == 1 else f"{model}: {what}"
                color = TYPE_COLORS.get(kind)
                style = MODEL_STYLES[m_index % len(MODEL_STYLES)]
                ax.plot(x, y, style, marker="o", ms=3, color=color, label=name)
                if (band > 0).any():
                    ax.fill_between(x, y - band, y + band, color=color, alpha=0.15)
        if perturbation == "missing":
            ax.set_xlabel("missing rate (%) at test time")
            ax.set_title(f"{metric}: missing modality")
        else:
            ax.set_xlabel("noise level (image sd 10*level; text mask p 0.1*level)")
            ax.set_title(f"{metric}: noise on half of the samples")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


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
