"""The package's shape: the layers of docs/design.md section 1 with imports pointing only down (or
within a layer), no import cycle between the project's modules, and no import of a project module
hidden inside a function (the way a cycle is usually dodged), except the lazy ones of `rlrt.cli`
that keep `rlrt --help` fast.

The graph counts every import statement: those run at import time, those inside functions and
those under `if TYPE_CHECKING:` (an annotation naming a higher module is an arrow up: the circle of
issue 23 hid there). For cycles, an import of `a.b.c` also runs `a/__init__` and `a/b/__init__`
first: a package whose `__init__` re-exports its modules closes a circle as surely as they do."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("rlrt", "data_modules", "callbacks")
LAZY_ON_PURPOSE = {"rlrt.cli"}  # imports a command's module (and torch) only when it runs

# The layers of docs/design.md section 1, lowest first. A module belongs to the layer of its
# longest matching pattern (`x.*`: every module below package x). A module imports modules of its
# own layer and of the layers below, never of one above.
SAMPLES = ("records", "reasons", "images", "ids", "text_limits", "resumable")
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("tools", ("rlrt", "rlrt.engine", "rlrt.engine.*")),
    ("method", ("rlrt.*",)),
    ("samples", tuple(f"data_modules.{name}" for name in SAMPLES)),
    ("cache", ("rlrt.cache", "rlrt.cache.*")),
    ("data", ("data_modules", "data_modules.*", "callbacks", "callbacks.*")),
    ("model", ("rlrt.system", "rlrt.system.*")),
    (
        "runs",
        (
            "rlrt.engine.lightning_cli",
            "rlrt.reports",
            "rlrt.reports.*",
            "rlrt.commands",
            "rlrt.commands.*",
            "rlrt.cli",
        ),
    ),
]


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


def imports(path: Path, name: str, modules: dict[str, Path]) -> tuple[set[str], list[str]]:
    """(project modules named by the module's own import statements outside functions, under
    `TYPE_CHECKING` included; project modules imported inside functions)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    top: set[str] = set()
    local: list[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found = [m for m in resolve(node, name, is_package) if m in modules and m != name]
            (local.extend if in_function else top.update)(found)
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, in_function=False)
    return top, local


