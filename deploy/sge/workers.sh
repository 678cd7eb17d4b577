#!/bin/sh
# pydist workers that join a master which is already running (worker connects):
# a Grid Engine array job, one worker per array task. The master listens with
#     addprocs(ElasticManager(n=4, port=9090))            # pydist.managers.elastic
# and addprocs returns once n workers joined (add keep_accepting=True to take
# in workers that join later too).
#
# Usage:
#     PYDIST_HEAD=login1:9090 PYDIST_COOKIE_FILE=~/.pydist/cookie \
#         qsub -t 1-4 deploy/sge/workers.sh
#
# Environment variables it relies on (-V passes the submitting shell's):
#   PYDIST_HEAD         host:port the master's ElasticManager listens on, as the
#                       nodes can reach it (required)
#   PYDIST_COOKIE_FILE  a file holding the master's cluster cookie, mode 0600, on
#                       a file system the nodes share (required). The master
#                       reads the same file: cluster_cookie(open(path).read().strip())
#   PYDIST_PYTHON       the interpreter that has pydist (default: python3 on PATH)
#   PYDIST_JOIN_TIMEOUT seconds a worker keeps trying to reach the master
#                       (default 300)
#
# Each worker names itself <job id>.<array task id>. It exits when the master
# removes it (rmprocs) or exits, which ends its array task; qdel the job to
# stop the workers from Grid Engine's side.
#
#$ -N pydist-workers
#$ -S /bin/sh
#$ -V
#$ -cwd
#$ -j y
#$ -o pydist-workers-$JOB_ID.$TASK_ID.out
#$ -l h_rt=01:00:00
set -eu
: "${PYDIST_HEAD:?set PYDIST_HEAD=host:port of the master (addprocs(ElasticManager(...)))}"
: "${PYDIST_COOKIE_FILE:?set PYDIST_COOKIE_FILE to a 0600 file holding the cluster cookie}"
# Site set-up goes here, e.g. module load / source a venv.
export PYTHONUNBUFFERED=1
exec "${PYDIST_PYTHON:-python3}" -m pydist.worker \
    --join "$PYDIST_HEAD" --cookie-file "$PYDIST_COOKIE_FILE" \
    --join-timeout "${PYDIST_JOIN_TIMEOUT:-300}" \
    --ident "$JOB_ID.${SGE_TASK_ID:-0}"
