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
    local py=$1 dir=$2 extras=$3
    shift 3
    [ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
    pip_quiet "$dir/bin/python" --upgrade pip setuptools wheel
    pip_quiet "$dir/bin/python" -e ".$extras"    # compiles the C sampler for this Python
    if [ $# -gt 0 ]; then pip_quiet "$dir/bin/python" "$@"; fi
}
