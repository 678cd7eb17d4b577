#!/usr/bin/env bash
# Run the test suite; assumes the set-up is done (bash .ci/setup.sh, or a
# previous .ci/run on this machine). Quick re-runs for developers:
#   bash .ci/test.sh                      # ruff check, then python -m pytest -q -rs tests
#   bash .ci/test.sh -m docker -x         # any pytest arguments (default: tests)
#   bash .ci/test.sh tests/test_ssh.py -k tunnel
# Exit code: pytest's, except "no tests collected" (5), which is a failure (1).
# Env: PYTHON (default python3), PYDIST_TEST_TIMEOUT (whole run, default 3600 s).
set -uo pipefail
. "$(dirname "$0")/lib.sh"
cd "$REPO"
mkdir -p "$LOGS"
# testcontainers' reaper (Ryuk) needs an image pull, which cannot work here;
# the tests and .ci/teardown.sh remove their containers themselves.
export TESTCONTAINERS_RYUK_DISABLED=true PYTHONUNBUFFERED=1
lint=0
if [ $# -eq 0 ]; then     # the whole run lints first (settings: [tool.ruff] in pyproject.toml)
  echo "--- ruff check (pyproject.toml [tool.ruff])"
  "$PY" -m ruff check --no-cache "$REPO" || { lint=1; echo "ruff found the problems above: fix them (ruff check --fix does the mechanical ones)" >&2; }
  set -- tests
fi
timeout --kill-after=60 "${PYDIST_TEST_TIMEOUT:-3600}" "$PY" -m pytest -q -rs "$@" 2>&1 | tee "$LOGS/pytest.log"
rc=${PIPESTATUS[0]}
[ "$rc" -ne 0 ] || rc=$lint
case $rc in
  5) echo "pytest collected no tests: counted as a failure" >&2; exit 1 ;;
  124|137) echo "pytest was stopped after ${PYDIST_TEST_TIMEOUT:-3600} s (PYDIST_TEST_TIMEOUT)" >&2 ;;
esac
exit "$rc"
