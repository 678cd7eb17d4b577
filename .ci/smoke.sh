#!/usr/bin/env bash
# Smoke checks of the test environment, run by .ci/run before pytest so that a
# broken environment is reported as such and not as failing tests. Each check
# prints one line, "smoke ok   NAME (secs)" or "smoke FAIL NAME: why".
# Usage: bash .ci/smoke.sh [NAME...]     (default: all; exit 1 if any failed)
#   names: python docker worker-image sshd sshhost slurm testcontainers browser
set -uo pipefail
. "$(dirname "$0")/lib.sh"
export TESTCONTAINERS_RYUK_DISABLED=true
SSH_OPTS=(-i "$SSH_KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes
          -o UserKnownHostsFile="$SSH_KNOWN_HOSTS" -o ConnectTimeout=5 -o LogLevel=ERROR)
IMPORT="python3 -c 'import pydist'"
failed=0
OUT=$(mktemp); trap 'rm -f "$OUT"; docker rm -f pydist-ci-smoke-sshhost >/dev/null 2>&1 || true' EXIT

check() {   # check NAME WHAT-IT-CHECKS FUNCTION
  local name=$1 what=$2 t0; t0=$(now_ms)
  if "$3" >"$OUT" 2>&1; then
    printf 'smoke ok   %-15s %s (%s s)\n' "$name" "$what" "$(secs_since "$t0")"
  else
    printf 'smoke FAIL %-15s %s: %s\n' "$name" "$what" "$(tail -5 "$OUT" | tr '\n' ' ')"
    failed=$((failed + 1))
  fi
}

c_python() { "$PY" -c 'import pydist, pydist.managers, pytest, docker, paramiko, testcontainers, kubernetes'; }
c_docker() { timeout 20 docker info >/dev/null; }
c_worker_image() {
  local u
  u=$(timeout 60 docker run --rm --init --label pydist.ci=1 --entrypoint python "$WORKER_IMAGE" \
        -c 'import os, pydist; print(os.getuid())') || return 1
  [ "$u" != 0 ] || { echo "$WORKER_IMAGE runs as root"; return 1; }
}
c_sshd() { timeout 30 ssh "${SSH_OPTS[@]}" -p "$SSHD_PORT" root@127.0.0.1 "$IMPORT"; }
c_sshhost() {
  docker rm -f pydist-ci-smoke-sshhost >/dev/null 2>&1
  timeout 30 docker run -d --init --label pydist.ci=1 --name pydist-ci-smoke-sshhost "$SSHHOST_IMAGE" >/dev/null || return 1
  local ip; ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' pydist-ci-smoke-sshhost)
  for _ in $(seq 100); do timeout 2 bash -c "exec 3<>/dev/tcp/$ip/22" 2>/dev/null && break; sleep 0.1; done
  timeout 30 ssh "${SSH_OPTS[@]}" "root@$ip" "$IMPORT" && timeout 30 ssh "${SSH_OPTS[@]}" "pydist@$ip" "$IMPORT"
  local rc=$?; docker rm -f pydist-ci-smoke-sshhost >/dev/null 2>&1; return $rc
}
c_slurm() { (cd "${TMPDIR:-/tmp}" && timeout 60 srun -n1 -t 2 --quit-on-interrupt bash -c "$IMPORT"); }
c_testcontainers() {
  timeout 90 "$PY" - "$WORKER_IMAGE" <<'PY'
import sys, time
from testcontainers.core.container import DockerContainer
c = DockerContainer(sys.argv[1], entrypoint=["python", "-c",
    "import pydist, time; print('ready', flush=True); time.sleep(60)"], init=True, labels={"pydist.ci": "1"})
with c:
    for _ in range(200):
        if b"ready" in c.get_logs()[0]:
            break
        time.sleep(0.1)
    else:
        sys.exit("container never printed ready: %r" % (c.get_logs(),))
PY
}

c_browser() {
  timeout 90 "$PY" - <<'PY'
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    driver.get("data:text/html,<p id=p>ok</p>")
    assert driver.find_element("id", "p").text == "ok"
finally:
    driver.quit()
PY
}

ALL=(python docker worker-image sshd sshhost slurm testcontainers browser)
declare -A WHAT=(
  [python]="import pydist and the test deps with $PY"
  [docker]="docker engine answers"
  [worker-image]="$WORKER_IMAGE imports pydist as non-root"
  [sshd]="ssh root@127.0.0.1:$SSHD_PORT (test key) imports pydist"
  [sshhost]="ssh root@/pydist@ a $SSHHOST_IMAGE container imports pydist"
  [slurm]="srun on partition debug imports pydist"
  [testcontainers]="testcontainers (no Ryuk) runs $WORKER_IMAGE"
  [browser]="selenium drives headless chromium (the dashboard's tests)"
)
for n in "${@:-${ALL[@]}}"; do
  [ -n "${WHAT[$n]:-}" ] || die "unknown smoke check '$n' (have: ${ALL[*]})"
  check "$n" "${WHAT[$n]}" "c_${n//-/_}"
done
[ "$failed" = 0 ] || { log "$failed smoke check(s) failed: the test environment is broken (see above)"; exit 1; }
