#!/usr/bin/env bash
# Create (or reuse) the repository's virtual environment .venv and install latentscm into it,
# editable, with the test extras. Safe to run again: a second run only checks and exits.
#
# Python >= 3.12 is looked up in this order:
#   1. $PYTHON, if set (it must be >= 3.12; no fallback when it is not)
#   2. python3.14, python3.13, python3.12, python3 on PATH
#   3. pyenv's installs: $(pyenv root)/versions/3.1[234].*/bin/python3
#      (or $PYENV_ROOT / $HOME/.pyenv when pyenv is not on PATH)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STAMP="$VENV/.latentscm-setup-stamp"
MIN_VERSION="3.12"

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Does "$1" run and report a version >= MIN_VERSION? (pyenv shims of missing versions fail here.)
python_ok() {
    "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1
}

python_version() {
    "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo "unknown"
}

check_requested_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "PYTHON=$PYTHON is not an executable; set PYTHON to a Python >= $MIN_VERSION or unset it"
    "$PYTHON" -c '' >/dev/null 2>&1 || die "PYTHON=$PYTHON does not run (try '$PYTHON --version'); set PYTHON to a working Python >= $MIN_VERSION or unset it"
    python_ok "$PYTHON" || die "PYTHON=$PYTHON is Python $(python_version "$PYTHON"); latentscm needs >= $MIN_VERSION. Set PYTHON to a newer interpreter or unset it"
}

find_python() {
    if [[ -n "${PYTHON:-}" ]]; then
        check_requested_python
        echo "$PYTHON"
        return
    fi
    local candidate
    for candidate in python3.14 python3.13 python3.12 python3; do
        if command -v "$candidate" >/dev/null 2>&1 && python_ok "$candidate"; then
            command -v "$candidate"
            return
        fi
    done
    local root=""
    if command -v pyenv >/dev/null 2>&1; then
        root="$(pyenv root 2>/dev/null || true)"
    fi
    [[ -n "$root" ]] || root="${PYENV_ROOT:-$HOME/.pyenv}"
    if [[ -d "$root/versions" ]]; then
        # newest first
        while IFS= read -r candidate; do
            if [[ -x "$candidate" ]] && python_ok "$candidate"; then
                echo "$candidate"
                return
            fi
        done < <(ls -d "$root"/versions/3.1[234].*/bin/python3 2>/dev/null | sort -r -V)
    fi
    die "no Python >= $MIN_VERSION found (tried \$PYTHON, python3.14/3.13/3.12/python3 on PATH, pyenv versions under ${root}). Install Python $MIN_VERSION or newer (e.g. 'pyenv install 3.12', or your system's python3.12 package with its venv module) or set PYTHON=/path/to/python3.12"
}

cd "$REPO"
[[ -z "${PYTHON:-}" ]] || check_requested_python

if [[ -x "$VENV/bin/python" ]] && python_ok "$VENV/bin/python"; then
    :
else
    PY="$(find_python)"
    if [[ -e "$VENV" ]]; then
        say "recreating $VENV with $PY (Python $(python_version "$PY")); the old one is unusable"
        "$PY" -m venv --clear "$VENV" || die "'$PY -m venv' failed; install the venv module for that Python (e.g. python3.12-venv)"
    else
        say "creating $VENV with $PY (Python $(python_version "$PY"))"
        "$PY" -m venv "$VENV" || die "'$PY -m venv' failed; install the venv module for that Python (e.g. python3.12-venv)"
    fi
    rm -f "$STAMP"
fi

VPY="$VENV/bin/python"
# Dependencies at the versions the results were measured with (constraints.txt); CONSTRAINTS= (empty) for the
# newest that pyproject.toml allows, CONSTRAINTS=/path/file for others.
CONSTRAINTS="${CONSTRAINTS-$REPO/constraints.txt}"
[[ -z "$CONSTRAINTS" || -f "$CONSTRAINTS" ]] || die "CONSTRAINTS=$CONSTRAINTS is not a file; point it at a pip constraints file, or set it empty to install unpinned"
# The stamp records pyproject.toml, the constraints and the interpreter; pip runs only when one changed or the
# package is not installed.
want="$("$VPY" -c 'import hashlib, sys; h = hashlib.sha256(open("pyproject.toml", "rb").read()); h.update(open(sys.argv[1], "rb").read() if sys.argv[1] else b"unpinned"); h.update(sys.version.encode()); print(h.hexdigest())' "$CONSTRAINTS")"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" == "$have" ]] && "$VPY" -c 'import importlib.metadata as m; m.version("latentscm")' >/dev/null 2>&1; then
    exit 0
fi

say "installing latentscm (editable, with test extras) into $VENV${CONSTRAINTS:+ at the versions of $CONSTRAINTS}"
LOG="$VENV/pip-install.log"
install() { "$VPY" -m pip install --quiet --disable-pip-version-check "$@" -e '.[test]' >>"$LOG" 2>&1; }
: >"$LOG"
if [[ -n "$CONSTRAINTS" ]] && ! install -c "$CONSTRAINTS"; then
    tail -n 5 "$LOG" >&2
    say "warning: the pinned versions do not install for Python $(python_version "$VPY") (above); installing the newest that pyproject.toml allows, whose results may differ from the README's"
    CONSTRAINTS=""
fi
if [[ -z "$CONSTRAINTS" ]] && ! install; then
    tail -n 40 "$LOG" >&2
    die "pip install failed (last lines above, full log in $LOG); fix the error and run scripts/setup.sh again"
fi
printf '%s\n' "$want" > "$STAMP"
say "done: $VPY"
