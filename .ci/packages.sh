#!/usr/bin/env bash
# Install the Debian packages the test set-up needs, only those missing.
# Usage: bash .ci/packages.sh        (root; no-op in ~0.1 s when all present)
# The Docker engine itself is not installed here: this kind of machine ships
# it (lib.sh's ensure_dockerd starts dockerd if it is not answering).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

PKGS=(
  openssh-server openssh-client   # loopback sshd (:2222) and the ssh client
  slurm-wlm munge                 # single-node Slurm (slurmctld, slurmd, client)
  mmdebstrap                      # the registry-free base image
  procps iproute2 ca-certificates # ps/kill, ip, TLS roots for pip
  chromium chromium-driver        # headless browser the dashboard's tests look with (selenium)
  fonts-dejavu-core               # ... and a font for its screenshots
)
need=()
for p in "${PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || need+=("$p")
done
if [ ${#need[@]} -eq 0 ]; then log "all Debian packages present"; exit 0; fi

[ "$(id -u)" = 0 ] || die "missing Debian packages (${need[*]}) and not root"
mkdir -p "$LOGS"
# Package postinst scripts must not try to start slurmd/munge/ssh (there is no
# init system, and a failing invoke-rc.d fails the install): the machine image
# ships a policy-rc.d that forbids it; make one for the install if it is absent.
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
fi
trap '[ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
log "installing: ${need[*]} (log $LOGS/apt.log)"
export DEBIAN_FRONTEND=noninteractive
{ timeout 300 apt-get update -qq \
  && timeout 900 apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
  >"$LOGS/apt.log" 2>&1 || { tail -30 "$LOGS/apt.log" >&2; die "apt-get install ${need[*]} failed"; }
log "installed: ${need[*]}"
