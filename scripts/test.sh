#!/usr/bin/env bash
# Set up everything the tests need, from a fresh clone, and run them.
#
#   bash scripts/test.sh
#
# 1. A venv (.venv) on the default python3 with the package installed editable (this
#    compiles the C sampler with cffi) and its test extras; the whole suite runs there.
# 2. `go tool pprof` (Debian's golang-go) for the pprof tests, installed when missing and
#    the machine allows it (root + apt); without it those tests skip and say why.
# 3. The sampler's core tests again on every other CPython 3.10-3.13 found (pyenv or
#    PATH), each in its own venv (.venv-3.X): CPython's frame internals differ per version.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CORE_TESTS=(tests/test_sampler.py tests/test_vs_tracemalloc.py tests/test_robustness.py
            tests/test_model.py tests/test_estimate.py tests/test_units.py tests/test_storage.py
            tests/test_numpy_capture.py tests/test_native_mode.py)
source scripts/common.sh

echo "== setting up .venv with $("$PYTHON" --version)"
setup_venv "$PYTHON" .venv "[test,numpy]"

if ! command -v go >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing golang-go (for go tool pprof)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go) \
            >/dev/null || echo "!! could not install golang-go: pprof reader tests will skip"
    else
        echo "!! go is missing and cannot be installed here: pprof reader tests will skip"
    fi
fi

status=0
echo "== full suite on $(.venv/bin/python --version)"
.venv/bin/python -m pytest -q || status=$?

main_version=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')
for version in 3.10 3.11 3.12 3.13; do
    [ "$version" = "$main_version" ] && continue
    py=""
    if command -v pyenv >/dev/null 2>&1; then
        prefix=$(pyenv prefix "$(pyenv versions --bare | grep -E "^${version}\.[0-9]+$" | tail -n 1)" \
                 2>/dev/null || true)
        [ -n "$prefix" ] && [ -x "$prefix/bin/python$version" ] && py="$prefix/bin/python$version"
    fi
    [ -z "$py" ] && command -v "python$version" >/dev/null 2>&1 && py=$(command -v "python$version")
    if [ -z "$py" ]; then
        echo "!! Python $version not found: its core tests are not run"
        continue
    fi
    echo "== core tests on $("$py" --version)"
    setup_venv "$py" ".venv-$version" "" pytest pytest-timeout numpy
    existing=()
    for f in "${CORE_TESTS[@]}"; do [ -e "$f" ] && existing+=("$f"); done
    ".venv-$version/bin/python" -m pytest -q -p no:cacheprovider "${existing[@]}" || status=$?
done
exit $status
