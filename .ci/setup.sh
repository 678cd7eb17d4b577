#!/usr/bin/env bash
# Bring up everything the tests need, on a fresh machine or again (idempotent),
# and leave it running:
#   packages   Debian packages, only those missing (bash .ci/packages.sh)
#   docker     start dockerd if the engine does not answer
#   python     pip install -e '.[test]' into $PYTHON (default python3)
#   sshd       loopback sshd 127.0.0.1:2222 + the test keys (bash .ci/sshd.sh start)
#   slurm      munge + slurmctld + slurmd, partition debug (bash .ci/slurm.sh start)
#   sge        Grid Engine qmaster + execd, queue all.q, PE pydist (bash .ci/sge.sh start)
#   images     pydist-base:bookworm, pydist-worker:latest, pydist-sshhost:test
#   slurm-mn   Slurm in 3 containers: slurmctld + nodes mn-node1, mn-node2, image
#              pydist-slurmnode:test (bash .ci/slurm-multinode.sh start)
#   smoke      one check per backend (bash .ci/smoke.sh)
# Usage: bash .ci/setup.sh [--no-smoke]      then: bash .ci/test.sh [pytest args]
# Stop it all with: bash .ci/teardown.sh
# Root only. Each phase prints its time; they are also kept in .ci/work/timings.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SMOKE=1
for a in "$@"; do case "$a" in --no-smoke) SMOKE=0 ;; *) die "unknown argument $a" ;; esac; done
[ "$(id -u)" = 0 ] || die ".ci/setup.sh needs root (apt, sshd, slurm)"
mkdir -p "$LOGS"
: > "$WORK/timings"
CURRENT=""
trap '[ -n "$CURRENT" ] && log "SETUP FAILED in phase: $CURRENT"' EXIT

phase() {   # phase NAME COMMAND...: run, time, record
  CURRENT=$1; shift
  local t0; t0=$(now_ms)
  echo "--- [$CURRENT] $*"
  "$@"
  local dt; dt=$(secs_since "$t0")
  echo "--- [$CURRENT] done in $dt s"
  printf '%-10s %6s s\n' "$CURRENT" "$dt" >> "$WORK/timings"
  CURRENT=""
}

# Is pydist installed (editable) from this checkout, with the test deps, and
# pyproject.toml unchanged since? Then pip install is skipped (it takes 20-90 s).
installed_here() {
  (cd / && "$PY" - "$REPO" <<'PYCHECK'
import os, sys
import pydist, pydist.managers, pytest, pytest_timeout, docker, paramiko, testcontainers, kubernetes, numpy, hypothesis, tornado, selenium
here = os.path.realpath(os.path.join(sys.argv[1], "pydist"))
sys.exit(0 if any(os.path.realpath(p) == here for p in pydist.__path__) else 1)
PYCHECK
  ) >/dev/null 2>&1
}

pip_install() {
  local stamp; stamp="$("$PY" -c 'import sys; print(sys.executable)') $(sha256sum "$REPO/pyproject.toml" | cut -c1-16)"
  if [ "${PYDIST_PIP_FORCE:-0}" != 1 ] && [ "$(cat "$WORK/pip.stamp" 2>/dev/null)" = "$stamp" ] && installed_here; then
    echo "pydist[test] already installed from $REPO (PYDIST_PIP_FORCE=1 to reinstall)"; return 0
  fi
  rm -f "$WORK/pip.stamp"
  export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
  timeout 1200 "$PY" -m pip install -q -e "$REPO[test]" >"$LOGS/pip.log" 2>&1 \
    || { tail -30 "$LOGS/pip.log" >&2; die "pip install -e '.[test]' failed (log $LOGS/pip.log)"; }
  # pyenv: make shims for new console scripts (pydist, pytest, ...)
  if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
  installed_here || die "after pip install -e, $PY does not import pydist from $REPO with the test deps"
  echo "$stamp" > "$WORK/pip.stamp"
  echo "pydist[test] installed (editable) from $REPO into $("$PY" -c 'import sys; print(sys.prefix)')"
}

# Another Python 3 minor version with pydist's two dependencies, so the version-skew test
# (tests/test_reliability.py) can start a worker the handshake must refuse. Best effort:
# the test skips (and says why) where no second interpreter exists.
other_python() {
  local mine exe; mine=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  for exe in /root/.pyenv/versions/3.*/bin/python; do
    [ -x "$exe" ] || continue
    case "$("$exe" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" in
      "$mine"|"") continue ;;
    esac
    "$exe" -c 'import cloudpickle, tqdm' 2>/dev/null && { echo "$exe already has cloudpickle, tqdm"; return 0; }
    if PIP_ROOT_USER_ACTION=ignore timeout 300 "$exe" -m pip install -q cloudpickle tqdm >"$LOGS/pip-other.log" 2>&1; then
      echo "$exe: cloudpickle, tqdm installed"; return 0
    fi
  done
  echo "no second Python 3 minor version: the version-skew test will skip"
}

phase packages bash "$CI_DIR/packages.sh"
phase docker   ensure_dockerd
phase python   pip_install
phase python2  other_python
phase sshd     bash "$CI_DIR/sshd.sh" start
phase slurm    bash "$CI_DIR/slurm.sh" start
phase sge      bash "$CI_DIR/sge.sh" start
phase images   bash "$CI_DIR/images.sh"
phase slurm-mn bash "$CI_DIR/slurm-multinode.sh" start
[ "$SMOKE" = 1 ] && phase smoke bash "$CI_DIR/smoke.sh"
echo "--- set-up done; timings (s):"; cat "$WORK/timings"
