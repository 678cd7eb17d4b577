"""The floor: bare loopback TCP between two processes, no serialisation, no framework.

Latency has two rows: one thread that sends a few bytes and receives the reply
(the absolute floor), and the shape a real master needs (a caller thread sends,
a reader thread receives and wakes the caller through a Lock it holds).
Bigdata is a raw copy: ``sendall`` of the array's bytes, ``recv_into`` a
preallocated buffer, each way.  There is no map and no fanout here.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading

from bench.common import BenchError, CaseSkipped, check
from bench.peers._bare_worker import DROP, EXIT, HDR, HELLO, PING, PREP, RECV, SEND, recv_exactly
from bench.peers.base import Handle

NAME = "bare_socket"
DISTRIBUTIONS = []

_WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bare_worker.py")


class _Waiter:
    """A one-shot future: the caller blocks on a held Lock, the reader releases it."""

    __slots__ = ("lock", "value")

    def __init__(self):
        self.lock = threading.Lock()
        self.lock.acquire()
        self.value = None


class BareHandle(Handle):
    peer = NAME
    bigdata_label = "sendall / recv_into preallocated"

    def __init__(self, n: int):
        super().__init__(n)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(n)
        port = lsock.getsockname()[1]
        self.procs = [subprocess.Popen([sys.executable, _WORKER, str(port)]) for _ in range(n)]
        self.socks, self.pids = [], []
        lsock.settimeout(60)
        hbuf = bytearray(HDR.size)
        try:
            for _ in range(n):
                s, _addr = lsock.accept()
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                recv_exactly(s, memoryview(hbuf))
                op, pid = HDR.unpack(hbuf)
                check(op == HELLO, f"bare_socket: bad hello {op}")
                self.socks.append(s)
                self.pids.append(pid)
        finally:
            lsock.close()
        self._hbuf = bytearray(HDR.size)
        self._reader = None
        self._pending: dict[int, _Waiter] = {}
        self._pending_lock = threading.Lock()  # guards _pending
        self._ids = itertools.count(1)
        self._recvbuf = None

    # -- plain request/response on one socket, one thread ------------------
    def _rpc(self, i, op, arg):
        s = self.socks[i]
        s.sendall(HDR.pack(op, arg))
        recv_exactly(s, memoryview(self._hbuf))
        rop, rarg = HDR.unpack(self._hbuf)
        check(rop == op and rarg == arg, f"bare_socket: reply {(rop, rarg)} to {(op, arg)}")

    def ping(self, i=0):
        self._rpc(i, PING, 12345)
        return 0

    # -- caller thread + reader thread ---------------------------------------
    def _reader_loop(self, s):
        hbuf = bytearray(HDR.size)
        view = memoryview(hbuf)
        try:
            while True:
                recv_exactly(s, view)
                _op, rid = HDR.unpack(hbuf)
                with self._pending_lock:
                    w = self._pending.pop(rid)
                w.value = rid
                w.lock.release()
        except (ConnectionError, OSError):
            return

    def ping_threaded(self):
        i = self.n - 1  # its own worker and connection: the reader thread owns that socket
        if self._reader is None:
            self._reader = threading.Thread(target=self._reader_loop, args=(self.socks[i],),
                                            name="bare-reader", daemon=True)
            self._reader.start()
        rid = next(self._ids)
        w = _Waiter()
        with self._pending_lock:
            self._pending[rid] = w
        self.socks[i].sendall(HDR.pack(PING, rid))
        w.lock.acquire()
        return w.value - rid  # 0 when the reply is the one to this request

    def latency_variants(self):
        if self.n < 2:
            raise BenchError("bare_socket needs 2 workers (one per latency variant)")
        return {
            "sendall + recv_into, one thread": self.ping,
            "caller + reader thread, Lock-woken": self.ping_threaded,
        }

    # -- interface -----------------------------------------------------------
    def call(self, i, f, *args):
        raise CaseSkipped("the floor runs no Python functions")

    def ready(self):
        for i in range(self.n):
            self.ping(i)
        return list(self.pids)

    def worker_pids(self):
        return list(self.pids)

    def prepare_bigdata(self, a):
        self._nbytes = a.nbytes
        self._recvbuf = bytearray(a.nbytes)
        self._rpc(0, PREP, a.nbytes)

    def finish_bigdata(self):
        self._rpc(0, DROP, 0)
        self._recvbuf = None

    def send_array(self, a):
        s = self.socks[0]
        data = memoryview(a).cast("B")
        s.sendall(HDR.pack(RECV, data.nbytes))
        s.sendall(data)
        reply = bytearray(HDR.size + 16)
        recv_exactly(s, memoryview(reply))
        return bytes(reply)

    def verify_send(self, a, expected_sum, result):
        data = memoryview(a).cast("B")
        want = HDR.pack(RECV, data.nbytes) + bytes(data[:8]) + bytes(data[-8:])
        check(result == want, "bare_socket: the worker did not receive the array intact")

    def get_array(self, n):
        import numpy as np

        nbytes = n * 8
        check(self._recvbuf is not None and len(self._recvbuf) == nbytes, "bare_socket: no buffer")
        s = self.socks[0]
        s.sendall(HDR.pack(SEND, nbytes))
        recv_exactly(s, memoryview(self._hbuf))
        check(HDR.unpack(self._hbuf) == (SEND, nbytes), "bare_socket: bad SEND reply")
        recv_exactly(s, memoryview(self._recvbuf))
        return np.frombuffer(self._recvbuf, dtype=np.float64)

    def stop(self):
        for s in self.socks:
            try:
                s.sendall(HDR.pack(EXIT, 0))
            except OSError:
                pass
        for p in self.procs:
            p.wait(timeout=30)
        for s in self.socks:
            s.close()
        self.socks = []


def start(n: int) -> BareHandle:
    return BareHandle(n)
