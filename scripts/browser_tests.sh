#!/usr/bin/env bash
# The browser stage: the HTML report in headless Chromium, in a plain page, in a real
# JupyterLab 4 (run, save, reload) and in nbconvert's HTML (offline).
#
#   bash scripts/browser_tests.sh            # uses .venv (made by scripts/test.sh)
#
# Chromium is Debian's package (Playwright's own browser download is not reachable from
# CI); it is installed when missing and the machine allows it (root + apt). Playwright's
# Python package, JupyterLab and nbconvert come from the test extras, or are installed
# here into the venv when missing. Screenshots land in test-artifacts/browser/ (kept by CI).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    echo "== setting up $VENV with $("$PYTHON" --version)"
    setup_venv "$PYTHON" "$VENV" "[test]"
fi
if ! "$VENV/bin/python" -c "import playwright, jupyterlab, nbconvert" 2>/dev/null; then
    echo "== installing playwright, jupyterlab, nbconvert into $VENV"
    pip_quiet "$VENV/bin/python" playwright jupyterlab nbconvert
fi

if [ ! -x /usr/bin/chromium ] && [ ! -x /usr/lib/chromium/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing chromium (Debian)"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
            >/dev/null || echo "!! could not install chromium: the browser tests will skip"
    else
        echo "!! chromium is missing and cannot be installed here: the browser tests will skip"
    fi
fi

rm -rf test-artifacts/browser
mkdir -p test-artifacts/browser
echo "== browser tests (screenshots in test-artifacts/browser/)"
start=$(date +%s)
MPROFILE_BROWSER_TESTS=1 "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider \
    --timeout=300 tests/browser "$@"
echo "== browser stage took $(( $(date +%s) - start )) s"
