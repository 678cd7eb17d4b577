"""Generated bad input against a real listening worker (hypothesis).

PYDIST_FUZZ_EXAMPLES inputs per target (default 500 each for CI; the reliability report runs
10,000). The worker must never crash or hang, never unpickle before authentication, and
keep serving real calls throughout."""

import os
import pickle
import socket

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from conftest import remove_all_workers  # noqa: E402
from pydist import addprocs, cluster_cookie, remotecall_fetch  # noqa: E402
from pydist.messages import HEADER, Kind  # noqa: E402
from pydist.process import STATE  # noqa: E402
from pydist.handshake import HELLO, MAGIC, handshake  # noqa: E402

EXAMPLES = int(os.environ.get("PYDIST_FUZZ_EXAMPLES", "500"))
MARKER = "/tmp/pydist-fuzz-pwned"


class _Pwn:
    def __reduce__(self):
        return (open, (MARKER, "w"))


PWN = pickle.dumps(_Pwn())


@pytest.fixture(scope="module")
def target():
    remove_all_workers()
    if os.path.exists(MARKER):
        os.remove(MARKER)
    [pid] = addprocs(1)
    info = STATE.members[pid]
    yield pid, (info.host, info.port)
    remove_all_workers()


def _exchange(address, data: bytes, authenticate: bool) -> None:
    with socket.create_connection(address, timeout=5) as sock:
        if authenticate:
            handshake(sock, cluster_cookie(), dialer=True)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            while sock.recv(65536):
                pass
        except OSError:          # the worker hung up first: that is the point
            pass


class _Checks:
    count = 0


def _still_serving(pid):
    _Checks.count += 1
    if _Checks.count % 100 == 0:
        assert remotecall_fetch(abs, pid, -7) == 7


hello_like = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda tail: MAGIC + tail, st.binary(max_size=80)),
    st.builds(lambda proto, major, minor, nonce: HELLO.pack(MAGIC, proto, major, minor, nonce) + PWN,
              st.integers(0, 65535), st.integers(0, 255), st.integers(0, 255), st.binary(min_size=32, max_size=32)),
    st.just(PWN),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=hello_like)
def test_handshake_fuzz(target, data):
    pid, address = target
    _exchange(address, data, authenticate=False)
    _still_serving(pid)
    assert not os.path.exists(MARKER)


frames = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda kind, mode, nbuf, w, r, m, size, tail: HEADER.pack(kind, mode, nbuf, w, r, m, size) + tail,
              st.integers(0, 255), st.integers(0, 255), st.integers(0, 65535),
              st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
              st.integers(0, 2**64 - 1), st.binary(max_size=100)),
    st.builds(lambda kind, body: HEADER.pack(kind, 0, 0, 0, 0, 1, len(body)) + body,
              st.sampled_from([int(k) for k in Kind]), st.binary(max_size=200)),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=frames)
def test_frame_parser_fuzz_after_authentication(target, data):
    pid, address = target
    _exchange(address, data, authenticate=True)
    _still_serving(pid)


def test_worker_survived_the_fuzz(target):
    pid, _ = target
    assert remotecall_fetch(abs, pid, -1) == 1
    assert not os.path.exists(MARKER)
