#!/usr/bin/env bash
# Run benchmarks/callgrind.py (instruction counts under valgrind) on CPython 3.11 and 3.12,
# or the versions given, each in a benchmark-only venv outside the work tree.
#
# Each venv has cffi, setuptools, NumPy, pandas and, when they install from PyPI,
# mprofile==0.0.15 and memray: the comparison columns. Neither is ever a dependency of the
# project. The sampler is compiled from this checkout's current sources into a private copy
# inside the venv, so the numbers are those of the code on disk and the work tree is not
# touched.
#
# Usage: benchmarks/run_callgrind.sh [callgrind.py options, e.g. --jobs 2 --workloads churn]
# Environment:
#   VERSIONS="3.11 3.12"   which versions (default: 3.11 3.12)
#   BENCH_VENVS=DIR        where the venvs live (default: ~/.cache/mprofile-ipy-bench)
# Tables go to stdout and to benchmarks/results/callgrind-<version>-<time>.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSIONS="${VERSIONS:-3.11 3.12}"
BENCH_VENVS="${BENCH_VENVS:-$HOME/.cache/mprofile-ipy-bench}"
RESULTS="$ROOT/benchmarks/results"
mkdir -p "$RESULTS" "$BENCH_VENVS"
command -v valgrind >/dev/null || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 2; }

find_python() {  # pyenv's installs first, then python3.X on PATH; it must actually run
    local v="$1" candidate
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v" \
                     "$(command -v "python$v" 2>/dev/null || true)"; do
        if [[ -x "$candidate" ]] && "$candidate" -c "pass" 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

setup_venv() {  # setup_venv VERSION PYTHON: prints the venv's folder
    local v="$1" python="$2" venv="$BENCH_VENVS/callgrind-$v" pkg
    [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -c "import cffi, setuptools, numpy, pandas" 2>/dev/null \
        || "$venv/bin/pip" install -q cffi setuptools numpy pandas >&2
    for pkg in "mprofile==0.0.15" memray; do
        "$venv/bin/pip" show -q "${pkg%%=*}" >/dev/null 2>&1 && continue
        "$venv/bin/pip" install -q "$pkg" >&2 \
            || echo "$pkg did not install for $v: its column is skipped" >&2
    done
    local src="$venv/src"
    rm -rf "$src"
    mkdir -p "$src"
    tar -C "$ROOT" --exclude='__pycache__' --exclude='*.so' --exclude='*.o' \
        --exclude='mprofile_ipy/_native.c' -cf - mprofile_ipy native | tar -C "$src" -xf -
    (cd "$src" && "$venv/bin/python" mprofile_ipy/_native_build.py >build.log 2>&1) || {
        echo "building the sampler for $v failed; see $src/build.log" >&2
        return 1
    }
    echo "$venv"
}

status=0
for v in $VERSIONS; do
    if ! python="$(find_python "$v")"; then
        echo "== CPython $v: not found, skipped"
        continue
    fi
    echo "== CPython $v ($python): setting up $BENCH_VENVS/callgrind-$v" >&2
    venv="$(setup_venv "$v" "$python")" || { status=1; continue; }
    full="$("$venv/bin/python" -c 'import platform; print(platform.python_version())')"
    report="$RESULTS/callgrind-$full-$(date +%Y%m%d-%H%M%S).md"
    PYTHONPATH="$venv/src" MPROFILE_FLOOR_BUILD="$venv/floor" "$venv/bin/python" \
        "$ROOT/benchmarks/callgrind.py" --python-label "CPython $full" "$@" \
        | tee "$report" || status=1
done
exit "$status"
