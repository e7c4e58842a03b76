"""The robustness figure: a panel per perturbation type, a colour per model, the legend clear of
every axis."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from rlrt.reports.plots import robustness_figure  # noqa: E402
from rlrt.reports.robustness import (  # noqa: E402
    COLUMNS,
    markdown,
    plot_png,
    plotted_metrics,
    summarize,
)

MODELS = ["full", "late_fusion", "modality_dropout", "no_cca"]
KINDS = {"missing": ("image", "text", "both"), "noise": ("image", "text")}


def four_models() -> pd.DataFrame:
    rows = []
    for m, model in enumerate(MODELS):
        for perturbation, kinds in KINDS.items():
            for kind in kinds:
                for amount in (0.0, 0.7, 1.0) if perturbation == "missing" else (0.0, 5.0, 10.0):
                    for metric in ("f1_macro", "f1_micro"):
                        for seed in (0, 1):
                            missing = perturbation == "missing"
                            rows.append(
                                dict(
                                    model=model,
                                    checkpoint="c",
                                    perturbation=perturbation,
                                    missing_type=kind if missing else "",
                                    missing_rate=amount if missing else 0.0,
                                    noise_modality="" if missing else kind,
                                    noise_level=0.0 if missing else amount,
                                    noise_fraction=0.5,
                                    missing_strategy="dummy",
                                    features="cache",
                                    seed=seed,
                                    metric=metric,
                                    value=0.6 - 0.05 * m - 0.02 * amount + 0.01 * seed,
                                )
                            )
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture()
def figure():
    frame = four_models()
    fig = robustness_figure(summarize(frame), plotted_metrics(frame), MODELS)
    yield fig
    matplotlib.pyplot.close(fig)


def test_one_panel_per_perturbation_type_and_a_row_per_metric(figure):
    axes = figure.axes
    assert len(axes) == 2 * 5  # F1-macro and F1-micro x five perturbation types
    titles = [ax.get_title().split("\n")[0] for ax in axes[:5]]
    assert titles == [
        "image missing",
        "text missing",
        "image or text missing",
        "image noise",
        "text noise",
    ]
    assert [axes[0].get_ylabel(), axes[5].get_ylabel()] == ["F1-macro (%)", "F1-micro (%)"]
    for row in (axes[:5], axes[5:]):  # one y-axis per metric
        assert all(row[0].get_shared_y_axes().joined(row[0], ax) for ax in row)
    assert not axes[0].get_shared_y_axes().joined(axes[0], axes[5])


def test_each_model_has_one_colour_everywhere_and_the_legend_covers_no_axis(figure):
    colours: dict[str, set] = {}
    for ax in figure.axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert sorted(labels) == sorted(MODELS)  # every model in every panel
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(to_rgba(line.get_color()))
    assert all(len(c) == 1 for c in colours.values())
    assert len({next(iter(c)) for c in colours.values()}) == len(MODELS)

    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "RLRT",
        "late fusion",
        "modality dropout",
        "no cca",
    ]
    renderer = figure.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    for ax in figure.axes:
        assert not box.overlaps(ax.get_tightbbox(renderer))


def test_plot_png_is_a_png():
    assert plot_png(four_models())[:8] == b"\x89PNG\r\n\x1a\n"


def test_tables_and_figure_name_the_settings_alike(figure):
    frame = four_models()
    report = markdown(frame)
    sections = re.findall(r"^### F1-macro, (.+)$", report, flags=re.M)
    panels = [ax.get_title().split("\n")[0] for ax in figure.axes[:5]]
    assert sections == panels
    assert "70% image or text missing" in report.splitlines()[2]  # the headline's columns
    assert "both" not in report and "either" not in report and "full" not in report
