#!/usr/bin/env bash
# The whole test suite: set up .venv (with the dev extras), then run pytest.
# pytest exits non-zero when a test fails and when nothing was collected.
source "$(dirname "$0")/env.sh" dev
exec python -m pytest tests -q "$@"
