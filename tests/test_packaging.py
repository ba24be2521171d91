"""Packaging and the README's promises, checked fast inside the repository.

The slow path a user takes (sdist -> wheel built from it -> fresh venvs, plain and lean)
runs in scripts/test_packaging.sh, a stage of scripts/test.sh. These tests catch the same
mistakes earlier: a source or header the C build needs but the sdist leaves out, a package
file the release would miss, a Python version range that promises more than the C frame
walker knows, a notebook dependency imported by the core API (which breaks the lean
install), and README snippets that fail when pasted or show output the code does not print.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")

pytestmark = pytest.mark.timeout(180)

try:
    import tomllib
except ModuleNotFoundError:  # CPython 3.10
    tomllib = None


def pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib is new in CPython 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the README's ```language fenced blocks, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


def run_python(code: str, cwd: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter of this venv, in ``cwd``."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


# ---- the source release ---------------------------------------------------------------

# Local state that a clean checkout does not have. A stale *.egg-info would hide a
# MANIFEST.in mistake: setuptools adds the files of an existing SOURCES.txt to the sdist.
LOCAL_STATE = shutil.ignore_patterns(".git", ".venv*", "*.egg-info", "build", "dist",
                                     "__pycache__", "*.so", "*.o", ".pytest_cache",
                                     ".ruff_cache", "results", "*executed.ipynb")


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory) -> set[str]:
    """Paths (relative to the release's top folder) of every file in an sdist built from a
    clean copy of the work tree."""
    pytest.importorskip("build", reason="the `build` package (test extra) is not installed")
    tree = tmp_path_factory.mktemp("tree") / "src"
    shutil.copytree(ROOT, tree, ignore=LOCAL_STATE)
    out = tmp_path_factory.mktemp("sdist")
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                           "-o", str(out), str(tree)], capture_output=True, text=True,
                          timeout=150)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [archive] = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile() and "/" in m.name}


def native_build_inputs() -> set[str]:
    """Every file the cffi build compiles or includes: its sources, the cdef header, and
    (transitively) every header named by ``#include "..."`` in them."""
    sys.path.insert(0, str(ROOT / "mprofile_ipy"))
    try:
        import _native_build
    finally:
        sys.path.pop(0)
    needed = {f"native/{name}" for name in _native_build.SOURCES} | {"native/mprofile.h"}
    todo = list(needed)
    while todo:
        text = (ROOT / todo.pop()).read_text(encoding="utf-8")
        for header in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, flags=re.M):
            path = f"native/{header}"
            if path not in needed and (ROOT / path).exists():
                needed.add(path)
                todo.append(path)
    return needed


def test_sdist_carries_every_file_the_c_build_needs(sdist_names):
    # GIVEN the sources and headers the cffi builder compiles and includes
    needed = native_build_inputs()
    assert "native/core.h" in needed and "native/stacks.c" in needed
    # THEN the source release carries each of them (a missing header fails the wheel build)
    assert needed - sdist_names == set()
    assert {"pyproject.toml", "setup.py", "MANIFEST.in", "README.md"} <= sdist_names


def test_sdist_carries_the_whole_package_and_no_build_products(sdist_names):
    # GIVEN every file of the package folder that is not a build product
    skip = re.compile(r"(__pycache__|\.so$|\.pyd$|\.py[co]$|^mprofile_ipy/_native\.c$)")
    package = {p.relative_to(ROOT).as_posix() for p in (ROOT / "mprofile_ipy").rglob("*")
               if p.is_file()}
    wanted = {p for p in package if not skip.search(p)}
    # THEN all of them are in the sdist, and no compiled or generated file is
    assert wanted - sdist_names == set()
    assert [n for n in sdist_names if skip.search(n)] == []
    # AND the tests, docs and example notebook come along, but no executed notebook
    assert "tests/test_packaging.py" in sdist_names
    assert "notebooks/quickstart.ipynb" in sdist_names
    assert not [n for n in sdist_names if "executed" in n]


# ---- metadata -------------------------------------------------------------------------

def test_requires_python_is_the_range_the_frame_walker_knows():
    from packaging.specifiers import SpecifierSet

    meta = pyproject()["project"]
    spec = SpecifierSet(meta["requires-python"])
    # THEN 3.10-3.13 install, and 3.9 and 3.14 (whose frame layout stacks.c does not know)
    # are refused by pip before anything is compiled
    assert [v for v in ("3.9", "3.10.0", "3.11.7", "3.12.1", "3.13.0", "3.14.0")
            if v in spec] == ["3.10.0", "3.11.7", "3.12.1", "3.13.0"]
    classifiers = {c.rsplit(":: ", 1)[1] for c in meta["classifiers"]
                   if re.match(r"Programming Language :: Python :: 3\.\d+$", c)}
    assert classifiers == {"3.10", "3.11", "3.12", "3.13"}


