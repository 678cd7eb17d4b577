#!/usr/bin/env bash
# Build the test images without any registry (no image can be pulled here).
#   pydist-base:bookworm   Debian 12 minbase + python3 + venv, made by
#                          `mmdebstrap | docker import`; built only when the
#                          tag is missing (~40 s; PYDIST_REBUILD_BASE=1 forces it)
#   pydist-worker:latest   deploy/docker/build.sh --base pydist-base:bookworm;
#                          always rebuilt so it has the current code (layer
#                          cache: ~10 s when the code is unchanged)
#   pydist-sshhost:test    tests/images/sshhost: sshd + the worker's venv,
#                          the test key authorized for root and pydist, the
#                          test host key; always rebuilt (apt layer cached)
# Usage: bash .ci/images.sh          (needs mmdebstrap, docker, the Debian mirror)
# Env: PYDIST_DEBIAN_MIRROR (default http://deb.debian.org/debian), PYTHON.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
MIRROR=${PYDIST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$LOGS"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/pydist-images.XXXXXX"); trap 'rm -rf "$TMP"' EXIT
# The legacy builder is what this Docker (20.10, no buildx) has; say so, and
# remove the intermediate container of a failed RUN (--force-rm).
export DOCKER_BUILDKIT=0

ensure_dockerd

build_base() {
  if [ "${PYDIST_REBUILD_BASE:-0}" != 1 ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "$BASE_IMAGE exists: not rebuilt"; return 0
  fi
  command -v mmdebstrap >/dev/null || die "mmdebstrap missing (bash .ci/packages.sh)"
  log "building $BASE_IMAGE with mmdebstrap from $MIRROR (log $LOGS/mmdebstrap.log)"
  # netbase: /etc/services, /etc/protocols; procps: ps/kill for debugging workers
  # import under a temporary tag: a half-written tar must never get the real
  # tag (the next run would skip the build and keep a broken base)
  local tmp_tag="${BASE_IMAGE%%:*}:partial"
  timeout 900 mmdebstrap --variant=minbase --include=python3,python3-venv,netbase,procps \
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
      --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
      --dpkgopt='path-exclude=/usr/share/info/*' \
      bookworm - "$MIRROR" 2>"$LOGS/mmdebstrap.log" \
    | timeout 900 docker import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' \
        -m 'pydist base: mmdebstrap bookworm minbase + python3' - "$tmp_tag" >/dev/null \
    && timeout 60 docker run --rm "$tmp_tag" python3 -c 'import venv, ensurepip' \
    || { docker rmi -f "$tmp_tag" >/dev/null 2>&1; tail -20 "$LOGS/mmdebstrap.log" >&2; die "building $BASE_IMAGE failed"; }
  docker tag "$tmp_tag" "$BASE_IMAGE" && docker rmi "$tmp_tag" >/dev/null
}

build_worker() {
  log "building $WORKER_IMAGE FROM $BASE_IMAGE (log $LOGS/build-worker.log)"
  timeout 900 bash "$REPO/deploy/docker/build.sh" --base "$BASE_IMAGE" --tag "$WORKER_IMAGE" \
      --python "$PY" --log "$LOGS/build-worker.log" -- --force-rm
}

build_sshhost() {
  bash "$CI_DIR/sshd.sh" keys      # the test keys, if this checkout has none yet
  local ctx=$TMP/sshhost
  mkdir -p "$ctx"
  cp -r "$REPO/tests/images/sshhost/." "$ctx/"
  cp "$SSH_KEY.pub" "$ctx/authorized_keys"
  cp "$SSH_HOST_KEY" "$ctx/ssh_host_ed25519_key"
  log "building $SSHHOST_IMAGE (log $LOGS/build-sshhost.log)"
  timeout 900 docker build --force-rm --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "WORKER_IMAGE=$WORKER_IMAGE" \
      -t "$SSHHOST_IMAGE" "$ctx" >"$LOGS/build-sshhost.log" 2>&1 \
    || { tail -30 "$LOGS/build-sshhost.log" >&2; die "building $SSHHOST_IMAGE failed"; }
}

for b in build_base build_worker build_sshhost; do
  t0=$(now_ms); $b; log "  $b: $(secs_since "$t0") s"
done
# (No `docker image prune` here: on a shared machine it can delete the newest
# intermediate image of someone else's build in progress.)
docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^(${BASE_IMAGE}|${WORKER_IMAGE}|${SSHHOST_IMAGE})  " >&2 || true
