"""Print, for each cell of an executed notebook that uses ``%mprofile``/``%%mprofile``,
the cell's first line and the text the profiler showed (the ``text/plain`` of its outputs).

Used by scripts/demo.sh, so that the demo shows in the terminal what the notebook's cells
reported. Figures and widgets are named, not drawn.

    python scripts/notebook_profiles.py notebooks/quickstart-executed.ipynb
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def output_text(output: dict) -> str:
    """The plain text of one notebook output: a stream's text or a display's text/plain."""
    if output.get("output_type") == "stream":
        text = output.get("text", "")
    elif output.get("output_type") == "error":
        return f"{output.get('ename')}: {output.get('evalue')}"
    else:
        data = output.get("data", {})
        text = data.get("text/plain", "")
        text = "".join(text) if isinstance(text, list) else text
        # A chart's or a widget's text/plain is either the profile's text (shown) or only
        # an object repr such as "<Figure size 1100x420 with 1 Axes>" (named instead).
        placeholder = ("[a chart]" if "image/png" in data else
                       "[an interactive widget]"
                       if "application/vnd.jupyter.widget-view+json" in data else None)
        if placeholder and (not text.strip() or text.lstrip().startswith("<")):
            return placeholder
    return "".join(text) if isinstance(text, list) else text


def profiled_cells(notebook: dict) -> list[tuple[int, str, str]]:
    """(cell number, first source line, output text) of every cell that runs the magic."""
    found = []
    for number, cell in enumerate(notebook.get("cells", []), 1):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", ""))
        if "%mprofile" not in source:
            continue
        text = "\n".join(output_text(o).rstrip("\n") for o in cell.get("outputs", []))
        found.append((number, source.splitlines()[0], text))
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    notebook = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    cells = profiled_cells(notebook)
    if not cells:
        print(f"no cell of {argv[1]} uses %mprofile", file=sys.stderr)
        return 1
    for number, first_line, text in cells:
        print(f"--- cell {number}: {first_line}")
        if text.strip():
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
