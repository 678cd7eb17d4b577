#!/bin/bash
# A Slurm batch job whose Python driver is the pydist master: inside the allocation,
# addprocs(SlurmManager()) starts one worker per task (one `srun` step; the workers dial
# back to the master, see docs/managers/slurm.md), then the driver uses them.
#
#   sbatch examples/slurm_job.sh                       # 2 tasks: 2 workers
#   sbatch --ntasks=16 --partition=compute examples/slurm_job.sh
#
# The master runs in this script, on the first node, next to task 0's worker. Output
# (the driver's) goes to pydist-example-<job id>.out in the submit directory.
#
#SBATCH --job-name=pydist-example
#SBATCH --ntasks=2
#SBATCH --time=00:10:00
#SBATCH --output=pydist-example-%j.out
set -eu
# Site set-up goes here, e.g.:  module load python/3.11; source ~/venvs/pydist/bin/activate

"${PYDIST_PYTHON:-python3}" - <<'PYTHON'
import socket

from pydist.managers import SlurmManager
from pydist import addprocs, pmap, remotecall_fetch, rmprocs

ids = addprocs(SlurmManager())          # no n: one worker per task of this allocation
hosts = sorted({remotecall_fetch(socket.gethostname, pid) for pid in ids})
print(f"{len(ids)} workers {ids} on {hosts}", flush=True)

squares = pmap(lambda x: x * x, range(1000))
print("sum of squares:", sum(squares), flush=True)
rmprocs(*ids)
PYTHON