def test_every_extra_the_readme_names_exists_and_none_is_empty():
    extras = pyproject()["project"]["optional-dependencies"]
    named = set()
    for group in re.findall(r"mprofile[-_]ipy[^\s\[`']*\[([a-z,]+)\]", README):
        named.update(group.split(","))
    named.update(re.findall(r"^\| `([a-z]+)` \|", README, flags=re.M))   # the extras table
    assert named, "the README names no extra"
    assert named - set(extras) == set()
    assert set(extras) - named == set(), "an extra the README does not explain"
    assert all(extras[name] for name in extras)
    # The notebook views' libraries are what a plain install gives (the design's choice).
    core = {re.split(r"[<>=!~; \[]", d, maxsplit=1)[0].lower()
            for d in pyproject()["project"]["dependencies"]}
    assert core == {"cffi", "ipython", "ipywidgets", "pandas", "matplotlib", "protobuf"}


# ---- the lean install -----------------------------------------------------------------

LEAN_SCRIPT = textwrap.dedent("""
    import importlib.abc, sys

    BLOCKED = {"IPython", "ipywidgets", "pandas", "matplotlib", "google", "numpy", "pyarrow"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (lean install)")
            return None

    sys.meta_path.insert(0, Block())
    import mprofile_ipy as mp

    mp.start(seed=5)
    data = [bytes(1000) for _ in range(50_000)]
    snapshot = mp.take_snapshot()
    top = snapshot.statistics("lineno")[0]
    current, peak = mp.get_traced_memory()
    snapshot.dump("lean.mprof")
    again = mp.Snapshot.load("lean.mprof").statistics("lineno")[0]
    diff = snapshot.compare_to(snapshot, "filename")
    mp.stop()
    print(top.traceback[0].lineno, top.size, top.samples, current, peak, again.size,
          len(diff), mp.is_tracing())
    print(sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED))
""")


def test_core_api_works_without_the_notebook_dependencies(tmp_path):
    # GIVEN an interpreter where IPython, ipywidgets, pandas, matplotlib, protobuf, NumPy and
    # pyarrow cannot be imported (what `pip install --no-deps mprofile-ipy cffi` leaves)
    proc = run_python(LEAN_SCRIPT, tmp_path)
    # WHEN the tracemalloc-style API runs THEN it works and imports none of them
    assert proc.returncode == 0, proc.stderr[-3000:]
    values, modules = proc.stdout.splitlines()
    lineno, size, samples, current, peak, again, ndiff, tracing = values.split()
    data_line = next(i for i, line in enumerate(LEAN_SCRIPT.splitlines(), 1)
                     if line.startswith("data = "))
    assert int(lineno) == data_line
    assert 40e6 < int(size) < 62e6 and int(samples) > 200
    assert 40e6 < int(current) <= int(peak)
    assert again == size and int(ndiff) >= 1 and tracing == "False"
    assert modules == "[]"


# ---- the README's snippets, as a user pastes them ---------------------------------------

STAT_LINE = re.compile(r"^\S*example\.py:4: size=\d+(\.\d)? MiB, count=\d+, average=\d+ B, "
                       r"samples=\d+ \(±\d+%\)$")


def test_readme_python_snippet_runs_and_prints_what_the_readme_shows(tmp_path):
    # GIVEN the README's Python example, saved as example.py as the README says
    snippet = next(b for b in fenced_blocks(README, "python") if "mp.start()" in b)
    (tmp_path / "example.py").write_text(snippet, encoding="utf-8")
    # WHEN it runs
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # THEN it prints one statistic line in the format the README shows, and the estimates
    stat, memory = proc.stdout.splitlines()
    assert STAT_LINE.match(stat), stat
    size_mib = float(stat.split("size=")[1].split()[0])
    assert 40 < size_mib < 60                     # 50,000 blocks of 1042 B: 49.7 MiB
    current, peak = map(int, memory.strip("()").split(", "))
    assert 40e6 < current <= peak
    assert (tmp_path / "heap.pb.gz").stat().st_size > 100
    # AND the output the README shows has exactly that format
    shown = README.split(snippet + "```\n", 1)[1]
    shown_stat, shown_memory = fenced_blocks(shown, "")[0].splitlines()
    assert STAT_LINE.match(shown_stat), shown_stat
    assert re.fullmatch(r"\(\d+, \d+\)", shown_memory)


def test_readme_ipython_cells_run_when_pasted(tmp_path):
    # GIVEN the README's IPython blocks, each one cell
    cells = fenced_blocks(README, "ipython")
    assert [c.split()[0] for c in cells] == ["%load_ext", "%%mprofile", "%mprofile"]
    # WHEN they run, in order, in a real InteractiveShell
    driver = textwrap.dedent(f"""
        import contextlib, io, sys
        from IPython.core.interactiveshell import InteractiveShell
        shell = InteractiveShell.instance()
        for cell in {cells!r}:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                result = shell.run_cell(cell, store_history=True)
            sys.stdout.write(out.getvalue())
            if not result.success:
                sys.exit(f"cell failed: {{cell!r}}: {{result.error_before_exec!r}} "
                         f"{{result.error_in_exec!r}}")
    """)
    proc = run_python(driver, tmp_path)
    # THEN none fails, and each profile names the line that allocated
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'rows = [{"id": i' in proc.stdout
    assert "keep = [bytearray(1024)" in proc.stdout
    assert proc.stdout.count("still alive") >= 2
