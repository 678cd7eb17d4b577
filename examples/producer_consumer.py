"""Producer and consumers connected by RemoteChannels (the example of Julia's manual).

    python examples/producer_consumer.py [-n JOBS]
    pydist -p 4 examples/producer_consumer.py

The master puts job ids into `jobs`, a RemoteChannel it owns, from a thread, then closes
it.  Every worker runs `do_work`: it takes jobs until the channel is closed and empty,
"works" on each and puts (job id, seconds, worker id) into `results`.  The master takes one
result per job.  Closing `jobs` is what ends the consumers' loops.
"""

import argparse
import random
import threading
import time

from pydist import RemoteChannel, addprocs, myid, nprocs, remotecall, workers


def make_jobs(jobs: RemoteChannel, n: int) -> None:
    for job_id in range(1, n + 1):
        jobs.put(job_id)                  # blocks while the channel is full
    jobs.close()                          # consumers stop once it is empty


def do_work(jobs: RemoteChannel, results: RemoteChannel) -> int:
    """Runs on a worker: consume jobs until `jobs` is closed; returns how many it did."""
    done = 0
    for job_id in jobs:                   # iteration ends when jobs is closed and empty
        seconds = random.uniform(0.0, 0.02)
        time.sleep(seconds)               # stands for real work
        results.put((job_id, seconds, myid()))
        done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--jobs", type=int, default=24)
    args = parser.parse_args()
    if nprocs() == 1:
        addprocs(2)

    jobs = RemoteChannel(size=8)          # both live on the master (process 1)
    results = RemoteChannel(size=8)
    threading.Thread(target=make_jobs, args=(jobs, args.jobs), daemon=True).start()
    consumers = {pid: remotecall(do_work, pid, jobs, results) for pid in workers()}

    total = 0.0
    for _ in range(args.jobs):
        job_id, seconds, where = results.take()
        total += seconds
        print(f"job {job_id:3d} took {seconds:.3f} s on worker {where}")
    counts = {pid: fut.fetch() for pid, fut in consumers.items()}
    print(f"{args.jobs} jobs, {total:.2f} s of work; jobs per worker: {counts}")
    assert sum(counts.values()) == args.jobs


if __name__ == "__main__":
    main()
