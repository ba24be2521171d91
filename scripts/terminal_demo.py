"""Run two cells through a real terminal-style IPython shell and print what a user sees.

Used by scripts/demo.sh; also a quick way to eyeball the text renderer.
"""

from IPython.core.interactiveshell import InteractiveShell

CELLS = [
    "%load_ext mprofile_ipy",
    """%%mprofile -v text
import json
rows = [{"id": i, "name": str(i) * 20} for i in range(100_000)]
blob = json.dumps(rows)
del rows
""",
    "%mprofile -v text -g line keep = [bytearray(1024) for _ in range(20_000)]",
]


def main() -> None:
    shell = InteractiveShell.instance()
    for cell in CELLS:
        result = shell.run_cell(cell, store_history=True)
        result.raise_error()


if __name__ == "__main__":
    main()
