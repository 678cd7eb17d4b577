#!/usr/bin/env bash
# Stop what .ci/setup.sh started (slurm, sge, the multi-node slurm containers, sshd) and remove containers/networks the tests left
# (labels pydist.cluster, org.testcontainers, pydist.ci). Images are kept.
# Usage: bash .ci/teardown.sh            (never fails; each step bounded)
set -uo pipefail
. "$(dirname "$0")/lib.sh"
timeout 120 bash "$CI_DIR/slurm.sh" stop || log "slurm stop failed"
timeout 60 bash "$CI_DIR/sge.sh" stop || log "sge stop failed"
timeout 60 bash "$CI_DIR/slurm-multinode.sh" stop || log "multi-node slurm stop failed"
timeout 30 bash "$CI_DIR/sshd.sh" stop || log "sshd stop failed"
timeout 20 docker info >/dev/null 2>&1 && clean_containers
exit 0
