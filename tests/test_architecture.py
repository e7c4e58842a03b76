"""The package's shape: no import cycle between the project's modules, and no import of a project
module hidden inside a function (the way a cycle is usually dodged), except the lazy ones of
`rlrt.cli` that keep `rlrt --help` fast."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rlrt", "data_modules", "callbacks")
LAZY_ON_PURPOSE = {"rlrt.cli"}  # imports a command's module (and torch) only when it runs


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def resolve(node: ast.ImportFrom | ast.Import, here: str, is_package: bool) -> list[str]:
    """Names of the modules an import statement may load (`from a import b` may be a.b)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = here.split(".") if is_package else here.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, base] if base else package)
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imports(path: Path, name: str, modules: dict[str, Path]) -> tuple[set[str], list[str]]:
    """(project modules imported at import time, project modules imported inside functions)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    local: list[str] = []

    def visit(body: list[ast.stmt], in_function: bool) -> None:
        for node in body:
            if isinstance(node, ast.If) and is_type_checking(node):
                continue  # annotations only: never executed
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found = [m for m in resolve(node, name, is_package) if m in modules]
                (local.extend if in_function else top.update)(found)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list):
                    nested = in_function or isinstance(
                        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
                    )
                    visit(inner, nested)

    visit(tree.body, in_function=False)
    return top, local


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (module -> modules it imports) as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: fully explored
    stack: list[str] = []

    def cycle_from(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := cycle_from(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := cycle_from(start)):
            return found
    return None


def test_no_import_cycle_between_project_modules():
    modules = project_modules()
    graph = {name: imports(path, name, modules)[0] - {name} for name, path in modules.items()}
    found = find_cycle(graph)
    assert found is None, " -> ".join(found)


def test_the_cycle_search_finds_cycles_and_only_cycles():
    # a diamond is not a cycle
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None
    # a three-module cycle reached through a module outside it
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"b"}}) == ["b", "c", "d", "b"]
    # a cycle in a second component, after an acyclic first one
    assert find_cycle({"a": {"b"}, "b": set(), "x": {"y"}, "y": {"x"}}) == ["x", "y", "x"]
    # a module importing itself
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_the_cycle_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The checker itself: two modules importing each other are reported."""
    package = tmp_path / "rlrt"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from rlrt.b import x\n")
    (package / "b.py").write_text("from rlrt import a\nx = 1\n")
    modules = {
        "rlrt": package / "__init__.py",
        "rlrt.a": package / "a.py",
        "rlrt.b": package / "b.py",
    }
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert imports(package / "a.py", "rlrt.a", modules)[0] == {"rlrt.b"}
    assert "rlrt.a" in imports(package / "b.py", "rlrt.b", modules)[0]


def test_no_project_import_inside_a_function():
    modules = project_modules()
    hidden = {
        name: local
        for name, path in modules.items()
        if name not in LAZY_ON_PURPOSE and (local := imports(path, name, modules)[1])
    }
    assert hidden == {}


def test_the_package_shows_its_architecture():
    """`ls rlrt`: the method's modules, the command line, and four wings."""
    wings = {p.name for p in (REPO / "rlrt").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert wings == {"modules", "commands", "engine", "cache", "reports"}
    flat = {p.stem for p in (REPO / "rlrt").glob("*.py")}
    assert flat == {
        "__init__",
        "cli",
        "encoders",
        "features",
        "image_towers",
        "losses",
        "metrics",
        "missing",
        "system",
        "tiny_encoders",
    }
