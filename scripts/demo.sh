#!/usr/bin/env bash
# The main job, from a fresh clone: build the profiler into .venv, run the quickstart
# notebook headlessly in a real Jupyter kernel, and show the same magic in a terminal IPython.
#
#   bash scripts/demo.sh
#
# Writes notebooks/quickstart-executed.ipynb, with every output (tables, charts, reports).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
source scripts/common.sh
setup_venv "$PYTHON" .venv "[notebook,numpy]"

echo "== running notebooks/quickstart.ipynb in a real kernel"
.venv/bin/jupyter execute notebooks/quickstart.ipynb --output=quickstart-executed
echo "   -> notebooks/quickstart-executed.ipynb"

echo "== the same profiler in a terminal IPython"
.venv/bin/python scripts/terminal_demo.py
