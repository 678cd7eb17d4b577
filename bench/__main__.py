"""python -m bench: pydist against its peers, all in this one process invocation.

Peers run one after the other on the same machine; each is started fresh,
measured, and shut down until every process it started has exited, before the
next one starts.  See bench/README.md for what each case measures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "bench", "results")


def _prepare_environment() -> None:
    # Every worker process, whoever launches it (fork, spawn, raylet, ipengine,
    # pydist's LocalManager), must import bench.tasks by reference.
    pp = os.environ.get("PYTHONPATH", "")
    if REPO not in pp.split(os.pathsep):
        os.environ["PYTHONPATH"] = REPO + (os.pathsep + pp if pp else "")
    if REPO not in sys.path:
        sys.path.insert(0, REPO)


def parse_args(argv):
    from bench import cases, peers

    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(cases.ALL),
                    help=f"comma-separated subset of {','.join(cases.ALL)} (default: all)")
    ap.add_argument("--peers", default=",".join(peers.ORDER),
                    help=f"comma-separated subset of {','.join(peers.ORDER)} (default: all)")
    ap.add_argument("--quick", action="store_true",
                    help="small counts: a smoke run of every code path (under 2 minutes)")
    ap.add_argument("--json", metavar="PATH",
                    help="write the results here (default bench/results/<timestamp>.json); "
                         "bench/results/latest.json is always updated")
    ap.add_argument("--quiet-wait", type=float, default=0.0, metavar="SECONDS",
                    help="before each peer, wait up to SECONDS for the machine's CPU use to drop "
                         "below 25%% (other jobs on a shared machine skew the numbers); "
                         "the load seen is recorded either way")
    ap.add_argument("--render-md", metavar="JSON",
                    help="print the Markdown tables of a saved run (for docs/performance.md) and exit")
    # a variant's child run (see peers.VARIANTS): results to --json only, no report
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad = [c for c in args.cases if c not in cases.ALL] + [p for p in args.peers if p not in peers.ORDER]
    if bad:
        ap.error(f"unknown case or peer: {', '.join(bad)}")
    # run in the documented order whatever order was typed
    args.cases = [c for c in cases.ALL if c in args.cases]
    args.peers = [p for p in peers.ORDER if p in args.peers]
    return args


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Runner:
    def __init__(self, cfg, case_names, peer_names, quiet_wait_s=0.0):
        self.cfg = cfg
        self.quiet_wait_s = quiet_wait_s
        self.case_names = case_names
        self.peer_names = peer_names
        self.results = {c: {} for c in case_names}
        self.peers = {}
        self.problems: list[str] = []
        self.failed = False

    # -- bookkeeping ------------------------------------------------------------
    def _record_error(self, case, peer, exc):
        from bench.common import BenchError, Timeout

        kind = ("WRONG RESULT / NOT MEASURABLE" if isinstance(exc, BenchError)
                else "TIMEOUT" if isinstance(exc, Timeout) else type(exc).__name__)
        msg = f"{kind}: {exc}"
        tb = traceback.format_exc()
        self.results[case][peer] = {"error": msg, "traceback": tb}
        self.problems.append(f"{peer} / {case}: {msg}")
        self.failed = True
        print(f"\n!!!!! {peer} / {case} FAILED: {msg}\n{tb}", file=sys.stderr, flush=True)

    def _cleanup(self, mod, tracker, peer):
        if hasattr(mod, "cleanup"):
            try:
                mod.cleanup()
            except Exception as e:  # noqa: BLE001 - best effort after a failure
                log(f"{peer}: cleanup raised {e!r}")
        left = tracker.wait_gone(self.cfg.leftover_timeout_s)
        helpers = self.peers[peer].setdefault("persistent_helpers", [])
        helpers += [h for h in tracker.helpers.values() if h not in helpers]
        if left:
            msg = f"{peer}: processes were still running after stop and were killed: {left}"
            self.problems.append(msg)
            self.failed = True
            log("!!! " + msg)
        return left

    # -- one peer ---------------------------------------------------------------
    def _wait_quiet(self, name):
        from bench.common import wait_quiet

        if self.quiet_wait_s:
            log(f"{name}: waiting up to {self.quiet_wait_s:.0f} s for the machine to be quiet")
        return wait_quiet(self.quiet_wait_s)

    def run_peer(self, name):
        from bench import cases, peers
        from bench.common import system_load

        if name in peers.VARIANTS:
            self.run_variant(name, peers.VARIANTS[name])
            return
        try:
            mod = peers.load(name)
        except ImportError as e:
            reason = f"not installed ({e})"
            self.peers[name] = {"skipped": reason}
            log(f"{name}: skipped, {reason}")
            return
        wanted = [c for c in self.case_names if c in getattr(mod, "CASES", cases.ALL)]
        if not wanted:
            return
        self.peers[name] = {"skipped": None, "leftovers": [], "cases": wanted}
        self.peers[name]["load_before"] = self._wait_quiet(name)
        t0 = time.perf_counter()
        if "startup" in wanted:
            self._standalone(mod, name, "startup")
        session = [c for c in wanted if c in cases.SESSION]
        if session:
            self._session(mod, name, session)
        if "scale" in wanted:
            from bench.cases import scale

            if name in scale.PEERS:
                self._standalone(mod, name, "scale")
        self.peers[name]["wall_s"] = time.perf_counter() - t0
        self.peers[name]["load_after"] = system_load()
        lb, la = self.peers[name]["load_before"], self.peers[name]["load_after"]
        log(f"{name}: done in {self.peers[name]['wall_s']:.1f} s; machine CPU busy "
            f"{lb['cpu_percent']:.0f}% before, {la['cpu_percent']:.0f}% after (load {la['loadavg'][0]})")

    def _standalone(self, mod, name, case):
        import importlib

        from bench.common import ProcessTracker, deadline

        tracker = ProcessTracker()
        log(f"{name}: {case}")
        try:
            with deadline(self.cfg.case_timeout_s, f"{name} {case}"):
                rows = importlib.import_module(f"bench.cases.{case}").run(mod, self.cfg, tracker)
            self.results[case][name] = {"rows": rows}
        except Exception as e:  # noqa: BLE001 - recorded, printed, run exits non-zero
            self._record_error(case, name, e)
            self.peers[name]["leftovers"] += self._cleanup(mod, tracker, name)

    def _session(self, mod, name, session):
        import importlib

        from bench.common import CaseSkipped, ProcessTracker, Timeout, deadline

        tracker = ProcessTracker()
        h = None
        log(f"{name}: starting {self.cfg.workers} workers for {', '.join(session)}")
        try:
            with deadline(self.cfg.case_timeout_s, f"{name} start"):
                h = mod.start(self.cfg.workers)
                tracker.snapshot()
                h.ready()
        except Exception as e:  # noqa: BLE001
            for case in session:
                self._record_error(case, name, e)
            session = []
        for case in session:
            log(f"{name}: {case}")
            try:
                with deadline(self.cfg.case_timeout_s, f"{name} {case}"):
                    rows = importlib.import_module(f"bench.cases.{case}").run(h, self.cfg)
                self.results[case][name] = {"rows": rows}
                tracker.snapshot()
            except CaseSkipped as e:
                self.results[case][name] = {"na": str(e)}
            except Timeout as e:
                self._record_error(case, name, e)
                break  # the peer's state is unknown now: stop it
            except Exception as e:  # noqa: BLE001
                self._record_error(case, name, e)
        if h is not None:
            try:
                with deadline(self.cfg.stop_timeout_s, f"{name} stop"):
                    h.stop()
            except Exception as e:  # noqa: BLE001
                msg = f"{name}: stop failed: {e!r}"
                self.problems.append(msg)
                self.failed = True
                log("!!! " + msg)
        self.peers[name]["leftovers"] += self._cleanup(mod, tracker, name)

    def run_variant(self, name, variant):
        """Run ``variant.peer`` in a child run with the variant's environment (bench/variant.py)
        and file its results under ``name``."""
        from bench.variant import run_child

        wanted = [c for c in self.case_names if c in variant.cases]
        if not wanted:
            return
        entry = self.peers[name] = {"skipped": None, "leftovers": [], "cases": wanted,
                                    "variant_of": variant.peer, "env": variant.env,
                                    "description": variant.description}
        entry["load_before"] = self._wait_quiet(name)
        log(f"{name}: {variant.peer} with {variant.env} in a child run for {', '.join(wanted)}")
        doc, status, why = run_child(REPO, variant, wanted, self.cfg)
        if doc is None:
            for case in wanted:
                self.results[case][name] = {"error": why, "traceback": ""}
            self.problems.append(f"{name}: {why}")
            self.failed = True
            return
        mine = doc["peers"].get(variant.peer, {})
        entry.update({k: mine[k] for k in ("skipped", "leftovers", "persistent_helpers",
                                           "load_after", "wall_s") if k in mine})
        for case in wanted:
            if variant.peer in doc["results"].get(case, {}):
                self.results[case][name] = doc["results"][case][variant.peer]
        self.problems += [f"{name} (child run): {p}" for p in doc["problems"]]
        if status != 0:
            self.failed = True
            if not doc["problems"]:
                self.problems.append(f"{name}: the child run exited with status {status}")

    def run(self, after_each_peer=None):
        for name in self.peer_names:
            self.run_peer(name)
            if after_each_peer is not None:
                after_each_peer()


def main(argv=None) -> int:
    _prepare_environment()
    args = parse_args(sys.argv[1:] if argv is None else argv)

    from bench import config, report
    from bench.common import machine_info

    if args.render_md:
        with open(args.render_md) as f:
            doc = json.load(f)
        doc["targets"] = report.targets(doc)  # re-evaluated with this version's rules
        print(report.render(doc, md=True))
        return 0

    cfg = config.quick() if args.quick else config.full()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    meta = machine_info(REPO)
    meta.update({
        "timestamp": stamp,
        "command": "python -m bench " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "cases": args.cases,
        "peers_requested": args.peers,
        "config": cfg.as_dict(),
    })
    t0 = time.perf_counter()
    runner = Runner(cfg, args.cases, args.peers, args.quiet_wait)
    path = args.json or os.path.join(RESULTS, f"{stamp}.json")

    def save(final=False):
        # written after every peer too, so an interrupted run keeps what it measured
        meta["wall_s"] = time.perf_counter() - t0
        meta["complete"] = final
        doc = {"meta": meta, "peers": runner.peers, "results": runner.results,
               "problems": runner.problems}
        doc["targets"] = report.targets(doc)
        paths = {os.path.abspath(path)}
        if not args.child:
            paths.add(os.path.join(RESULTS, "latest.json"))
        for p in paths:
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p + ".tmp", "w") as f:
                json.dump(doc, f, indent=1, default=str)
            os.replace(p + ".tmp", p)
        return doc

    completed = False
    try:
        runner.run(after_each_peer=save)
        completed = True
    finally:
        doc = save(final=completed)
    if args.child:
        return 1 if runner.failed else 0
    print(report.render(doc))
    print(f"results: {path}  (wall {meta['wall_s']:.0f} s)")
    if runner.failed:
        print("SOME CASES FAILED (see Problems above): exit status 1", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
