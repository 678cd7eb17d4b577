"""Bad input on a real worker's port: the connection is closed, the worker keeps serving.

A payload that would create a file when unpickled proves that nothing is unpickled before
the peer has authenticated."""

import hashlib
import hmac
import os
import pickle
import socket
import sys

import pytest

from pydist import cluster_cookie, remotecall_fetch
from pydist.messages import HEADER, Kind
from pydist.process import STATE
from pydist.handshake import HELLO, MAGIC, PROTOCOL_VERSION, HandshakeError, handshake


def worker_address(pid):
    info = STATE.members[pid]
    return info.host, info.port


class WriteFile:
    """Unpickling this creates a file: proof of code execution."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def send_and_close(address, data: bytes) -> bytes:
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(data)
        sock.settimeout(5)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (ConnectionResetError, socket.timeout):
            pass
        return received


def assert_still_serves(pid):
    assert remotecall_fetch(lambda: 40 + 2, pid) == 42


def test_pickle_sent_before_authentication_is_never_unpickled(cluster, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(WriteFile(str(marker)))
    send_and_close(worker_address(cluster[0]), payload)
    frame = HEADER.pack(Kind.CALL, 0, 0, 0, 0, 1, len(payload)) + payload
    send_and_close(worker_address(cluster[0]), frame)
    assert not marker.exists()
    assert_still_serves(cluster[0])


@pytest.mark.parametrize("garbage", [b"", b"GET / HTTP/1.1\r\n\r\n", os.urandom(4096), b"\x00" * 42])
def test_garbage_on_a_worker_port_is_refused(cluster, garbage):
    send_and_close(worker_address(cluster[0]), garbage)
    assert_still_serves(cluster[0])


def test_wrong_cookie_is_refused_and_the_worker_keeps_serving(cluster):
    with socket.create_connection(worker_address(cluster[1]), timeout=5) as sock:
        with pytest.raises(HandshakeError):
            handshake(sock, "not-the-cookie", dialer=True)
    assert_still_serves(cluster[1])


def test_version_mismatch_is_refused_naming_both_versions(cluster):
    with socket.create_connection(worker_address(cluster[0]), timeout=5) as sock:
        sock.sendall(HELLO.pack(MAGIC, PROTOCOL_VERSION + 1, 3, 99, os.urandom(32)))
        reply = sock.recv(HELLO.size)
    assert reply[:6] == MAGIC
    _, protocol, major, minor, _ = HELLO.unpack(reply)
    assert (protocol, major, minor) == (PROTOCOL_VERSION, *sys.version_info[:2])
    assert_still_serves(cluster[0])


def authenticated_socket(pid):
    sock = socket.create_connection(worker_address(pid), timeout=5)
    handshake(sock, cluster_cookie(), dialer=True)
    return sock


@pytest.mark.parametrize("frame", [
    HEADER.pack(Kind.IDENT, 0, 0, 0, 0, 0, 2**62),          # oversized length
    HEADER.pack(Kind.IDENT, 0, 60000, 0, 0, 0, 10),          # too many buffers
    HEADER.pack(99, 0, 0, 0, 0, 0, 0),                       # unknown kind
    HEADER.pack(Kind.IDENT, 0, 0, 0, 0, 0, 100) + b"short",  # truncated frame
    HEADER.pack(Kind.IDENT, 0, 0, 0, 0, 0, 5) + b"\x80\x05junk",  # body that is not a pickle
])
def test_bad_frames_from_an_authenticated_peer_close_that_link_only(cluster, frame):
    sock = authenticated_socket(cluster[0])
    sock.sendall(frame)
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(5)
    assert sock.recv(100) == b""          # the worker closed this connection
    sock.close()
    assert_still_serves(cluster[0])


def test_a_silent_client_does_not_block_the_listener(cluster):
    idle = socket.create_connection(worker_address(cluster[0]), timeout=5)
    try:
        other = authenticated_socket(cluster[0])
        other.close()
        assert_still_serves(cluster[0])
    finally:
        idle.close()


def test_handshake_macs_depend_on_both_nonces_and_the_role():
    key = b"k"
    from pydist.handshake import _mac
    assert _mac(key, b"A", b"1", b"2") != _mac(key, b"D", b"1", b"2")
    assert _mac(key, b"A", b"1", b"2") != _mac(key, b"A", b"2", b"1")
    assert _mac(key, b"A", b"1", b"2") == hmac.new(key, b"A12", hashlib.sha256).digest()


def test_empty_cookie_is_refused():
    with pytest.raises(ValueError):
        cluster_cookie("")


def test_the_cookie_is_not_on_the_worker_command_line(cluster):
    ospid = remotecall_fetch(os.getpid, cluster[0])
    cmdline = open(f"/proc/{ospid}/cmdline", "rb").read().decode()
    environ = open(f"/proc/{ospid}/environ", "rb").read().decode(errors="replace")
    assert cluster_cookie() not in cmdline and cluster_cookie() not in environ


def test_worker_id_from_socket(cluster):
    from pydist import worker_id_from_socket
    link = STATE.links[cluster[0]]
    assert worker_id_from_socket(link.sock) == cluster[0]
    with socket.socket() as stranger:
        assert worker_id_from_socket(stranger) == -1
