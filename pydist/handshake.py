"""The handshake that opens every connection between cluster processes, before any byte is
unpickled (the cookie itself never crosses the wire):

    dialer   -> acceptor   HELLO  = "PYDIST" | protocol u16 | python major u8, minor u8 | nonce_d
    acceptor -> dialer     HELLO  (with nonce_a) | HMAC(cookie, "A" | nonce_d | nonce_a)
    dialer   -> acceptor   HMAC(cookie, "D" | nonce_a | nonce_d)
    acceptor -> dialer     b"K"

Each side proves it knows the cookie over the other side's fresh nonce; the role letter
stops a reflected answer from counting. A peer with other protocol or Python versions is
refused with both versions named.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import struct
import sys

from . import settings

PROTOCOL_VERSION = 3           # 2: the LOCKSTEP flag in a CALL's mode byte; 3: lanes (calls.py)
MAGIC = b"PYDIST"
HELLO = struct.Struct("!6sHBB32s")
MAC_SIZE = 32
ACCEPTED = b"K"


class HandshakeError(ConnectionError):
    """The peer is not a pydist process of this cluster (wrong cookie, garbage, other version)."""


def _versions(protocol: int, major: int, minor: int) -> str:
    return f"pydist protocol {protocol}, Python {major}.{minor}"


def handshake(sock: socket.socket, cookie: str, dialer: bool) -> None:
    """Authenticate both ends of `sock` with the cluster cookie; raise HandshakeError if not.

    Blocks at most HANDSHAKE_TIMEOUT seconds."""
    key = cookie.encode()
    nonce = os.urandom(32)
    mine = HELLO.pack(MAGIC, PROTOCOL_VERSION, sys.version_info[0], sys.version_info[1], nonce)
    old_timeout = sock.gettimeout()
    sock.settimeout(settings.HANDSHAKE_TIMEOUT)
    try:
        if dialer:
            sock.sendall(mine)
            theirs = _check_hello(_recv_exact(sock, HELLO.size))
            mac = _recv_exact(sock, MAC_SIZE)
            if not hmac.compare_digest(mac, _mac(key, b"A", nonce, theirs)):
                raise HandshakeError("the peer failed authentication: it holds another cluster cookie")
            sock.sendall(_mac(key, b"D", theirs, nonce))
            if _recv_exact(sock, 1) != ACCEPTED:
                raise HandshakeError("the peer refused our authentication")
        else:
            hello = _recv_exact(sock, HELLO.size)
            theirs = _check_hello(hello, answer=lambda: sock.sendall(mine + bytes(MAC_SIZE)))
            sock.sendall(mine + _mac(key, b"A", theirs, nonce))
            mac = _recv_exact(sock, MAC_SIZE)
            if not hmac.compare_digest(mac, _mac(key, b"D", nonce, theirs)):
                raise HandshakeError("wrong cluster cookie")
            sock.sendall(ACCEPTED)
    except socket.timeout as err:
        raise HandshakeError(f"no handshake within {settings.HANDSHAKE_TIMEOUT:.0f} s") from err
    except EOFError as err:
        raise HandshakeError("the peer closed the connection during the handshake") from err
    finally:
        try:
            sock.settimeout(old_timeout)
        except OSError:
            pass


def _check_hello(data: bytes, answer=None) -> bytes:
    magic, protocol, major, minor, nonce = HELLO.unpack(data)
    if magic != MAGIC:
        raise HandshakeError(f"not a pydist peer (first bytes {data[:8]!r})")
    if (protocol, major, minor) != (PROTOCOL_VERSION, *sys.version_info[:2]):
        if answer is not None:      # let the dialer see our versions and report both
            try:
                answer()
            except OSError:
                pass
        raise HandshakeError(f"version mismatch: the peer speaks {_versions(protocol, major, minor)}, "
                             f"this process {_versions(PROTOCOL_VERSION, *sys.version_info[:2])}; "
                             "install the same pydist and Python minor version on every host")
    return nonce


def _mac(key: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(key, role + first + second, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return bytes(data)
