"""The worker of the bare-socket floor: a plain loop over one TCP connection.

Started as a script (``python _bare_worker.py PORT``, standard library only
until it is asked for an array) so that its start-up is the floor too.

Frames are a 9-byte header ``!BQ`` (op, arg):
  PING id      -> PING id                    (latency: a few bytes each way)
  PREP L       -> PREP L                     (untimed: allocate an L-byte buffer, make the L-byte array)
  RECV L, data -> RECV L + first 8 + last 8  (bigdata to the worker: recv_into the buffer)
  SEND L       -> SEND L, data               (bigdata back: sendall the array's bytes)
  DROP         -> DROP                       (free the buffers)
  EXIT         -> (closes)
"""

import os
import socket
import struct
import sys

HDR = struct.Struct("!BQ")
EXIT, PING, PREP, RECV, SEND, DROP, HELLO = range(7)


def recv_exactly(sock, view):
    pos, n = 0, len(view)
    while pos < n:
        got = sock.recv_into(view[pos:])
        if not got:
            raise ConnectionError("master closed the connection")
        pos += got


def main(port: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(HDR.pack(HELLO, os.getpid()))
    hbuf = bytearray(HDR.size)
    hview = memoryview(hbuf)
    buf = out = None
    while True:
        recv_exactly(sock, hview)
        op, arg = HDR.unpack(hbuf)
        if op == PING:
            sock.sendall(hbuf)
        elif op == PREP:
            import numpy as np  # only the bigdata floor needs it

            buf = bytearray(arg)
            out = memoryview(np.arange(arg // 8, dtype=np.float64)).cast("B")
            sock.sendall(hbuf)
        elif op == RECV:
            view = memoryview(buf)[:arg]
            recv_exactly(sock, view)
            sock.sendall(hbuf + bytes(view[:8]) + bytes(view[arg - 8:arg]))
        elif op == SEND:
            sock.sendall(hbuf)
            sock.sendall(out[:arg])
        elif op == DROP:
            buf = out = None
            sock.sendall(hbuf)
        elif op == EXIT:
            break
        else:
            raise SystemExit(f"bare worker: unknown op {op}")
    sock.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
