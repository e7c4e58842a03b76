"""`markdown_table`: the one Markdown table writer of the reports."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from rlrt.reports.tables import markdown_table


def parse(text: str) -> tuple[list[str], list[str], list[list[str]]]:
    """(header, rule, rows) of a pipe table, cells stripped, escaped pipes restored."""
    lines = text.rstrip("\n").split("\n")
    cells = [re.split(r"(?<!\\)\|", line)[1:-1] for line in lines]
    split = [[c.strip().replace("\\|", "|") for c in row] for row in cells]
    return split[0], split[1], split[2:]


def test_cells_round_trip_and_columns_line_up():
    rows = [["RLRT", "63.5 ± 1.0", 3, "a|b"], ["late fusion", "60.4", 12, None]]
    text = markdown_table(rows, ["model", "F1-macro (%)", "runs", "note"])
    header, rule, body = parse(text)
    assert header == ["model", "F1-macro (%)", "runs", "note"]
    assert body == [["RLRT", "63.5 ± 1.0", "3", "a|b"], ["late fusion", "60.4", "12", ""]]
    lines = text.rstrip("\n").split("\n")
    assert len({len(line) for line in lines}) == 1  # padded: every line as long
    bars = [[m.start() for m in re.finditer(r"(?<!\\)\|", line)] for line in lines]
    assert all(b == bars[0] for b in bars)  # the pipes of every line stand in one column
    # numbers are right-aligned, text left
    assert [r.endswith(":") for r in rule] == [False, True, True, False]
    assert lines[3].index("60.4") + 4 == lines[2].index("63.5 ± 1.0") + len("63.5 ± 1.0")


def test_frames_and_mappings_give_the_same_table():
    frame = pd.DataFrame({"a": [1.5, math.nan], "b": ["x", "y"]})
    records = [{"a": 1.5, "b": "x"}, {"b": "y"}]
    assert markdown_table(frame) == markdown_table(records)
    assert parse(markdown_table(frame))[2] == [["1.5", "x"], ["", "y"]]  # NaN is blank
    assert parse(markdown_table(records, ["b"]))[0] == ["b"]  # header picks the keys


def test_explicit_alignment_and_bad_input():
    text = markdown_table([["1", "2"]], ["a", "b"], align=["left", "center"])
    assert parse(text)[1] == ["---", ":-:"]
    with pytest.raises(ValueError, match="2 cells"):
        markdown_table([["1"]], ["a", "b"])
    with pytest.raises(ValueError, match="header"):
        markdown_table([["1"]])
    with pytest.raises(ValueError, match="align"):
        markdown_table([["1"]], ["a"], align=["middle"])
