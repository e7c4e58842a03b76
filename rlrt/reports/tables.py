"""One Markdown table writer for every report (`table1.md`, ablations, robustness, bench, demo).

Columns are padded to a common width, so the text reads as a table in a terminal too, and a
column whose cells are all numbers (`61.2`, `61.2 ± 0.4`, `12.5x`, `3.0%`, `1,024`) is
right-aligned. `tabulate` (pandas' `to_markdown`) is not a dependency, hence this small helper.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

_NUMBER = r"[-+]?(\d[\d,]*(\.\d*)?|\.\d+)(e[-+]?\d+)?"
NUMERIC = re.compile(rf"^~?{_NUMBER}( ± {_NUMBER})?[%x]?$")
ALIGN_RULES = {"left": "---", "right": "--:", "center": ":-:"}


def cell_text(value: Any) -> str:
    """A value as one table cell: blank for None / NaN, pipes escaped, one line."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return " ".join(str(value).split()).replace("|", "\\|")


def spread(grouped: pd.core.groupby.SeriesGroupBy) -> pd.DataFrame:
    """Columns `mean`, `std` (0 for a group of one value) and `n` of each group of `grouped`
    (a grouped Series of values), with the group keys as columns."""
    stats = grouped.agg(mean="mean", std="std", n="count").reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    return stats


def percent_cell(mean: float, std: float, n: int) -> str:
    """A fraction's `mean ± std` over `n` values as a cell in %: `61.2 ± 0.4`, or `61.2` for n=1."""
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def _rows(
    rows: pd.DataFrame | Iterable[Mapping[str, Any] | Sequence[Any]], header: Sequence[str] | None
) -> tuple[list[str], list[list[Any]]]:
    if isinstance(rows, pd.DataFrame):
        return list(header or rows.columns), rows.values.tolist()
    rows = list(rows)
    if rows and isinstance(rows[0], Mapping):
        keys = list(header or dict.fromkeys(k for row in rows for k in row))
        return keys, [[row.get(k) for k in keys] for row in rows]
    if header is None:
        raise ValueError("markdown_table: rows given as sequences need a header")
    return list(header), [list(row) for row in rows]


def markdown_table(
    rows: pd.DataFrame | Iterable[Mapping[str, Any] | Sequence[Any]],
    header: Sequence[str] | None = None,
    *,
    align: Sequence[str] | None = None,
) -> str:
    """A Markdown pipe table, columns padded to one width, ending in a newline.

    Args:
        rows: a DataFrame (its columns are the header unless `header` is given), mappings
            (`header` picks and orders their keys; default: every key, first seen first), or
            sequences of cells (then `header` is required).
        header: the column titles.
        align: per column "left", "right" or "center"; default right for a column whose
            cells are all numbers (blanks and "-" aside), left otherwise.
    """
    titles, body = _rows(rows, header)
    head = [cell_text(t) for t in titles]
    cells = [[cell_text(v) for v in row] for row in body]
    if any(len(row) != len(head) for row in cells):
        raise ValueError(f"markdown_table: every row needs {len(head)} cells (the header's)")
    if align is None:
        align = []
        for column in range(len(head)):
            values = [row[column] for row in cells if row[column] not in ("", "-")]
            numeric = bool(values) and all(NUMERIC.match(v) for v in values)
            align.append("right" if numeric else "left")
    if len(align) != len(head) or any(a not in ALIGN_RULES for a in align):
        raise ValueError(f"markdown_table: align needs {len(head)} of {list(ALIGN_RULES)}")
    widths = [max([3, len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(head)]

    def line(values: list[str]) -> str:
        padded = [
            v.rjust(w) if a == "right" else v.center(w) if a == "center" else v.ljust(w)
            for v, w, a in zip(values, widths, align)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        ALIGN_RULES[a][0] + "-" * (w - 2) + ALIGN_RULES[a][-1] if w > 3 else ALIGN_RULES[a]
        for a, w in zip(align, widths)
    ]
    return "\n".join([line(head), line(rule), *(line(row) for row in cells)]) + "\n"
