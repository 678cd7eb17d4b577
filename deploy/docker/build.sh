#!/usr/bin/env bash
# Build the pydist worker image from this checkout.
#
# Usage: deploy/docker/build.sh [--base IMAGE] [--tag TAG] [--extras LIST]
#                               [--python PY] [--log FILE] [-- DOCKER_BUILD_ARGS...]
#   --base IMAGE   base image (default python:3.11-slim). Any image with
#                  Python >= 3.10; Debian's externally managed python3 works
#                  too (pydist then goes into a venv, /opt/pydist): e.g. the
#                  registry-free pydist-base:bookworm made by .ci/images.sh
#   --tag TAG      image tag (default pydist-worker:latest)
#   --extras LIST  pydist extras to install too, e.g. "ssh" or "all"
#   --python PY    the Python that builds the wheels (default python3)
#   --log FILE     send the docker build output to FILE (tail shown on failure)
#   -- ARGS...     passed to `docker build` (e.g. --force-rm, --no-cache)
#
# How: the wheels (pydist and its dependencies) are built on the host with
# `pip wheel -w <context>/wheels <repo>`, because pip inside `docker build`
# may not reach PyPI; the image installs them with `pip install --no-index`.
# Wheels of compiled dependencies must match the image's Python version and
# platform: use the same Python minor version on the host and in --base.
#
# Run a worker:  docker run --init -i pydist-worker:latest   (cookie on stdin)
#                docker run --init pydist-worker:latest --join HOST:PORT --cookie-file PATH
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
BASE=python:3.11-slim
TAG=pydist-worker:latest
EXTRAS=""
PY=${PYTHON:-python3}
LOG=""
DOCKER_ARGS=()
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&$(( ${1:-0} ? 2 : 1 )); exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE=${2:?--base needs an image}; shift 2 ;;
    --tag) TAG=${2:?--tag needs a tag}; shift 2 ;;
    --extras) EXTRAS=${2:?--extras needs a list}; shift 2 ;;
    --python) PY=${2:?--python needs an interpreter}; shift 2 ;;
    --log) LOG=${2:?--log needs a file}; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; DOCKER_ARGS=("$@"); break ;;
    *) echo "unknown argument: $1" >&2; usage 2 ;;
  esac
done
SPEC=pydist${EXTRAS:+[$EXTRAS]}

CTX=$(mktemp -d "${TMPDIR:-/tmp}/pydist-docker.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
cp "$HERE/Dockerfile" "$CTX/Dockerfile"

echo "building wheels for $SPEC with $PY" >&2
# Reproducible wheels (fixed zip timestamps): unchanged code gives the same
# bytes, so docker reuses its cached layers and the rebuild takes seconds.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-315532800}
"$PY" -m pip wheel -q --disable-pip-version-check -w "$CTX/wheels" "$REPO${EXTRAS:+[$EXTRAS]}" \
  || { echo "pip wheel failed" >&2; exit 1; }

echo "docker build $TAG from $BASE" >&2
cmd=(docker build --build-arg "BASE_IMAGE=$BASE" --build-arg "PYDIST_SPEC=$SPEC" -t "$TAG" "${DOCKER_ARGS[@]+"${DOCKER_ARGS[@]}"}" "$CTX")
if [ -n "$LOG" ]; then
  "${cmd[@]}" >"$LOG" 2>&1 || { tail -30 "$LOG" >&2; echo "docker build failed (full log: $LOG)" >&2; exit 1; }
else
  "${cmd[@]}"
fi
echo "built $TAG" >&2
