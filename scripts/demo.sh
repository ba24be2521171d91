#!/usr/bin/env bash
# The main job, from a fresh clone: build the profiler into .venv, run the quickstart
# notebook headlessly in a real Jupyter kernel, print the profiles its cells showed, and
# show the same magic in a terminal IPython.
#
#   bash scripts/demo.sh
#
# Writes notebooks/quickstart-executed.ipynb, with every output (tables, charts, reports).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
source scripts/common.sh

# Whatever the notebook or the kernel leave in the temporary folder (the notebook writes
# its pprof files to a tempfile.mkdtemp() folder) goes when the demo ends.
demo_tmp=$(mktemp -d "${TMPDIR:-/tmp}/mprofile-demo-XXXXXX")
trap 'rm -rf "$demo_tmp"' EXIT
export TMPDIR=$demo_tmp

echo "== 1/3 setting up .venv with $("$PYTHON" --version)"
setup_venv "$PYTHON" .venv "[notebook,numpy]"

echo "== 2/3 running notebooks/quickstart.ipynb in a real Jupyter kernel (about 10 s)"
.venv/bin/jupyter execute notebooks/quickstart.ipynb --output=quickstart-executed \
    2> >(grep -v -e 'running over TCP without encryption' >&2)
echo "   -> notebooks/quickstart-executed.ipynb; the profiles its cells showed:"
.venv/bin/python scripts/notebook_profiles.py notebooks/quickstart-executed.ipynb

echo "== 3/3 the same profiler in a terminal IPython (scripts/terminal_demo.py)"
.venv/bin/python scripts/terminal_demo.py
