#!/usr/bin/env bash
# Run the overhead and accuracy benchmarks on every CPython 3.10-3.13 this machine has.
#
# Each version gets a benchmark-only venv (outside the work tree) with cffi, setuptools and,
# when it installs, mprofile==0.0.15 from PyPI, the comparison column. mprofile 0.0.15 is a
# benchmark-only dependency, never one of the project's. The sampler is compiled from this
# checkout's current sources into a private copy inside that venv, so the numbers are those
# of the code on disk and the work tree (and any in-place build in it) is left untouched.
#
# Usage: benchmarks/run_all.sh [overhead.py options, e.g. --quick or --rounds 11]
# Environment:
#   VERSIONS="3.11 3.12"   which versions to run (default: 3.10 3.11 3.12 3.13)
#   BENCH_VENVS=DIR        where the venvs live (default: ~/.cache/mprofile-ipy-bench)
#   ACCURACY=0             skip accuracy.py
#   OVERHEAD=0             skip overhead.py
# Tables go to stdout and to benchmarks/results/run_all-<time>.md; JSON to benchmarks/results/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSIONS="${VERSIONS:-3.10 3.11 3.12 3.13}"
BENCH_VENVS="${BENCH_VENVS:-$HOME/.cache/mprofile-ipy-bench}"
RESULTS="$ROOT/benchmarks/results"
mkdir -p "$RESULTS" "$BENCH_VENVS"
REPORT="$RESULTS/run_all-$(date +%Y%m%d-%H%M%S).md"

QUICK=()
for arg in "$@"; do
    [[ "$arg" == "--quick" ]] && QUICK=(--quick)
done

find_python() {
    # pyenv's installs first, then python3.X on PATH; a candidate must actually run (a pyenv
    # shim for a version that is not selected exists but fails).
    local v="$1" candidate
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    for candidate in "$pyenv_root"/versions/"$v".*/bin/python"$v" \
                     "$(command -v "python$v" 2>/dev/null || true)"; do
        if [[ -x "$candidate" ]] && "$candidate" -c "pass" 2>/dev/null; then
            echo "$candidate"; return 0
        fi
    done
    return 1
}

setup_venv() {
    # Create (once) the benchmark venv of one version and build the sampler into it.
    local v="$1" python="$2" venv="$BENCH_VENVS/py$v"
    if [[ ! -x "$venv/bin/python" ]]; then
        "$python" -m venv "$venv"
    fi
    if ! "$venv/bin/python" -c "import cffi, setuptools" 2>/dev/null; then
        "$venv/bin/pip" install -q cffi setuptools >&2
    fi
    if ! "$venv/bin/python" -c "import mprofile" 2>/dev/null; then
        if "$venv/bin/pip" install -q "mprofile==0.0.15" >&2; then
            echo "mprofile 0.0.15 installed for $v" >&2
        else
            echo "mprofile 0.0.15 did not install for $v: its column is skipped" >&2
        fi
    fi
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
        echo "== CPython $v: not found, skipped" | tee -a "$REPORT"
        continue
    fi
    echo "== CPython $v ($python)" >&2
    if ! venv="$(setup_venv "$v" "$python")"; then
        status=1
        continue
    fi
    export PYTHONPATH="$venv/src"
    full="$("$venv/bin/python" -c 'import platform; print(platform.python_version())')"
    label="cpython-$full"
    if [[ "${OVERHEAD:-1}" != 0 ]]; then
        "$venv/bin/python" "$ROOT/benchmarks/overhead.py" --python-label "$label" "$@" \
            | tee -a "$REPORT" || status=1
    fi
    if [[ "${ACCURACY:-1}" != 0 ]]; then
        "$venv/bin/python" "$ROOT/benchmarks/accuracy.py" --python-label "$label" \
            "${QUICK[@]}" | tee -a "$REPORT" || status=1
    fi
    unset PYTHONPATH
done
echo "tables: $REPORT" >&2
exit "$status"
