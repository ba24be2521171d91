"""The package's imports follow the one-way graph of docs/architecture.md.

Every module is read with ``ast`` (imports inside functions included; imports under
``if TYPE_CHECKING:`` are types only and skipped): no module imports a layer above its own,
there are no cycles except the documented upward calls (which must be function-level and
must still exist), the views and the report never touch the sampler, the native module or the
IPython layer, and only the extension loader imports the IPython layer.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mprofile_ipy"
DOC = ROOT / "docs" / "architecture.md"
#: Compiled modules (no source): the cffi extension.
BINARY = ("mprofile_ipy._native",)


def _module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _module_names()
KNOWN = set(MODULES) | set(BINARY)


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported package module, imported at module level) for every import of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[str, bool]] = []

    def resolve(target: str) -> str | None:
        while target and target not in KNOWN:
            if "." not in target:
                return None
            target = target.rsplit(".", 1)[0]
        return target or None

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub, top)
                continue
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - (child.level - 1)]
                    module = ".".join(base + ([child.module] if child.module else []))
                else:
                    module = child.module or ""
                targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in KNOWN
                           else module for alias in child.names]
            for target in targets:
                resolved = resolve(target)
                if resolved and resolved != name and resolved.startswith("mprofile_ipy"):
                    found.append((resolved, top))
            visit(child, inner)

    visit(tree, True)
    return found


GRAPH: dict[str, dict[str, bool]] = {}
for _name, _path in MODULES.items():
    edges: dict[str, bool] = {}
    for _target, _top in _imports(_name, _path):
        edges[_target] = edges.get(_target, False) or _top
    GRAPH[_name] = edges


def _doc_block(kind: str) -> list[str]:
    match = re.search(rf"```text {kind}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert match, f"docs/architecture.md has no ```text {kind}``` block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip()]


LAYERS = [line.split() for line in _doc_block("layers")]  # top first
EXCEPTIONS = {tuple(part.strip() for part in line.split(":", 1)[0].split("->"))
              for line in _doc_block("exceptions")}


def _layer(module: str) -> int:
    """Index of the module's layer (0 = top); every module must be placed."""
    for index, patterns in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return index
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def _matches(module: str, *patterns: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in patterns)


def test_the_reader_sees_function_level_and_relative_imports():
    # GIVEN modules known to import in both ways WHEN read THEN both are found
    assert GRAPH["mprofile_ipy.result"]["mprofile_ipy.report"] is True
    assert GRAPH["mprofile_ipy.result"]["mprofile_ipy.renderers.text"] is False  # in a method
    assert GRAPH["mprofile_ipy.sampler"].get("mprofile_ipy._native") is not None
    assert "mprofile_ipy.ipython" in GRAPH["mprofile_ipy"]  # the extension loader


def test_every_module_is_in_a_layer():
    for module in MODULES:
        _layer(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = sorted(
        (source, target) for source, targets in GRAPH.items() for target in targets
        if _layer(target) < _layer(source) and (source, target) not in EXCEPTIONS)
    assert upward == [], "imports against docs/architecture.md's layers"


def test_documented_upward_imports_exist_and_are_function_level():
    for source, target in EXCEPTIONS:
        assert target in GRAPH.get(source, {}), f"{source} -> {target} is gone: remove it " \
                                                 f"from docs/architecture.md"
        assert GRAPH[source][target] is False, f"{source} imports {target} at module level"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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
                        out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = {source: {t for t in targets if (source, t) not in EXCEPTIONS}
             for source, targets in GRAPH.items()}
    assert _cycles(graph) == []


@pytest.mark.parametrize("source", sorted(m for m in MODULES if _matches(
    m, "mprofile_ipy.renderers", "mprofile_ipy.report", "mprofile_ipy.result")))
def test_views_never_touch_the_sampler_or_the_ipython_layer(source):
    touched = [t for t in GRAPH[source] if _matches(
        t, "mprofile_ipy.sampler", "mprofile_ipy.native_capture", "mprofile_ipy._native",
        "mprofile_ipy.ipython")]
    assert touched == []


def test_results_and_renderers_do_not_import_each_other_both_ways():
    renderers = [m for m in MODULES if _matches(m, "mprofile_ipy.renderers")]
    assert any(r in GRAPH["mprofile_ipy.result"] for r in renderers)
    assert [r for r in renderers if "mprofile_ipy.result" in GRAPH[r]] == []


def test_only_the_sampler_imports_the_native_module():
    importers = sorted(m for m, targets in GRAPH.items() if "mprofile_ipy._native" in targets)
    assert importers == ["mprofile_ipy.native_capture", "mprofile_ipy.sampler"]


def test_only_the_extension_loader_imports_the_ipython_layer():
    importers = sorted(m for m, targets in GRAPH.items()
                       if any(_matches(t, "mprofile_ipy.ipython") for t in targets)
                       and not _matches(m, "mprofile_ipy.ipython"))
    assert importers == ["mprofile_ipy"]
    assert GRAPH["mprofile_ipy"]["mprofile_ipy.ipython"] is False  # only when IPython asks


def test_the_model_imports_no_view():
    for source in ("mprofile_ipy.model", "mprofile_ipy.aggregate", "mprofile_ipy.estimate",
                   "mprofile_ipy.storage", "mprofile_ipy.export.pprof"):
        views = [t for t in GRAPH[source] if _matches(
            t, "mprofile_ipy.report", "mprofile_ipy.result", "mprofile_ipy.renderers",
            "mprofile_ipy.ipython", "mprofile_ipy.attribution")]
        assert views == [], source
