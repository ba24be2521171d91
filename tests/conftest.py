"""Shared fixtures: the IPython test shell, running a cell as a user would, hand-written raw
traces, and running code in a fresh interpreter where some optional libraries are missing."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def shell():
    """The process-wide IPython test shell (globalipapp replaces its own get_ipython)."""
    from IPython.testing import globalipapp

    globalipapp.start_ipython()
    return globalipapp.get_ipython()


@pytest.fixture(scope="session")
def ipython_shell():
    """The IPython InteractiveShell the tests share."""
    return shell()


@pytest.fixture(scope="module")
def ip(ipython_shell):
    """The test shell with the extension loaded, for one test module (unloaded after)."""
    ipython_shell.run_line_magic("load_ext", "mprofile_ipy")
    yield ipython_shell
    ipython_shell.run_line_magic("unload_ext", "mprofile_ipy")


@pytest.fixture
def magics(ip):
    """The extension's magics object; after the test, any %mprofile session is ended and
    the test fails if the sampler still runs."""
    import mprofile_ipy

    found = ip.magics_manager.registry["MProfileMagics"]
    yield found
    found.stop_session()
    found.session = None
    assert not mprofile_ipy.is_tracing(), "a test left the sampler running"


@pytest.fixture
def no_session_left(magics):
    """For modules that only need the clean-up of :func:`magics`."""
    return


@pytest.fixture
def run_cell() -> Callable:
    """``run_cell(ip, source)`` runs a cell as the user would, with history, and returns
    (execution count, ExecutionResult, captured output)."""
    from IPython.utils.capture import capture_output

    def run(ip, source: str):
        number = ip.execution_count
        with capture_output() as captured:
            result = ip.run_cell(source, store_history=True)
        return number, result, captured

    return run


def raw_frame(filename: str, lineno: int, name: str = "<module>", first: int = 1) -> tuple:
    """A raw frame as the sampler records it."""
    return (filename, lineno, name, first)


def raw_trace(size: int, frames: tuple, domain: int = 0, allocator: int = 2,
              thread_id: int = 1) -> tuple:
    """A raw trace (docs/architecture.md): frames most recent first."""
    return (domain, size, frames, len(frames), allocator, thread_id)


@pytest.fixture
def traces():
    """The raw-trace helpers: ``traces.frame(...)``, ``traces.trace(...)``."""

    class Helpers:
        frame = staticmethod(raw_frame)
        trace = staticmethod(raw_trace)

    return Helpers


@pytest.fixture
def without_modules(tmp_path) -> Callable:
    """``without_modules(names, code)`` runs ``code`` in a fresh interpreter where importing
    any of ``names`` fails as if it were not installed; returns the CompletedProcess."""

    def run(names: Iterable[str], code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        blocked = sorted(set(names))
        prelude = textwrap.dedent(f"""
            import sys
            for _name in {blocked!r}:
                for _loaded in [m for m in sys.modules if m == _name or
                                m.startswith(_name + ".")]:
                    del sys.modules[_loaded]
                sys.modules[_name] = None  # "import _name" now raises ImportError
        """)
        script = tmp_path / "without_modules.py"
        script.write_text(prelude + textwrap.dedent(code), encoding="utf-8")
        env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg", COLUMNS="110")
        return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=str(tmp_path))

    return run


# ---------------------------------------------------------------------------------------------
# Notebooks in a real kernel


@pytest.fixture(scope="session", name="execute_notebook")
def execute_notebook_fixture() -> Callable:
    """``execute_notebook(path, workdir, env=None, timeout=300)``: run a notebook in a real
    kernel and return it executed (``tests/_notebooks.py``)."""
    pytest.importorskip("nbclient")
    from _notebooks import execute_notebook

    return execute_notebook


@pytest.fixture(scope="session", name="text_of")
def text_of_fixture() -> Callable:
    """``text_of(cell)``: what an executed notebook cell printed or displayed, as text."""
    from _notebooks import text_of

    return text_of
