"""The shape of the code, checked by reading it: no reliance on Hydra's private package, no import cycle inside
bcd_cli, no function too long to read at once, and scripts that use only bcd_cli's public names."""

from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bcd_cli"
# built from pieces, so that this file does not hold the strings it looks for
HYDRA_PRIVATE = "hydra." + "_" + "internal"
FORBIDDEN_TEXT = {
    HYDRA_PRIVATE: "Hydra's private package: use hydra's public API or the composed config instead",
    "bcd" + "-" + "math": "a document outside the repository: cite the paper or docs/math.md",
}
MAX_FUNCTION_LINES = 60
KEPT_WHOLE = "Kept in one piece because"


def python_files(*folders: str) -> list[Path]:
    """Every ``.py`` file under ``folders`` of the repository, caches left out."""
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py") if "__pycache__" not in p.parts)


def text_files(*folders: str) -> list[Path]:
    """Every file under ``folders`` that reads as UTF-8 text (run-folder fixtures included), caches left out."""
    found = []
    for path in sorted(p for f in folders for p in (ROOT / f).rglob("*") if p.is_file()):
        if "__pycache__" in path.parts or ".pytest_cache" in path.parts:
            continue
        try:
            path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a checkpoint, an image
        found.append(path)
    return found


def where(path: Path, line: int | None = None) -> str:
    return str(path.relative_to(ROOT)) + (f":{line}" if line is not None else "")


@pytest.fixture
def root_at(tmp_path: Path, monkeypatch) -> Path:
    """The checks below pointed at ``tmp_path`` instead of the repository, to try them on made-up files."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------------------------
# text that must not appear


def test_no_reference_to_hydras_private_package_or_outside_documents():
    found = []
    for path in text_files(PACKAGE, "scripts", "tests"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            for text, why in FORBIDDEN_TEXT.items():
                if text in line:
                    found.append(f"{where(path, number)}: {text!r} ({why}): {line.strip()}")
    for path in python_files(PACKAGE, "scripts", "tests"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "hydra":
                found += [
                    f"{where(path, node.lineno)}: from hydra import {a.name} (Hydra's private package)"
                    for a in node.names
                    if a.name == HYDRA_PRIVATE.split(".")[1]
                ]
    assert not found, "\n".join(found)


def test_the_forbidden_text_is_searched_for():
    """The search above finds what it looks for (its strings are assembled, so a typo would pass silently)."""
    assert importlib.util.find_spec(HYDRA_PRIVATE) is not None  # the name of a package that exists
    assert len(python_files(PACKAGE)) > 20 and len(python_files("scripts")) >= 1


# ---------------------------------------------------------------------------------------------------------------
# import cycles inside bcd_cli


@dataclass(frozen=True)
class Edge:
    target: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of bcd_cli by its dotted name; a package by its own name (its ``__init__.py``)."""
    return {module_name(p): p for p in python_files(PACKAGE)}


def ancestors(name: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b]``: the packages Python imports before ``a.b.c``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def resolve_relative(importer: str, is_package: bool, module: str | None, level: int) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    """The bcd_cli modules ``name`` imports anywhere in its file: at module level, inside functions, under
    ``if TYPE_CHECKING`` (a dependency is one whether or not it is deferred).

    ``import a.b.c`` and ``from a.b.c import x`` import ``a.b.c`` and its packages ``a.b`` and ``a`` first,
    except the packages ``name`` itself lies in (they are imported before ``name`` starts). ``from a.b import x``
    imports the package ``a.b`` (its ``__init__``), and ``a.b.x`` as well when that is a module; the package is
    left out only when it holds ``name`` and ``x`` is a module of it (``from bcd_cli.engine import blocks``
    inside bcd_cli.engine), which needs nothing of the package's ``__init__``.
    """
    own = set(ancestors(name))
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []

    def add(target: str, line: int, with_package: bool = True) -> None:
        if target not in modules:
            return
        for parent in ancestors(target):
            if parent in modules and parent not in own:
                edges.append(Edge(parent, line))
        if with_package or target not in own:
            edges.append(Edge(target, line))

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                source = resolve_relative(name, is_package, node.module, node.level)
            if source.split(".")[0] != PACKAGE:
                continue
            submodules = [f"{source}.{a.name}" for a in node.names if f"{source}.{a.name}" in modules]
            add(source, node.lineno, with_package=len(submodules) < len(node.names))
            for sub in submodules:
                add(sub, node.lineno)
    return [e for e in edges if e.target != name]


