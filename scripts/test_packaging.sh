#!/usr/bin/env bash
# The path a user installing from a source release takes, checked end to end (a stage of
# scripts/test.sh; also runs alone):
#
#   bash scripts/test_packaging.sh [PYTHON]      # PYTHON: one with `build` (default .venv)
#
# 1. `python -m build --sdist`: the source release.
# 2. `pip wheel --no-deps` FROM THAT SDIST (not from the work tree): compiles the C sampler
#    from what the sdist carries, so a file missing from it fails here.
# 3. The wheel must hold every file of the sdist's mprofile_ipy/ folder plus the compiled
#    module.
# 4. A fresh venv outside the repository with the plain install (the wheel and its
#    dependencies, from pip's cache): scripts/smoke_installed.py full.
# 5. A fresh venv with only cffi and the wheel (--no-deps), the lean install for a service:
#    scripts/smoke_installed.py lean.
# Everything happens in a temporary folder that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${1:-.venv/bin/python}
[[ "$PYTHON" == */* && "$PYTHON" != /* ]] && PYTHON=$ROOT/$PYTHON
source scripts/common.sh

work=$(mktemp -d "${TMPDIR:-/tmp}/mprofile-packaging-XXXXXX")
trap 'rm -rf "$work"' EXIT
base=$("$PYTHON" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')

run_logged() {  # run_logged WHAT COMMAND...: the command's output only when it fails
    local what=$1
    shift
    if ! "$@" >"$work/log" 2>&1; then
        cat "$work/log"
        echo "!! packaging: $what failed"
        exit 1
    fi
}

# The sdist is built from a clean copy of the work tree (tracked and new files, nothing git
# ignores): a stale *.egg-info/SOURCES.txt would otherwise add files MANIFEST.in forgot.
echo "   building the sdist (from a clean copy of the work tree)"
mkdir -p "$work/tree"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$ROOT" ls-files -z -c -o --exclude-standard \
        | tar -C "$ROOT" --null -T - --ignore-failed-read -cf - 2>/dev/null \
        | tar -C "$work/tree" -xf -
else
    tar -C "$ROOT" --exclude='.venv*' --exclude='*.egg-info' --exclude=__pycache__ \
        --exclude='*.so' --exclude=build --exclude=dist -cf - . | tar -C "$work/tree" -xf -
fi
run_logged "python -m build --sdist" "$PYTHON" -m build --sdist -o "$work/dist" "$work/tree"
sdist=$(ls "$work"/dist/*.tar.gz)
echo "   -> $(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB)"

echo "   building a wheel from the sdist (compiles the C sampler from the sdist's sources)"
(cd "$work" && run_logged "pip wheel from the sdist" \
    "$PYTHON" -m pip wheel -q --no-deps -w "$work/wheel" "$sdist")
wheel=$(ls "$work"/wheel/*.whl)
echo "   -> $(basename "$wheel")"

echo "   checking that the wheel holds the whole package"
"$PYTHON" - "$sdist" "$wheel" <<'PY'
import sys, tarfile, zipfile
sdist, wheel = sys.argv[1:]
with tarfile.open(sdist) as tar:
    in_sdist = {name.split("/", 1)[1] for name in tar.getnames()
                if name.count("/") >= 2 and name.split("/", 2)[1] == "mprofile_ipy"
                and tar.getmember(name).isfile()}
in_wheel = set(zipfile.ZipFile(wheel).namelist())
missing = sorted(in_sdist - in_wheel)
if missing:
    sys.exit(f"!! the wheel lacks {missing}")
if not any(n.startswith("mprofile_ipy/_native.") and n.endswith((".so", ".pyd")) for n in in_wheel):
    sys.exit("!! the wheel has no compiled mprofile_ipy/_native module")
print(f"   -> {len(in_sdist)} package files and the compiled sampler")
PY

cp scripts/smoke_installed.py "$work/smoke_installed.py"
cd "$work"     # outside the repository from here on: nothing can import the work tree

echo "   plain install: fresh venv, the wheel and its dependencies"
"$base" -m venv "$work/full"
run_logged "pip install of the wheel" "$work/full/bin/python" -m pip install -q "$wheel"
"$work/full/bin/python" "$work/smoke_installed.py" full | sed 's/^/   | /'

echo "   lean install: fresh venv, cffi and the wheel with --no-deps"
"$base" -m venv "$work/lean"
run_logged "pip install cffi" "$work/lean/bin/python" -m pip install -q cffi
run_logged "pip install --no-deps of the wheel" \
    "$work/lean/bin/python" -m pip install -q --no-deps "$wheel"
"$work/lean/bin/python" "$work/smoke_installed.py" lean | sed 's/^/   | /'
echo "   packaging checks passed"
