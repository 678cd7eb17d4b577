# Shared helpers for the .ci/ scripts. Source it; do not run it.
#   CI_DIR  this folder          REPO  the repository root
#   WORK    .ci/work (git-ignored: test keys, logs, stamps)
#   PY      the Python that has pydist installed (env PYTHON, default python3)
CI_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$CI_DIR/.." && pwd)
WORK=$CI_DIR/work
LOGS=$WORK/logs
PY=${PYTHON:-python3}

# Fixed names the tests rely on (tests/infra.py holds the same values).
BASE_IMAGE=${PYDIST_BASE_IMAGE:-pydist-base:bookworm}
WORKER_IMAGE=pydist-worker:latest
SSHHOST_IMAGE=pydist-sshhost:test
SSH_DIR=$WORK/ssh
SSH_KEY=$SSH_DIR/id_ed25519            # client key: root@127.0.0.1:2222 and the SSH-host image
SSH_HOST_KEY=$SSH_DIR/ssh_host_ed25519_key   # host key of the loopback sshd AND the SSH-host image
SSH_KNOWN_HOSTS=$SSH_DIR/known_hosts
SSHD_PORT=2222
# Labels of containers/networks the tests may leave behind.
CLEAN_LABELS=(pydist.cluster org.testcontainers pydist.ci)

log() { printf '%s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }
# monotonic-enough wall clock in ms, and "1.234" seconds since a start value
now_ms() { date +%s%3N; }
secs_since() { local d=$(( $(now_ms) - $1 )); printf '%d.%01d' $((d / 1000)) $(( (d % 1000) / 100 )); }

# The bin dir of the interpreter that has pydist (not realpath'd: keeps venvs).
py_bindir() { "$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))'; }

# Daemons started by pid file (slurm.sh, sge.sh): is it running; stop it
# (SIGTERM, up to 5 s, then SIGKILL) and remove the pid file.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
kill_pidfile() {
  local f=$1 p
  if alive "$f"; then
    p=$(cat "$f"); kill "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  fi
  rm -f "$f"
}

# Start dockerd by hand when the engine is not answering (no systemd here).
ensure_dockerd() {
  timeout 20 docker info >/dev/null 2>&1 && return 0
  command -v dockerd >/dev/null || die "docker engine not running and no dockerd binary (install docker.io)"
  mkdir -p "$LOGS"
  log "starting dockerd (log $LOGS/dockerd.log)"
  nohup dockerd >"$LOGS/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 120); do timeout 5 docker info >/dev/null 2>&1 && return 0; sleep 0.5; done
  tail -20 "$LOGS/dockerd.log" >&2
  die "dockerd did not come up in 60 s"
}

# Remove containers (and networks) left by tests: labels in CLEAN_LABELS.
clean_containers() {
  local l ids
  for l in "${CLEAN_LABELS[@]}"; do
    ids=$(timeout 30 docker ps -aq --filter "label=$l" 2>/dev/null || true)
    [ -n "$ids" ] && { timeout 120 docker rm -f $ids >/dev/null 2>&1 || true; log "removed $(echo $ids | wc -w) container(s) labelled $l"; }
    ids=$(timeout 30 docker network ls -q --filter "label=$l" 2>/dev/null || true)
    [ -n "$ids" ] && { timeout 60 docker network rm $ids >/dev/null 2>&1 || true; log "removed network(s) labelled $l"; }
  done
  return 0
}