def import_graph() -> dict[str, list[Edge]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``graph`` with more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(start: str) -> None:  # iterative: no recursion limit on a long import chain
        work: list[tuple[str, Iterator[Edge]]] = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            edge = next(edges, None)
            if edge is not None:
                if edge.target not in index:
                    index[edge.target] = low[edge.target] = len(index)
                    stack.append(edge.target)
                    on_stack.add(edge.target)
                    work.append((edge.target, iter(graph[edge.target])))
                elif edge.target in on_stack:
                    low[node] = min(low[node], index[edge.target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return sorted(components)


def one_cycle(graph: dict[str, list[Edge]], component: list[str]) -> list[tuple[str, Edge]]:
    """A shortest import cycle through the first module of ``component``: (importer, edge) steps."""
    members, start = set(component), component[0]
    paths: dict[str, list[tuple[str, Edge]]] = {start: []}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target == start:
                    return [*paths[node], (node, edge)]
                if edge.target in members and edge.target not in paths:
                    paths[edge.target] = [*paths[node], (node, edge)]
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"{component} is not a cycle")


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    modules = package_modules()
    report = []
    for component in strongly_connected(graph):
        steps = one_cycle(graph, component)
        chain = " -> ".join([steps[0][0], *(edge.target for _, edge in steps)])
        lines = ", ".join(where(modules[importer], edge.line) for importer, edge in steps)
        report.append(f"cycle among {', '.join(component)}:\n    {chain}\n    (imports at {lines})")
    assert not report, "import cycles inside bcd_cli (imports inside functions count):\n" + "\n".join(report)


def test_the_import_graph_sees_every_kind_of_import(root_at: Path):
    """The graph builder on a made-up package: absolute, relative, deferred, package and submodule imports."""
    files = {
        "__init__.py": "",
        "a.py": "from bcd_cli.pkg import helper\n",
        "b.py": "def later():\n    import bcd_cli.c\n",
        "c.py": "from . import b\n",
        "pkg/__init__.py": "from .inner import thing\n",
        "pkg/helper.py": "",
        "pkg/inner.py": "from ..a import x\n",
        "d.py": "from bcd_cli import e\n",
        "e.py": "import os\n",
    }
    for name, text in files.items():
        (root_at / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (root_at / PACKAGE / name).write_text(text)
    graph = import_graph()
    assert {e.target for e in graph["bcd_cli.a"]} == {"bcd_cli.pkg", "bcd_cli.pkg.helper"}
    assert {e.target for e in graph["bcd_cli.b"]} == {"bcd_cli.c"}
    assert {e.target for e in graph["bcd_cli.pkg.inner"]} == {"bcd_cli.a"}
    assert {e.target for e in graph["bcd_cli.d"]} == {"bcd_cli.e"}
    assert strongly_connected(graph) == [
        ["bcd_cli.a", "bcd_cli.pkg", "bcd_cli.pkg.inner"],
        ["bcd_cli.b", "bcd_cli.c"],
    ]
    steps = one_cycle(graph, ["bcd_cli.b", "bcd_cli.c"])
    assert [(importer, edge.target, edge.line) for importer, edge in steps] == [
        ("bcd_cli.b", "bcd_cli.c", 2),
        ("bcd_cli.c", "bcd_cli.b", 1),
    ]


# ---------------------------------------------------------------------------------------------------------------
# long functions


def long_functions(path: Path) -> list[str]:
    """The functions and methods of ``path`` longer than MAX_FUNCTION_LINES lines, from ``def`` to their last
    line, whose docstring does not say why they are kept in one piece."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        assert node.end_lineno is not None
        length = node.end_lineno - node.lineno + 1
        if length > MAX_FUNCTION_LINES and KEPT_WHOLE not in (ast.get_docstring(node) or ""):
            found.append(f"{where(path, node.lineno)} {node.name}: {length} lines")
    return found


def test_no_function_longer_than_60_lines_without_a_reason():
    found = [entry for path in python_files(PACKAGE) for entry in long_functions(path)]
    assert not found, (
        f"functions longer than {MAX_FUNCTION_LINES} lines whose docstring does not say "
        f"'{KEPT_WHOLE} ...':\n" + "\n".join(found)
    )


def test_long_function_check_counts_from_def_to_the_last_line(root_at: Path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES - 1))
    path = root_at / "m.py"
    path.write_text(
        f"def fits():\n{body}\n\n\n"
        f"@staticmethod\ndef too_long():\n{body}\n    return 0\n\n\n"
        f'def explained():\n    """{KEPT_WHOLE} the steps share one state."""\n{body}\n'
    )
    assert long_functions(path) == [f"m.py:{MAX_FUNCTION_LINES + 4} too_long: {MAX_FUNCTION_LINES + 1} lines"]


# ---------------------------------------------------------------------------------------------------------------
# scripts use bcd_cli's public names only


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path, siblings: set[str]) -> list[str]:
    """A script's uses of private names of bcd_cli or of another script, and ``sys.path`` changes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    bound: dict[str, str] = {}  # a local name -> the project module it stands for
    ours = {PACKAGE, *siblings}

    def note(node: ast.AST, what: str) -> None:
        found.append(f"{where(path, getattr(node, 'lineno', None))}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ours:
                    if any(is_private(part) for part in alias.name.split(".")):
                        note(node, f"import {alias.name} (a private module)")
                    bound[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] not in ours:
                continue
            if any(is_private(part) for part in node.module.split(".")):
                note(node, f"from {node.module} import ... (a private module)")
            for alias in node.names:
                if is_private(alias.name):
                    note(node, f"from {node.module} import {alias.name} (a private name)")
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                note(node, f"{ast.unparse(node)} (a private name of {bound[root.id].split('.')[0]})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            args = node.args
            if (
                len(args) >= 2
                and isinstance(args[0], ast.Name)
                and args[0].id in bound
                and isinstance(args[1], ast.Constant)
                and isinstance(args[1].value, str)
                and is_private(args[1].value)
            ):
                note(node, f"{ast.unparse(node)} (a private name)")
        elif isinstance(node, ast.Attribute) and ast.unparse(node) == "sys.path":
            parent_call = next(
                (
                    n
                    for n in ast.walk(tree)
                    if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.value is node
                ),
                None,
            )
            if parent_call is not None or isinstance(node.ctx, ast.Store | ast.Del):
                note(node, "sys.path changed (to import another script: move what it shares into bcd_cli)")
        elif isinstance(node, ast.Name | ast.Attribute) and (
            (isinstance(node, ast.Name) and node.id in ("spec_from_file_location", "run_path", "SourceFileLoader"))
            or (isinstance(node, ast.Attribute) and node.attr in ("spec_from_file_location", "run_path"))
        ):
            note(node, f"{ast.unparse(node)} (loads a script by its path)")
    return found


def test_scripts_use_only_public_names():
    scripts = python_files("scripts")
    siblings = {p.stem for p in scripts}
    found = [entry for path in scripts for entry in private_uses(path, siblings)]
    assert not found, "scripts reaching into private names or changing sys.path:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from bcd_cli.run.train import _evaluate\n", "from bcd_cli.run.train import _evaluate (a private name)"),
        ("from bcd_cli.catalogue._scalar import f\n", "from bcd_cli.catalogue._scalar import ... (a private module)"),
        ("import bcd_cli.run.train as t\nt._evaluate()\n", "t._evaluate (a private name of bcd_cli)"),
        (
            "import bcd_cli.run.train\nbcd_cli.run.train._evaluate()\n",
            "bcd_cli.run.train._evaluate (a private name of bcd_cli)",
        ),
        ("from bench_sweep import _status_mb\n", "from bench_sweep import _status_mb (a private name)"),
        ("import sys\nsys.path.insert(0, 'x')\n", "sys.path changed"),
        ("import sys\nsys.path = ['x']\n", "sys.path changed"),
    ],
)
def test_private_uses_are_found(root_at: Path, source: str, expected: str):
    path = root_at / "script.py"
    path.write_text(source)
    found = private_uses(path, {"bench_sweep"})
    assert any(expected in entry for entry in found), found


def test_public_uses_pass(root_at: Path):
    path = root_at / "script.py"
    path.write_text(
        "import sys\nimport bcd_cli.run.train as t\nfrom bench import Case\nprint(sys.path, t.run, Case.__name__)\n"
    )
    assert private_uses(path, set()) == []
