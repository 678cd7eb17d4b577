#!/bin/sh
# pydist inside a Grid Engine parallel job: this job script is the master, and
# addprocs(SGEManager()) in the Python script it runs starts one worker per
# slot of the job ($NSLOTS in all, on the hosts of $PE_HOSTFILE), each with
# `qrsh -inherit HOST`, so Grid Engine accounts for them and kills them with
# the job (the parallel environment needs control_slaves TRUE). The workers dial
# back to the master (worker connects) and read the cookie from a 0600 file the
# master writes under ~/.pydist/sge (or SGEManager(output_dir=...)), a
# directory the nodes must share.
#
# Usage:   qsub -pe PE N [-l h_rt=...] [-q QUEUE] deploy/sge/driver.sh SCRIPT.py [ARGS...]
# Example SCRIPT.py:
#     from pydist import addprocs, pmap
#     from pydist.managers import SGEManager
#     addprocs(SGEManager())                    # no n: one worker per slot
#     print(sum(pmap(lambda x: x * x, range(100))))
#
# The master runs beside the workers on the first host; ask for one slot more
# if it computes a lot. Workers' output goes to
# ~/.pydist/sge/pydist-<job>.<launch>.out, the master's to this job's output.
#
# Environment variables it relies on (-V passes the submitting shell's):
#   PYDIST_PYTHON  the interpreter that has pydist (default: python3 on PATH)
#   PYDIST_*       pydist settings (e.g. PYDIST_WORKER_TIMEOUT), passed on to
#                  the workers too
#
#$ -N pydist-driver
#$ -S /bin/sh
#$ -V
#$ -cwd
#$ -j y
#$ -o pydist-driver-$JOB_ID.out
#$ -l h_rt=00:30:00
set -eu
# Site set-up goes here, e.g.:
#   module load python/3.11
#   . ~/venvs/pydist/bin/activate
if [ $# -lt 1 ]; then
  echo "usage: qsub -pe PE N deploy/sge/driver.sh SCRIPT.py [ARGS...]" >&2
  exit 2
fi
exec "${PYDIST_PYTHON:-python3}" "$@"
