"""Rooms a newcomer holds in their head (issue 23): the LightningModule `RLRT` under 300 lines,
every product file under 600 (the generated-data fakes excepted).

Sizes are measured from the text: a class's lines from its AST node (`end_lineno - lineno + 1`,
its docstring included), a file's as its count of lines."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("rlrt", "data_modules", "callbacks")
EXCEPTED = ("data_modules/fakes/",)  # generated datasets: data written as code
MAX_FILE_LINES = 600
MAX_RLRT_LINES = 300


def class_lines(source: str, name: str) -> int:
    """Lines of the top-level class `name` in `source`, from its `class` line to its last."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node.end_lineno - node.lineno + 1
    raise LookupError(f"no top-level class {name}")


def long_files(root: Path, limit: int = MAX_FILE_LINES) -> dict[str, int]:
    """`{path: lines}` of the product's Python files under `root` with more than `limit` lines."""
    found = {}
    for package in PRODUCT:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(EXCEPTED):
                continue
            lines = len(path.read_text().splitlines())
            if lines > limit:
                found[relative] = lines
    return found


def test_class_lines_counts_from_the_class_line_to_its_last():
    source = (
        "import os\n\n\nclass A:\n    '''Doc.'''\n\n    def f(self):\n        return 1\n\nx = 2\n"
    )
    assert class_lines(source, "A") == 5  # lines 4..8
    assert class_lines("class B: pass\n", "B") == 1


def test_long_files_names_only_the_product_files_over_the_limit(tmp_path):
    for relative, lines in {
        "rlrt/big.py": 601,
        "rlrt/ok.py": 600,
        "callbacks/sub/big.py": 700,
        "data_modules/fakes/generated.py": 900,  # excepted
        "tests/huge.py": 2000,  # not product code
    }.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n" * lines)
    assert long_files(tmp_path) == {"rlrt/big.py": 601, "callbacks/sub/big.py": 700}


def test_the_lightning_module_stays_under_300_lines():
    lines = class_lines((REPO / "rlrt" / "system.py").read_text(), "RLRT")
    assert lines < MAX_RLRT_LINES, (
        f"RLRT is {lines} lines: move a job it does into a small module it calls"
    )


def test_no_product_file_goes_past_600_lines():
    assert long_files(REPO) == {}, "split these files: one job each"
