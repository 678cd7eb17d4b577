"""Sockets between cluster processes: listening, accepting, dialing, tuning for latency, and the
memory that large received frames land in (transport.Link does the framing on top)."""

from __future__ import annotations

import mmap
import socket
import threading

from . import settings


def _return_big_buffers_to_the_system() -> None:
    """Received bodies and buffers of 1 MiB or more get memory of their own (mmap), which
    goes back to the system when freed. Without it glibc raises its mmap threshold after the
    first large frees, serves the next large buffers from the heap, and a process that moved
    gigabytes keeps hundreds of MB it no longer uses (measured in the soak run)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)     # M_MMAP_THRESHOLD, fixed
    except (OSError, AttributeError):
        pass                                              # not glibc: nothing to tune


_return_big_buffers_to_the_system()

BIG_BUFFER = 2 << 20        # received bodies and buffers this large get huge-page memory


def big_buffer(n: int):
    """Writable memory for a large received buffer (it becomes, say, a numpy array's).
    Anonymous mmap with transparent huge pages: the kernel zero-fills it in 2 MiB faults
    instead of 4 KiB ones, 100 MB in ~15 ms here instead of ~70 ms for a bytearray."""
    memory = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        memory.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):
        pass
    return memory


def open_listener(host: str, port: int = 0) -> socket.socket:
    """A listening TCP socket on host:port (port 0 picks a free one); IPv6 hosts work too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def serve(listener: socket.socket, on_socket, name: str) -> threading.Thread:
    """Accept connections on a thread of their own; each one is handed to `on_socket` on a
    new thread, so a slow or silent client never delays the next one."""

    def accept_loop():
        while True:
            try:
                sock, addr = listener.accept()
            except OSError:
                return                      # listener closed
            tune(sock)
            threading.Thread(target=on_socket, args=(sock, addr), daemon=True,
                             name=f"{name}-handshake").start()

    thread = threading.Thread(target=accept_loop, name=name, daemon=True)
    thread.start()
    return thread


def dial(host: str, port: int, timeout: float = settings.HANDSHAKE_TIMEOUT) -> socket.socket:
    """Open a TCP connection to host:port, tuned for small-message latency."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    tune(sock)
    return sock


def tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
