#!/usr/bin/env bash
# Run the whole pytest suite on every supported CPython this machine has, one after the other.
#
# Supported versions are the "Programming Language :: Python :: 3.X" classifiers of pyproject.toml
# (one place); CPython 3.Y newer than those is tested too when the machine has it. An interpreter
# is found as `python3.X` on PATH, else as the newest pyenv-installed CPython 3.X.Z. The default
# interpreter ($DEFAULT_PY, the one `make` builds .venv with) must be there: its absence fails the
# run. Other supported versions that are missing are reported as skipped, with the reason.
#
# Each interpreter gets its own virtualenv (.venv for the default, .venv-3.X for the others) with
# `pip install -e .[dev]`. Set ZCNET_TEST_PYTHONS="3.12 3.13" to test only those versions.
# Extra arguments go to pytest.
set -uo pipefail
cd "$(dirname "$0")/.."

DEFAULT_PY=${DEFAULT_PY:-python3}
PYENV_DIR=${PYENV_ROOT:-$HOME/.pyenv}/versions

# "3.X" of an interpreter, or nothing if it does not run.
minor_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
full_of() { "$1" -c 'import platform; print(platform.python_version())' 2>/dev/null; }

# Path of an interpreter for version $1 ("3.X"), or nothing.
find_python() {
    local want=$1 cand
    if cand=$(command -v "python$want") && [[ "$(minor_of "$cand")" == "$want" ]]; then
        echo "$cand"; return
    fi
    if [[ -d "$PYENV_DIR" ]]; then
        # CPython only (3.X.Z exactly: no free-threaded "t", no -dev, no pypy), newest patch first.
        cand=$(ls "$PYENV_DIR" | grep -E "^${want//./\\.}\.[0-9]+$" | sort -t. -k3,3n | tail -n1)
        if [[ -n "$cand" && -x "$PYENV_DIR/$cand/bin/python$want" ]]; then
            echo "$PYENV_DIR/$cand/bin/python$want"; return
        fi
    fi
}

default_path=$(command -v "$DEFAULT_PY") || default_path=""
default_minor=$([[ -n "$default_path" ]] && minor_of "$default_path")
if [[ -z "$default_minor" ]]; then
    echo "test-every-python: the default interpreter '$DEFAULT_PY' is missing or does not run" >&2
    exit 1
fi

supported=$("$default_path" scripts/supported_pythons.py)
if [[ " $supported " != *" $default_minor "* ]]; then
    echo "test-every-python: the default interpreter is $default_minor, not a supported version" \
         "($supported)" >&2
    exit 1
fi

if [[ -n "${ZCNET_TEST_PYTHONS:-}" ]]; then
    versions=$ZCNET_TEST_PYTHONS
else
    # supported versions, then any newer CPython 3.Y the machine has
    newest=${supported##* }
    versions=$supported
    for ((y = ${newest#3.} + 1; y <= ${newest#3.} + 10; y++)); do
        [[ -n "$(find_python "3.$y")" ]] && versions+=" 3.$y"
    done
fi

declare -a summary
failed=0
for v in $versions; do
    if [[ "$v" == "$default_minor" ]]; then
        py=$default_path venv=.venv
    else
        py=$(find_python "$v") venv=.venv-$v
    fi
    if [[ -z "$py" ]]; then
        summary+=("$(printf '%-6s %-8s skipped: no python%s on PATH and no pyenv CPython %s.x' \
                  "$v" "" "$v" "$v")")
        continue
    fi
    echo "=== CPython $(full_of "$py") ($py) in $venv ==="
    start=$SECONDS
    if [[ ! -x "$venv/bin/python" ]]; then
        "$py" -m venv "$venv" && "$venv/bin/python" -m pip install -q --upgrade pip || {
            summary+=("$(printf '%-6s %-8s FAILED: could not create %s' "$v" "" "$venv")")
            failed=1; continue; }
    fi
    if ! "$venv/bin/python" -m pip install -q -e '.[dev]'; then
        summary+=("$(printf '%-6s %-8s FAILED: pip install -e .[dev] in %s' "$v" "" "$venv")")
        failed=1; continue
    fi
    setup=$((SECONDS - start))
    start=$SECONDS
    "$venv/bin/python" -m pytest "$@"
    rc=$?
    took=$((SECONDS - start))
    result=$([[ $rc -eq 0 ]] && echo passed || echo "FAILED (pytest exit $rc)")
    [[ $rc -eq 0 ]] || failed=1
    summary+=("$(printf '%-6s %-8s %s: suite %dm%02ds (set-up %ds)' "$v" "$(full_of "$py")" \
              "$result" $((took / 60)) $((took % 60)) "$setup")")
done

echo
echo "=== test suite per interpreter ==="
printf '%s\n' "${summary[@]}"
exit $failed
