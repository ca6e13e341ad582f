# Sourced by the set-up scripts: create (or reuse) the project's virtual
# environment in .venv and install the project into it.
# Usage: source scripts/env.sh [extras], e.g. `source scripts/env.sh dev`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GANGEALING_VENV:-$ROOT/.venv}"
PYTHON_BIN="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
fi
SPEC="$ROOT"
if [ -n "${1:-}" ]; then SPEC="$ROOT[$1]"; fi
# Reinstall only when setup.py changed since the last install into this venv.
STAMP="$VENV/.gangealing-installed-${1:-runtime}"
if [ ! -f "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ]; then
    echo "[setup] installing the project into $VENV (first time: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$SPEC"
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
