"""The robustness figure: one panel per perturbation type, one colour per model.

Rows are metrics (each row shares its y-axis), columns the perturbation types present (image
missing, text missing, image or text missing, image noise, text noise); every model keeps its
colour in every panel and the legend sits outside the axes, to the right.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import pandas as pd

from rlrt.reports.names import kind_title, metric_title, model_title

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Panel order: (perturbation, kind).
PANELS = [
    ("missing", "image"),
    ("missing", "text"),
    ("missing", "both"),
    ("noise", "image"),
    ("noise", "text"),
]
X_LABELS = {"missing": "missing rate (%)", "noise": "noise level"}
PANEL_TITLES = {  # the protocol of callbacks/perturb.py in a line
    ("missing", "both"): "image or text missing\n(half and half)",
    ("noise", "image"): "image noise\n(pixel sd 10 x level)",
    ("noise", "text"): "text noise\n(word mask p 0.1 x level)",
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def model_colors(models: list[str]) -> dict[str, str]:
    """One colour per model, in order (tab10, then tab20 beyond ten models)."""
    palette = [f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown")]
    palette += ["tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
    if len(models) > len(palette):
        cmap = _pyplot().get_cmap("tab20")
        palette = [cmap(i % 20) for i in range(len(models))]
    return {model: palette[i] for i, model in enumerate(models)}


def robustness_figure(
    stats: pd.DataFrame, metrics: list[str], models: list[str], caption: str = ""
) -> Figure:
    """The figure of `summarize(frame)`'s `stats` (model, perturbation, kind, amount, metric,
    mean, std, n): a row per metric, a column per perturbation type present, a line per model
    (mean in %, band ± std) in that model's colour, and one legend right of the axes; `caption`
    is the figure's title."""
    plt = _pyplot()
    panels = [
        (p, k) for p, k in PANELS if ((stats["perturbation"] == p) & (stats["kind"] == k)).any()
    ]
    panels = panels or [("missing", "both")]
    colors = model_colors(models)
    fig, axes = plt.subplots(
        len(metrics),
        len(panels),
        figsize=(2.9 * len(panels) + 0.6, 2.7 * len(metrics) + 0.6),
        sharey="row",
        squeeze=False,
    )
    for row, metric in enumerate(metrics):
        for column, (perturbation, kind) in enumerate(panels):
            ax = axes[row][column]
            part = stats[
                (stats["metric"] == metric)
                & (stats["perturbation"] == perturbation)
                & (stats["kind"] == kind)
            ]
            for model in models:
                line = part[part["model"] == model].sort_values("amount")
                if line.empty:
                    continue
                x = 100 * line["amount"] if perturbation == "missing" else line["amount"]
                y, band = 100 * line["mean"], 100 * line["std"]
                color = colors[model]
                ax.plot(x, y, "-", marker="o", ms=2.5, lw=1.5, color=color, label=model)
                if (band > 0).any():
                    ax.fill_between(x, y - band, y + band, color=color, alpha=0.15, lw=0)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(
                    PANEL_TITLES.get((perturbation, kind), kind_title(perturbation, kind)),
                    fontsize=10,
                )
            if row == len(metrics) - 1:
                ax.set_xlabel(X_LABELS[perturbation])
            if column == 0:
                ax.set_ylabel(f"{metric_title(metric)} (%)")
    handles = [
        plt.Line2D([], [], color=colors[m], marker="o", ms=3, lw=1.5, label=model_title(m))
        for m in models
    ]
    if caption:
        fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    fig.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        frameon=False,
        title="model",
    )
    return fig


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """`fig` as PNG bytes, cropped to what is drawn (the legend outside the axes included)."""
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