def with_packages(targets: set[str], name: str, modules: dict[str, Path]) -> set[str]:
    """`targets` and the packages whose `__init__` runs before them, less `name`'s own packages
    (being imported already when `name` runs)."""
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    found = set(targets)
    for target in targets:
        parts = target.split(".")
        found |= {".".join(parts[:i]) for i in range(1, len(parts))} - own
    return {m for m in found if m in modules and m != name}


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules importing it runs (every import statement, and packages)."""
    graph = {}
    for name, path in modules.items():
        top, local = imports(path, name, modules)
        graph[name] = with_packages(top | set(local), name, modules)
    return graph


def layer_of(name: str) -> int:
    """Index in `LAYERS` of the layer of module `name` (the longest matching pattern's)."""
    best: tuple[int, int] | None = None
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            hit = pattern == name or (pattern.endswith(".*") and name.startswith(pattern[:-1]))
            if hit and (best is None or len(pattern) > best[0]):
                best = (len(pattern), index)
    assert best is not None, f"{name} has no layer: add it to LAYERS and docs/design.md section 1"
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`a (layer) -> b (higher layer)` for each import from a lower layer up."""
    return [
        f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})"
        for a in sorted(graph)
        for b in sorted(graph[a])
        if layer_of(b) > layer_of(a)
    ]


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
    found = find_cycle(import_graph(project_modules()))
    assert found is None, " -> ".join(found)


def test_no_import_from_a_lower_layer_up():
    modules = project_modules()
    named = {
        name: set().union(*map(set, imports(path, name, modules))) for name, path in modules.items()
    }
    assert upward_imports(named) == []


def test_the_cycle_search_finds_cycles_and_only_cycles():
    # a diamond is not a cycle
    assert find_cycle({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}) is None
    # a three-module cycle reached through a module outside it
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"b"}}) == ["b", "c", "d", "b"]
    # a cycle in a second component, after an acyclic first one
    assert find_cycle({"a": {"b"}, "b": set(), "x": {"y"}, "y": {"x"}}) == ["x", "y", "x"]
    # a module importing itself
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def tiny_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    """Write `files` (path below `root` without `.py` -> source; package `rlrt` unless another
    is named) and an empty `__init__` where none is given; their modules."""
    for stem, source in files.items():
        path = root / (stem if "/" in stem else f"rlrt/{stem}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".py").write_text(source)
        if not (init := path.parent / "__init__.py").exists():
            init.write_text("")
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def test_the_checker_reports_a_two_module_cycle(tmp_path, monkeypatch):
    """The whole checker on two modules importing each other, and on two that do not."""
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path / "cyclic")
    modules = tiny_package(
        tmp_path / "cyclic", {"a": "from rlrt.b import x\n", "b": "from rlrt import a\nx = 1\n"}
    )
    assert find_cycle(import_graph(modules)) == ["rlrt.a", "rlrt.b", "rlrt.a"]

    monkeypatch.setattr(f"{__name__}.REPO", tmp_path / "acyclic")
    modules = tiny_package(
        tmp_path / "acyclic", {"a": "from rlrt.b import x\n", "b": "import rlrt\nx = 1\n"}
    )
    assert import_graph(modules) == {"rlrt": set(), "rlrt.a": {"rlrt.b"}, "rlrt.b": {"rlrt"}}
    assert find_cycle(import_graph(modules)) is None


def test_the_checker_sees_the_imports_a_cycle_hides_in(tmp_path, monkeypatch):
    """Each of the ways issue 23's circle went unseen closes a reported cycle: an import under
    `TYPE_CHECKING`, one inside a function, and a package `__init__` that re-exports the module
    that imports from the package (`from rlrt.b import x` runs `rlrt/__init__` first)."""
    hidden = {
        "type checking": (
            "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from rlrt import a\n"
        ),
        "function": "def f():\n    from rlrt.a import y\n",
    }
    for case, source in hidden.items():
        root = tmp_path / case.replace(" ", "_")
        monkeypatch.setattr(f"{__name__}.REPO", root)
        modules = tiny_package(root, {"a": "from rlrt.b import x\ny = 1\n", "b": source})
        assert find_cycle(import_graph(modules)) == ["rlrt.a", "rlrt.b", "rlrt.a"], case

    root = tmp_path / "package"
    monkeypatch.setattr(f"{__name__}.REPO", root)
    package = {
        "low/__init__": "from low.high import x\n",  # re-exports the module above
        "low/records": "y = 1\n",
        "low/high": "from mid.cache import z\nx = 1\n",
        "mid/cache": "from low.records import y\nz = 1\n",  # names only low.records
    }
    cycle = find_cycle(import_graph(tiny_package(root, package)))
    assert cycle == ["low", "low.high", "mid.cache", "low"]


def test_the_layer_check_reports_an_arrow_up_and_only_that():
    graph = {
        "rlrt.features": {"rlrt.engine.files"},  # method -> tools: down
        "rlrt.cache.format": {"rlrt.features", "rlrt.cache.content"},  # down, and sideways
        "rlrt.cache.content": {"data_modules.base"},  # cache -> data: up
        "rlrt.engine.lightning_cli": {"rlrt.system"},  # runs -> model: down
    }
    assert upward_imports(graph) == ["rlrt.cache.content (cache) -> data_modules.base (data)"]
    assert layer_of("rlrt.engine.files") < layer_of("rlrt.encoders.text")
    assert layer_of("data_modules.images") < layer_of("rlrt.cache.sources")
    assert layer_of("rlrt.cache.sources") < layer_of("data_modules.cached_batches")
    assert layer_of("rlrt.system") < layer_of("rlrt.engine.lightning_cli")


def test_no_project_import_inside_a_function():
    modules = project_modules()
    hidden = {
        name: local
        for name, path in modules.items()
        if name not in LAZY_ON_PURPOSE and (local := imports(path, name, modules)[1])
    }
    assert hidden == {}


def test_the_package_shows_its_architecture():
    """`ls rlrt`: the method's modules and packages (encoders, modules), the command line, and
    four wings."""
    wings = {p.name for p in (REPO / "rlrt").iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert wings == {"encoders", "modules", "commands", "engine", "cache", "reports"}
    flat = {p.stem for p in (REPO / "rlrt").glob("*.py")}
    assert flat == {
        "__init__",
        "alignment",
        "basis",
        "batch_features",
        "cca_tracking",
        "cli",
        "features",
        "identity",
        "image_towers",
        "losses",
        "metrics",
        "missing",
        "running_log",
        "schedule",
        "system",
        "tiny_encoders",
    }
