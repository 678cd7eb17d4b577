#!/usr/bin/env bash
# Single-host Grid Engine (Son of Grid Engine 8.1.9, Debian's gridengine-*)
# for the sge tests: sge_qmaster + sge_execd on this machine, queue all.q
# (SGE_SLOTS slots, default 8), parallel environment "pydist" ($fill_up,
# control_slaves TRUE so `qrsh -inherit` starts workers inside a job).
#
# Usage: bash .ci/sge.sh start|stop|status        (root; idempotent)
#   start   installs the packages if missing (~10 s), then starts the daemons
#           and (re)applies the cluster set-up; ~5 s when all is there
#   stop    deletes all jobs, stops sge_execd and sge_qmaster by pid file
#   status  exit 0 if the exec host reports load; prints qhost + qstat
#
# What it took to make this work non-interactively (written down because the
# packages' own docs assume an interactive install with an init system):
# * debconf: gridengine-common asks three questions, all "shared/": configure
#   automatically (gridengineconfig=true: gridengine-master's postinst then runs
#   init_cluster, which makes the Berkeley DB spool and the global
#   configuration), the cell name ("default") and the master's host name.
#   Preseeded with debconf-set-selections before apt-get install.
# * The postinsts' invoke-rc.d start is refused by policy-rc.d (no init here),
#   so the daemons are started by hand, as the init scripts would:
#   sge_qmaster with SGE_MASTER_PIDFILE, sge_execd with SGE_EXECD_PIDFILE; both
#   daemonize and drop to the admin user sgeadmin.
# * Host names: this machine's name resolves to 127.0.0.1, which resolves back
#   to "localhost", so qmaster calls itself "localhost" while clients say
#   "$(hostname)": every qconf/qsub fails with "access denied (client IP
#   resolved to host name localhost. This is not identical to clients host
#   name ...)". The cell's host_aliases file ("NAME localhost") makes both the
#   same host; act_qmaster holds the same name.
# * Jobs run as root here (the tests do), which the default global
#   configuration forbids (min_uid/min_gid 1000): set to 0.
# * qconf -A*/-M* read object definitions from files (the -a*/-m* forms open
#   an editor); the host is added as admin (by init_cluster), submit and exec
#   host, the queue's slots and the PE are (re)written on every start.
# * sge_execd takes ~load_report_time to report first; qhost shows "-" for
#   its load until then, and jobs are not scheduled there before that.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ACTION=${1:-start}
export SGE_ROOT=/var/lib/gridengine SGE_CELL=default
COMMON=$SGE_ROOT/$SGE_CELL/common
RUN=/run/gridengine
QMASTER_PID=$RUN/qmaster.pid
EXECD_PID=$RUN/execd.pid
SLOTS=${SGE_SLOTS:-8}
HOST=$(hostname)
PKGS=(gridengine-master gridengine-exec gridengine-client)

install_packages() {
  local need=() p
  for p in "${PKGS[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || need+=("$p")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  mkdir -p "$LOGS"
  log "installing ${need[*]} (log $LOGS/apt-sge.log)"
  debconf-set-selections <<SEL
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string $SGE_CELL
gridengine-common shared/gridenginemaster string $HOST
SEL
  # no init system: postinsts must not start the daemons (see packages.sh)
  local made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; made_policy=1
  fi
  { timeout 300 apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends "${need[@]}"; } \
    >"$LOGS/apt-sge.log" 2>&1 || { [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d; tail -30 "$LOGS/apt-sge.log" >&2; die "apt-get install ${need[*]} failed"; }
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ -s "$COMMON/bootstrap" ] || die "gridengine installed but $COMMON/bootstrap is missing (debconf answers not taken?)"
}

# qconf -A<kind> FILE adds, -M<kind> FILE replaces: try replace, else add.
apply() {
  local kind=$1 file=$2
  qconf "-M$kind" "$file" >/dev/null 2>&1 || qconf "-A$kind" "$file" >/dev/null 2>&1 \
    || die "qconf -A$kind $file failed: $(qconf "-A$kind" "$file" 2>&1)"
}

