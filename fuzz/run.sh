#!/bin/sh
# Fuzz both loaders for a bounded time: fuzz/run.sh SECONDS [SEED]
#
# Half the time goes to the structure-aware fuzzer, half to coverage-guided fuzzing with
# atheris (when it is installed; otherwise the structure-aware fuzzer gets it all). Both
# run under a 3 GiB address-space limit (set inside fuzz_loaders.py with setrlimit; atheris
# also gets libFuzzer's -rss_limit_mb). Crashing inputs land in fuzz/crashes/; copy them to
# tests/data/fuzz/ (named snapshot-*.bin or pprof-*.bin) once fixed. Exit status 1 when
# anything crashed. PYTHON selects the interpreter (default: .venv/bin/python, python3).
set -eu
seconds=${1:?usage: fuzz/run.sh SECONDS [SEED]}
seed=${2:-$(date +%s)}
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1  # keep numpy's address space small
status=0
if "$PYTHON" -c "import atheris" 2>/dev/null; then
    half=$((seconds / 2))
    "$PYTHON" "$here/fuzz_loaders.py" structured --seconds "$half" --seed "$seed" \
        --crashes "$here/crashes" || status=1
    corpus=$(mktemp -d)
    "$PYTHON" "$here/fuzz_loaders.py" atheris --seconds "$((seconds - half))" \
        --corpus "$corpus" --crashes "$here/crashes" -- -seed="$seed" || status=1
    rm -rf "$corpus"
else
    echo "atheris is not installed: structure-aware fuzzing only" >&2
    "$PYTHON" "$here/fuzz_loaders.py" structured --seconds "$seconds" --seed "$seed" \
        --crashes "$here/crashes" || status=1
fi
exit $status
