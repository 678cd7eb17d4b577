"""The benchmark report's arithmetic (bench/report.py), on hand-made result documents:
which reference each target uses, where shared memory starts to pay, fractions of the
memcpy floor, and that runs saved before these rows existed still render."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # bench/ is not installed

from bench import report  # noqa: E402

MB = 1_000_000


def doc_with(results, peers=None, cases=None):
    """A results document as `python -m bench` writes it, holding only ``results``."""
    cases = cases or list(results)
    peers = peers or sorted({p for per_case in results.values() for p in per_case})
    return {
        "meta": {"peers_requested": peers, "cases": cases, "config": {"workers": 2, "scale_n": 32}},
        "peers": {p: {"skipped": None} for p in peers},
        "results": {case: {p: {"rows": rows} for p, rows in per_case.items()}
                    for case, per_case in results.items()},
        "problems": [],
    }


def transfer(nbytes, to_gbps, back_gbps, key="default"):
    return {"key": key, "label": "x", "bytes": nbytes, "reps": 5,
            "to_worker_gbps": to_gbps, "to_worker_s": nbytes / to_gbps / 1e9,
            "back_gbps": back_gbps, "back_s": nbytes / back_gbps / 1e9}


def tput(key, kind, per_s):
    return {"key": key, "kind": kind, "label": key, "tasks_per_s": per_s, "seconds": 1e4 / per_s,
            "reps": 1}


def target(doc, starts_with):
    [t] = [t for t in report.targets(doc) if t["target"].startswith(starts_with)]
    return t


def test_unbatched_pmap_is_held_to_the_faster_of_imap_and_map_with_chunksize_1():
    doc = doc_with({"throughput": {
        "pydist": [tput("unbatched", "unbatched", 40_000)],
        "multiprocessing": [tput("unbatched", "unbatched", 30_000),
                            tput("unbatched: Pool.map", "unbatched", 50_000)],
    }})
    t = target(doc, "unbatched pmap")
    assert (t["status"], t["threshold"]) == ("FAIL", 50_000)
    assert "0.80x" in t["text"]


def test_bigdata_targets_compare_with_ray_and_memcpy_at_their_sizes():
    doc = doc_with({"bigdata": {
        "pydist": [transfer(MB, 1.0, 1.0), transfer(100 * MB, 3.0, 2.0)],
        "ray": [transfer(MB, 0.5, 1.5), transfer(100 * MB, 2.0, 2.0)],
        "memcpy": [transfer(100 * MB, 5.0, 5.0, key="touched")],
    }})
    assert target(doc, "bigdata 100 MB to a worker >= 1.2 x Ray")["status"] == "PASS"   # 1.5x
    assert target(doc, "bigdata 100 MB back >= 1.2 x Ray")["status"] == "FAIL"         # 1.0x
    assert target(doc, "bigdata 1 MB to a worker >= Ray")["status"] == "PASS"
    assert target(doc, "bigdata 1 MB back >= Ray")["status"] == "FAIL"
    assert target(doc, "(goal) bigdata 100 MB to a worker")["status"] == "PASS"        # 0.6 of memcpy
    assert target(doc, "(goal) bigdata 100 MB back")["status"] == "FAIL"               # 0.4
    assert report.of_floor(doc, transfer(100 * MB, 2.5, 1.0)) == ("0.50", "0.20")


def test_shared_memory_pays_from_the_size_where_it_and_every_larger_size_is_faster():
    sizes = [MB // 10, MB, 2 * MB, 10 * MB, 100 * MB]
    doc = doc_with({"bigdata": {
        "pydist": [transfer(s, g, 1.0) for s, g in zip(sizes, [1.0, 1.3, 1.0, 1.6, 3.0])],
        "pydist_noshm": [transfer(s, 1.0, 1.0) for s in sizes],
    }})
    text = report.shm_table(doc)
    assert "to a worker from 10 MB on, back at no size measured" in text


def test_a_run_saved_before_sizes_kinds_and_floors_still_renders():
    old_bigdata = transfer(100 * MB, 1.5, 1.7)
    old_tput = {"key": "unbatched", "label": "imap", "tasks_per_s": 15_000, "seconds": 1.3, "reps": 3}
    doc = doc_with({"bigdata": {"pydist": [old_bigdata], "multiprocessing": [old_bigdata]},
                    "throughput": {"pydist": [dict(old_tput, label="pmap")],
                                   "multiprocessing": [old_tput]}})
    doc["meta"].update(timestamp="old", command="python -m bench", cores=2, cpu_model="?", memory_gb=1,
                       platform="?", python="3.11", versions={}, git_head=None)
    doc["meta"]["config"]["quick"] = False
    doc["targets"] = report.targets(doc)
    text = report.render(doc)
    assert "bigdata 100 MB to a worker >= 1.5 GB/s" in text and "needs the pydist_noshm variant" in text
    assert target(doc, "unbatched pmap")["threshold"] == 15_000
