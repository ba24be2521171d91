"""Running a notebook in a real kernel (nbclient) and reading what its cells showed: for
the notebook tests (tests/test_notebooks.py) and, through the ``execute_notebook`` and
``text_of`` fixtures of tests/conftest.py, the budget's kernel tests."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def text_of(cell) -> str:
    """Everything a notebook cell printed or displayed, as plain text."""
    parts = []
    for output in cell.outputs:
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("display_data", "execute_result"):
            parts.append(output.data.get("text/plain", ""))
    return "\n".join(parts)


def execute_notebook(path: Path, workdir: Path, *, env: dict[str, str] | None = None,
                      timeout: float = 300, startup_timeout: float = 60):
    """Run the notebook at ``path`` headlessly in a real ipykernel (nbclient), with
    ``workdir`` as its working directory and this checkout importable, and return the
    executed notebook. ``env`` adds variables to the kernel's environment only (this
    process's is left alone); raises CellExecutionError on a cell that fails unless the
    cell is tagged ``raises-exception``."""
    import nbformat
    from nbclient import NotebookClient

    kernel_env = dict(os.environ)
    kernel_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    kernel_env.update(env or {})
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, startup_timeout=startup_timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute(env=kernel_env)
    return nb
