"""The house rules the code keeps: what the core may import of a kind, no import circles, no sprawl, no outside path."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import FIXTURES, ROOT

LONGEST = 500


def modules() -> dict[str, Path]:
    """Every module under worker/ and jobs/, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted([*(ROOT / "worker").rglob("*.py"), *(ROOT / "jobs").rglob("*.py")]):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at its top, inside a function or under TYPE_CHECKING alike."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_core_cli_imports_only_each_kinds_commands_module() -> None:
    """worker/cli.py imports nothing of a kind but `jobs.<kind>.commands`: the rest reaches it through hooks."""
    of_kinds = {name for name in imported(ROOT / "worker" / "cli.py") if name.startswith("jobs.")}
    kinds = {name.rsplit(".", 1)[0] for name in of_kinds if name.endswith(".commands")}
    assert kinds, "the CLI composes the kinds' commands"
    assert of_kinds - {f"{kind}.commands" for kind in kinds} - kinds == set()


def test_no_import_circles_in_worker_or_jobs() -> None:
    """No module of worker/ or jobs/ reaches itself through its imports, however lazily they are made."""
    known = modules()
    graph = {name: {other for other in imported(path) if other in known and other != name}
             for name, path in known.items()}  # fmt: skip
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle() -> None:
    """The check above can fail: a lazy import back from a helper is a circle."""
    assert cycles({"a.job": {"a.dump"}, "a.dump": {"a.job"}, "a.other": set()}) == [["a.dump", "a.job"]]


def test_a_long_module_says_why_it_is_one_piece() -> None:
    """A module over 500 lines says at its top why it is one piece; none is long by accident."""
    texts = {name: path.read_text() for name, path in modules().items()}
    long = {name: len(text.splitlines()) for name, text in texts.items() if len(text.splitlines()) > LONGEST}
    unexplained = [name for name in long if "one piece" not in (ast.get_docstring(ast.parse(texts[name])) or "")]
    assert unexplained == [], long


def test_nothing_reads_a_path_outside_the_repository() -> None:
    """Tests, benchmarks, the Makefile and CI name no folder beside the clone: a user's clone has none."""
    outside = re.compile(r"\.\./shared|parent\s*/\s*[\"']shared[\"']|ROOT\.parent\b|parents\[\d+\]\s*/")
    files = [ROOT / "Makefile", *(p for folder in ("tests", "bench", ".ci") for p in (ROOT / folder).rglob("*")
                                   if p.is_file() and "__pycache__" not in p.parts)]  # fmt: skip
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in files
        if path.suffix not in (".gz", ".tgz", ".archive", ".pyc")
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if outside.search(line) and "outside = re.compile" not in line
    ]
    assert offenders == []


def test_every_fixture_folder_says_where_it_came_from() -> None:
    """Each folder of tests/fixtures is named in its README, which says what made its files."""
    readme = (FIXTURES / "README.md").read_text()
    folders = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert [name for name in folders if f"`{name}/" not in readme] == []