configure() {
  local tmp; tmp=$(mktemp -d)
  qconf -as "$HOST" >/dev/null 2>&1 || true       # submit host (already one: fine)
  qconf -sconf global | sed -e 's/^min_uid .*/min_uid 0/' -e 's/^min_gid .*/min_gid 0/' > "$tmp/global"
  qconf -Mconf "$tmp/global" >/dev/null 2>&1
  # schedule within a second of a submit or a job's end (default: every 15 s),
  # and no load adjustments (they make a just-started job's host look busy)
  qconf -ssconf | sed -e 's/^schedule_interval .*/schedule_interval 0:0:1/' \
    -e 's/^flush_submit_sec .*/flush_submit_sec 1/' -e 's/^flush_finish_sec .*/flush_finish_sec 1/' \
    -e 's/^job_load_adjustments .*/job_load_adjustments NONE/' > "$tmp/sched"
  qconf -Msconf "$tmp/sched" >/dev/null 2>&1
  printf 'hostname %s\nload_scaling NONE\ncomplex_values NONE\nuser_lists NONE\nxuser_lists NONE\nprojects NONE\nxprojects NONE\nusage_scaling NONE\nreport_variables NONE\n' \
    "$HOST" > "$tmp/exechost"
  apply e "$tmp/exechost"
  cat > "$tmp/pe" <<PE
pe_name            pydist
slots              999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$fill_up
control_slaves     TRUE
job_is_first_task  FALSE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
PE
  apply p "$tmp/pe"
  # the template queue, with this host, SLOTS slots, the PE, and load
  # thresholds off (a loaded CI machine must not put the queue in alarm state)
  qconf -sq | sed -e "s/^qname .*/qname all.q/" -e "s/^hostlist .*/hostlist $HOST/" \
    -e "s/^slots .*/slots $SLOTS/" -e "s/^pe_list .*/pe_list pydist/" \
    -e "s/^load_thresholds .*/load_thresholds NONE/" > "$tmp/queue"
  apply q "$tmp/queue"
  rm -rf "$tmp"
}

exec_host_up() { timeout 10 qhost -h "$HOST" 2>/dev/null | awk -v h="$HOST" '$1 == h && $7 != "-" {found=1} END {exit !found}'; }

start() {
  [ "$(id -u)" = 0 ] || die "sge.sh start must run as root"
  install_packages
  echo "$HOST localhost" > "$COMMON/host_aliases"
  echo "$HOST" > "$COMMON/act_qmaster"
  install -d -o sgeadmin -g sgeadmin -m 0755 "$RUN"
  alive "$QMASTER_PID" || SGE_MASTER_PIDFILE=$QMASTER_PID /usr/sbin/sge_qmaster
  for _ in $(seq 100); do timeout 5 qconf -sh >/dev/null 2>&1 && break; sleep 0.2; done
  timeout 5 qconf -sh >/dev/null 2>&1 || die "sge_qmaster does not answer (log /var/spool/gridengine/qmaster/messages)"
  configure
  alive "$EXECD_PID" || SGE_EXECD_PIDFILE=$EXECD_PID /usr/sbin/sge_execd
  # clear an error state left by an earlier run (e.g. a killed execd)
  timeout 10 qmod -c "all.q@$HOST" >/dev/null 2>&1 || true
  for _ in $(seq 120); do exec_host_up && { log "sge up: host $HOST, queue all.q ($SLOTS slots), pe pydist"; return 0; }; sleep 0.5; done
  tail -20 /var/spool/gridengine/qmaster/messages /var/spool/gridengine/execd/"$HOST"/messages >&2 2>/dev/null || true
  die "sge exec host $HOST reports no load after 60 s"
}

stop() {
  if alive "$QMASTER_PID"; then
    timeout 10 qdel -f -u '*' >/dev/null 2>&1 || true
    for _ in $(seq 50); do [ -z "$(timeout 5 qstat -u '*' 2>/dev/null)" ] && break; sleep 0.2; done
  fi
  kill_pidfile "$EXECD_PID"; kill_pidfile "$QMASTER_PID"
  log "sge stopped"
}

status() {
  timeout 10 qhost || true; timeout 10 qstat -u '*' || true
  exec_host_up
}

case "$ACTION" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
