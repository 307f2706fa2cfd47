#!/usr/bin/env bash
# Run the whole pytest suite on every supported CPython this machine has, one after the other, once
# per implementation of zcnet's per-operation work (docs/ARCHITECTURE.md, 'Compiled fast path'):
#
# * "c": the compiled extension zcnet._speedups, built by `pip install -e .[dev]`;
# * "python": the pure-Python implementation. On the default interpreter it runs from a separate,
#   non-editable install made with no working compiler (CC=false, in .venv-nocc), so a machine
#   without one is tested as its users would have it; on the others, ZCNET_NO_EXTENSIONS=1.
#
# ZCNET_EXPECT_IMPLEMENTATION tells the test session which one it must find (tests/conftest.py),
# so a build that silently failed cannot test the Python path twice.
#
# Supported versions are the "Programming Language :: Python :: 3.X" classifiers of pyproject.toml
# (one place); CPython 3.Y newer than those is tested too when the machine has it. An interpreter
# is found as `python3.X` on PATH, else as the newest pyenv-installed CPython 3.X.Z. The default
# interpreter ($DEFAULT_PY, the one `make` builds .venv with) must be there: its absence fails the
# run. Other supported versions that are missing are reported as skipped, with the reason.
#
# Each interpreter gets its own virtualenv (.venv for the default, .venv-3.X for the others) with
# `pip install -e .[dev]`. Set ZCNET_TEST_PYTHONS="3.12 3.13" to test only those versions, and
# ZCNET_TEST_IMPLEMENTATIONS="c" (or "python") to test only one implementation.
#
# The Sender and ZcStream tests (tests/test_sender*.py, tests/aio/test_stream.py and the other
# ZcStream suites) then run once more on the io_uring send engine
# (ZCNET_SEND_ENGINE=io_uring: the default SendPolicy.engine; docs/ARCHITECTURE.md, 'Transmit:
# the io_uring engine'), on the default interpreter with the compiled extension, which holds the
# ring; where io_uring cannot be used the run is reported as skipped with the reason.
# ZCNET_TEST_ENGINES="msg_zerocopy" leaves it out. Extra arguments go to pytest (not to that run).
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

implementations=${ZCNET_TEST_IMPLEMENTATIONS:-c python}

declare -a summary
failed=0

# make_venv VENV PY [env assignments...]: create VENV if needed and install zcnet[dev] into it
# (editable unless NONEDITABLE=1); the env assignments apply to pip (CC=false).
make_venv() {
    local venv=$1 py=$2; shift 2
    if [[ ! -x "$venv/bin/python" ]]; then
        "$py" -m venv "$venv" && "$venv/bin/python" -m pip install -q --upgrade pip || return 1
    fi
    if [[ "${NONEDITABLE:-0}" == 1 ]]; then
        rm -rf build  # an earlier build's compiled extension would be reused, compiler or not
        env "$@" "$venv/bin/python" -m pip install -q --force-reinstall --no-deps . \
            && env "$@" "$venv/bin/python" -m pip install -q '.[dev]'
    else
        env "$@" "$venv/bin/python" -m pip install -q -e '.[dev]'
    fi
}

# run_suite V FULL IMPL VENV SETUP [env assignments...]: pytest in VENV, one summary line
# (labelled $SUITE_LABEL if set, else IMPL).
run_suite() {
    local v=$1 full=$2 impl=$3 venv=$4 setup=$5; shift 5
    echo "=== CPython $full, implementation ${SUITE_LABEL:-$impl}, in $venv ==="
    local start=$SECONDS
    env ZCNET_EXPECT_IMPLEMENTATION="$impl" "$@" "$venv/bin/python" -m pytest "${pytest_args[@]}"
    local rc=$? took=$((SECONDS - start))
    local result
    result=$([[ $rc -eq 0 ]] && echo passed || echo "FAILED (pytest exit $rc)")
    [[ $rc -eq 0 ]] || failed=1
    summary+=("$(printf '%-6s %-8s %-7s %s: suite %dm%02ds (set-up %ds)' "$v" "$full" \
              "${SUITE_LABEL:-$impl}" \
              "$result" $((took / 60)) $((took % 60)) "$setup")")
}

pytest_args=("$@")
for v in $versions; do
    if [[ "$v" == "$default_minor" ]]; then
        py=$default_path venv=.venv
    else
        py=$(find_python "$v") venv=.venv-$v
    fi
    if [[ -z "$py" ]]; then
        summary+=("$(printf '%-6s %-8s %-7s skipped: no python%s on PATH and no pyenv CPython %s.x' \
                  "$v" "" "" "$v" "$v")")
        continue
    fi
    full=$(full_of "$py")
    for impl in $implementations; do
        start=$SECONDS
        if [[ "$impl" == c ]]; then
            make_venv "$venv" "$py" || {
                summary+=("$(printf '%-6s %-8s %-7s FAILED: pip install -e .[dev] in %s' \
                          "$v" "$full" c "$venv")"); failed=1; continue; }
            run_suite "$v" "$full" c "$venv" $((SECONDS - start))
        elif [[ "$v" == "$default_minor" ]]; then
            # as a machine without a C compiler installs it: the build of the extension fails
            # (optional, so pip goes on) and the package runs on its Python implementation
            NONEDITABLE=1 make_venv .venv-nocc "$py" CC=false || {
                summary+=("$(printf '%-6s %-8s %-7s FAILED: CC=false pip install .[dev] in %s' \
                          "$v" "$full" python .venv-nocc)"); failed=1; continue; }
            run_suite "$v" "$full" python .venv-nocc $((SECONDS - start))
        else
            make_venv "$venv" "$py" || {
                summary+=("$(printf '%-6s %-8s %-7s FAILED: pip install -e .[dev] in %s' \
                          "$v" "$full" python "$venv")"); failed=1; continue; }
            run_suite "$v" "$full" python "$venv" $((SECONDS - start)) ZCNET_NO_EXTENSIONS=1
        fi
    done
done

# The Sender and ZcStream suites on the io_uring engine (see the top of this file).
engines=${ZCNET_TEST_ENGINES:-msg_zerocopy io_uring}
if [[ " $engines " == *" io_uring "* && " $implementations " == *" c "* \
      && " $versions " == *" $default_minor "* && -x .venv/bin/python ]]; then
    full=$(full_of "$default_path")
    why=$(.venv/bin/python -c 'from zcnet.lowlevel.uring import unavailable_reason as u
print(u() or "")' 2>&1)
    if [[ -n "$why" ]]; then
        summary+=("$(printf '%-6s %-8s %-7s skipped: the io_uring engine is unavailable: %s' \
                  "$default_minor" "$full" io_uring "$why")")
    else
        pytest_args=(tests/test_sender.py tests/test_sender_batch.py tests/test_sender_errors.py
                     tests/test_sender_netns.py tests/test_sender_safety.py
                     tests/aio/test_stream.py tests/aio/test_write_eof.py
                     tests/aio/test_server_shutdown.py tests/aio/test_ticket.py)
        SUITE_LABEL=c+uring run_suite "$default_minor" "$full" c .venv 0 \
            ZCNET_SEND_ENGINE=io_uring
    fi
fi

echo
echo "=== test suite per interpreter and implementation ==="
printf '%s\n' "${summary[@]}"
exit $failed
