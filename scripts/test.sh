#!/usr/bin/env bash
# Set up everything the tests need, from a fresh clone, and run them.
#
#   bash scripts/test.sh
#
# 1. System tools, installed when missing and the machine allows it (root + apt):
#    Debian's golang-go (`go tool pprof`, for the pprof reader tests), chromium (for the
#    browser tests of the HTML report) and valgrind (the callgrind harness's smoke test).
#    Without them those tests skip and say why.
# 2. A venv (.venv) on the default python3 with the package installed editable (this
#    compiles the C sampler with cffi) and its test extras; the whole suite runs there.
# 3. Packaging: the sdist is built, a wheel is built FROM THAT SDIST, and the wheel is
#    installed into two fresh venvs outside the repository: the plain install (with its
#    dependencies) and the lean one (cffi + the wheel, --no-deps). scripts/smoke_installed.py
#    runs in each (API; in the plain one also %load_ext and a %%mprofile cell in a real
#    InteractiveShell, and a pprof round trip).
# 4. The browser stage (scripts/browser_tests.sh: the HTML report in headless Chromium, in
#    JupyterLab with a save and reload, and in nbconvert's HTML; screenshots kept in
#    test-artifacts/browser/), both loaders fuzzed for FUZZ_SECONDS (fuzz/run.sh), and the
#    stress script (benchmarks/stress.py: start/stop while threads allocate without the
#    GIL, Ctrl-C storms, tracemalloc round trips) for STRESS_SECONDS per scenario.
# 5. The core tests and the stress script again on every other CPython 3.10-3.13 found (pyenv or
#    PATH), each in its own venv (.venv-3.X): CPython's frame internals differ per version.
# Every stage runs even if an earlier one failed; the exit status is non-zero if any did.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
CORE_TESTS=(tests/test_sampler.py tests/test_vs_tracemalloc.py tests/test_robustness.py
            tests/test_model.py tests/test_estimate.py tests/test_units.py tests/test_storage.py
            tests/test_numpy_capture.py tests/test_native_mode.py tests/test_stress_hooks.py
            tests/test_stress_fork.py tests/test_retainers.py tests/test_children.py
            tests/test_compat_api.py tests/test_cpython_tracemalloc_suite.py
            tests/test_sampler_labels.py tests/test_sampler_restart.py)
STRESS_SECONDS=${STRESS_SECONDS:-15}   # per scenario and CPython (benchmarks/stress.py)
FUZZ_SECONDS=${FUZZ_SECONDS:-45}
FUZZ_SEED=${FUZZ_SEED:-1}          # a fixed seed: CI replays a prefix of a sequence run longer here
source scripts/common.sh
status=0
stage_started=$SECONDS

banner() {  # banner TEXT: a stage's header, with the time the previous stage took
    echo
    echo "=================================================================================="
    echo "== $* (after $((SECONDS - stage_started)) s)"
    echo "=================================================================================="
}

apt_install() {  # apt_install COMMAND PACKAGE WHY: install a Debian package when missing
    local command=$1 package=$2 why=$3
    command -v "$command" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "   installing Debian's $package ($why)"
        if [ -z "${APT_UPDATED:-}" ]; then
            apt-get update -qq >/dev/null 2>&1 || true
            APT_UPDATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null 2>&1 \
            || echo "!! could not install $package: $why will skip"
    else
        echo "!! $command is missing and cannot be installed here: $why will skip"
    fi
}

banner "system tools"
apt_install go golang-go "the pprof reader tests (go tool pprof)"
apt_install chromium chromium "the browser tests of the HTML report"
apt_install valgrind valgrind "the smoke test of benchmarks/callgrind.py"

banner "setting up .venv with $("$PYTHON" --version)"
setup_venv "$PYTHON" .venv "[test,numpy]"

banner "full suite on $(.venv/bin/python --version)"
.venv/bin/python -m pytest -q || status=$?

banner "packaging: sdist -> wheel from the sdist -> fresh venvs outside the repository"
bash scripts/test_packaging.sh .venv/bin/python || status=$?

banner "browser: the HTML report in headless Chromium, JupyterLab (save, reload) and nbconvert"
VENV=.venv bash scripts/browser_tests.sh || status=$?

banner "fuzzing both loaders for ${FUZZ_SECONDS} s (fuzz/run.sh)"
PYTHON=.venv/bin/python sh fuzz/run.sh "$FUZZ_SECONDS" "$FUZZ_SEED" || status=$?

banner "stress on $(.venv/bin/python --version): no-GIL start/stop, Ctrl-C, tracemalloc round trips"
.venv/bin/python benchmarks/stress.py --seconds "$STRESS_SECONDS" || status=$?

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
    banner "core tests on $("$py" --version)"
    # With a kernel client: `%mprofile why` in a real kernel of each CPython (on 3.12.1 the
    # heap walk once made the next gc.collect() loop forever, CPython gh-122695).
    setup_venv "$py" ".venv-$version" "" pytest pytest-timeout numpy ipython objgraph \
        nbclient nbformat ipykernel
    existing=()
    for f in "${CORE_TESTS[@]}"; do [ -e "$f" ] && existing+=("$f"); done
    ".venv-$version/bin/python" -m pytest -q -p no:cacheprovider "${existing[@]}" || status=$?
    banner "stress on $("$py" --version)"
    ".venv-$version/bin/python" benchmarks/stress.py --seconds "$STRESS_SECONDS" || status=$?
done
banner "done: exit status $status"
exit $status
