# Shared by scripts/demo.sh and scripts/test.sh (sourced, not run).
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1

pip_quiet() {  # pip_quiet PYTHON ARGS...: pip's chatter goes to a log, shown only on failure
    local py=$1 log
    shift
    log=$(mktemp)
    if ! "$py" -m pip install -q "$@" >"$log" 2>&1; then
        cat "$log"
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

setup_venv() {  # setup_venv PYTHON DIR EXTRAS [PACKAGES...]: the package installed editable
    local py=$1 dir=$2 extras=$3 started=$SECONDS
    shift 3
    if [ ! -x "$dir/bin/python" ]; then
        echo "   creating $dir ($("$py" --version))"
        "$py" -m venv "$dir"
    fi
    echo "   updating pip, setuptools and wheel in $dir"
    pip_quiet "$dir/bin/python" --upgrade pip setuptools wheel
    echo "   compiling the C sampler and installing mprofile-ipy$extras into $dir" \
         "(dependencies from pip's cache; about a minute the first time)"
    pip_quiet "$dir/bin/python" -e ".$extras"    # compiles the C sampler for this Python
    if [ $# -gt 0 ]; then
        echo "   installing $* into $dir"
        pip_quiet "$dir/bin/python" "$@"
    fi
    echo "   $dir ready ($((SECONDS - started)) s)"
}
