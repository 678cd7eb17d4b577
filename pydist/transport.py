"""Connections between cluster processes: framing, reader threads, sending (authentication
is handshake.py, before a Link exists; everything after it is frames, see messages.py).

Threads: each `Link` has one reading thread at a time (first `pydist-reader-<pid>`,
started by its owner), which reads frames, resolves replies and hands other frames to the
owner's callback. An incoming call runs on the reading thread itself (`run_inline`), which
reads on when the call returns; when the call waits or runs long, reading moves to another
thread first (the policy is threads.py's). Any thread may send; `_send_lock` keeps frames whole.

Latency: a thread blocked in recv on an idle CPU takes ~25 µs to wake on these machines, more
than a whole round trip costs otherwise. So in a lock-step exchange (one synchronous call at
a time: the caller's reader waits for the answer, the callee's for the next call) a reader
polls the socket for up to PYDIST_SPIN_US before it blocks (`_receive`). Only then: a link
with calls pipelined or a peer that was slow last time never polls, since the CPU it would
burn is what the other threads and processes need.
"""

from __future__ import annotations

import collections
import itertools
import logging
import socket
import struct
import threading
import time

from . import settings
from .errors import ProcessExitedException
from .replies import CallbackReply, Reply
from .shm import HANDLE_FLAG
from .sockets import BIG_BUFFER, big_buffer
from .threads import InlineCall, inline_call, runner
from .messages import HEADER, LOCKSTEP, NO_RRID, Kind

log = logging.getLogger("pydist")

_KINDS = {int(k): k for k in Kind}
_HEADER_SIZE = HEADER.size
_unpack_header = HEADER.unpack_from
_monotonic = time.monotonic
_SMALL_FRAME = 1 << 16       # frames up to this size are joined and sent with one syscall
BURST_SECONDS = 50e-6        # frames sent SOON this close together go out through a writer thread
_OUTBOX_LIMIT = 4096         # queued frames past which a sender writes (and waits) itself
SOON = "soon"                # Link.send(flush=SOON): see Link._write_soon
_MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class ProtocolError(ConnectionError):
    """An authenticated peer sent a frame that breaks the wire format."""


class Link:
    """One authenticated connection to one peer process, serving both directions.

    `on_frame(link, kind, mode, rrid, msg_id, body, buffers)` gets every frame that is not
    a reply; `on_close(link, reason)` runs once when the link is gone.

    A frame handler may run long work on the reading thread through `run_inline` (an
    incoming call) and return its result: True means another thread reads the link now."""

    def __init__(self, sock: socket.socket, on_frame, on_close, peer: int | None = None):
        self.sock = sock
        self.peer = peer
        # Receive buffer: recv_into a 64 KiB block, frames are cut out of it; big bodies and
        # buffers are received straight into their own memory. (A BufferedReader from
        # sock.makefile() measured twice the round-trip time here.)
        self._rbuf = bytearray(1 << 16)
        self._rview = memoryview(self._rbuf)
        self._start = self._end = 0
        self._on_frame = on_frame
        self._on_close = on_close
        self._send_lock = threading.Lock()      # held by the one thread writing to sock (_flush)
        self._outbox: collections.deque = collections.deque()   # frames waiting to be written
        self._pending_lock = threading.Lock()   # guards _pending and closed
        self._pending: dict[int, Reply] = {}
        self._ids = itertools.count(1)
        self.closed = False
        self.close_reason = ""
        self.exit_note = ""         # why the peer said it is leaving (process.note_exit)
        self.segments = None        # shm.Segments when the peer shares this host's shared memory
        self.last_heard = time.monotonic()
        self._reader: threading.Thread | None = None
        self._role_lock = threading.Lock()      # guards the hand-off of reading (_InlineCall)
        self._can_spin = False                  # plain blocking socket, served by _read_loop
        self._quick = False                     # the last wait for the peer was short
        self._calling_lockstep = False          # our last call had no other in flight
        self._answering_lockstep = False        # so had the peer's last call to us
        self._last_write = 0.0                  # when a frame sent SOON was last written
        self._reader_idle = False               # the reader waits in _await_request
        self._request_sent = threading.Lock()   # released by request() to wake it
        self._request_sent.acquire()
        self._writer_busy = False               # a thread runs _write_queued (_role_lock)

    # -- sending ---------------------------------------------------------------------------
    def send(self, kind: Kind, body: bytes = b"", buffers=(), mode: int = 0, rrid=NO_RRID,
             msg_id: int = 0, flush: bool | str = True) -> None:
        """Send one frame; raises ProcessExitedException if the link is gone, ValueError if
        the frame is larger than the peer accepts. flush=False queues a small frame until the
        next `flush()` or send, so a burst of frames costs one system call; flush=SOON lets
        a writer thread send it with the rest of a burst (`_write_soon`)."""
        size = len(body) + (sum(b.nbytes for b in buffers) if buffers else 0)
        if size > settings.MAX_FRAME_BYTES:
            raise ValueError(f"a message of {size} bytes to process {self.peer} exceeds the frame limit "
                             f"of {settings.MAX_FRAME_BYTES} bytes (PYDIST_MAX_FRAME_BYTES); send it in "
                             "parts, or raise the limit on every process")
        if kind is Kind.CALL and not mode & LOCKSTEP:
            self._calling_lockstep = False      # an unanswered call: no lock-step now
        if buffers and self.segments is not None and size >= settings.SHM_BYTES:
            buffers, lengths = self._share(buffers)
            size = len(body) + sum(len(b) for b in buffers)
        else:
            lengths = [b.nbytes for b in buffers] if buffers else ()
        header = HEADER.pack(kind, mode, len(buffers), rrid[0], rrid[1], msg_id, len(body))
        sizes = struct.pack(f"!{len(buffers)}Q", *lengths) if buffers else b""
        if size > _SMALL_FRAME:
            self._outbox.append((b"".join((header, sizes, body)), buffers))
            self._flush(wait=True)         # the buffers are the caller's memory: write them now
        else:
            self._outbox.append((b"".join((header, sizes, body, *buffers)), ()))
            if flush is SOON:
                self._write_soon()
            elif flush:
                self._flush(wait=False)

    def _share(self, buffers) -> tuple[list, list[int]]:
        """Buffers of SHM_BYTES or more become shared-memory segments (shm.py): the frame
        carries their names, flagged in the size field."""
        shared, lengths = [], []
        for buffer in buffers:
            handle = self.segments.export(buffer) if buffer.nbytes >= settings.SHM_BYTES else None
            if handle is None:
                shared.append(buffer)
                lengths.append(buffer.nbytes)
            else:
                shared.append(handle)
                lengths.append(len(handle) | HANDLE_FLAG)
        return shared, lengths

    def _write_soon(self) -> None:
        """Write now, unless a write happened within BURST_SECONDS: the frame then waits for
        a writer thread, which writes the whole burst in few system calls while the sender
        goes on (past _OUTBOX_LIMIT frames the sender writes itself: that is the brake)."""
        now = _monotonic()
        if now - self._last_write > BURST_SECONDS or len(self._outbox) > _OUTBOX_LIMIT:
            self._last_write = now
            self._flush(wait=len(self._outbox) > _OUTBOX_LIMIT)
            return
        self._last_write = now
        with self._role_lock:
            if self._writer_busy:
                return
            self._writer_busy = True
        runner.submit(self._write_queued)

    def _write_queued(self) -> None:
        while True:
            try:
                self._flush(wait=True)
            except ProcessExitedException:
                pass                # the link is closed; its calls fail there
            with self._role_lock:
                if not self._outbox or self.closed:
                    self._writer_busy = False
                    return

    def flush(self) -> None:
        """Write the frames queued with flush=False."""
        self._flush(wait=False)

    def _flush(self, wait: bool) -> None:
        """Write queued frames, in order, unless another thread is writing: that thread then
        writes ours too. So a thread whose send meets a full socket never blocks the others —
        a burst of answers leaves one thread waiting on the socket, not one per answer.
        wait=True returns only once our frame is written (it shares the caller's memory)."""
        outbox = self._outbox
        while outbox:
            if not self._send_lock.acquire(blocking=wait):
                return                     # the writer re-checks the outbox after releasing
            try:
                while outbox:
                    head, buffers = outbox.popleft()
                    if not buffers and outbox and not outbox[0][1]:
                        head = self._join_small(head)
                    self.sock.sendall(head)
                    for buf in buffers:
                        self.sock.sendall(buf)
            except OSError as err:
                outbox.clear()
                self.close(f"send failed: {err}")
                raise ProcessExitedException(self.peer or -1, "the connection to it is lost") from err
            finally:
                self._send_lock.release()

    def answer(self, kind: Kind, body: bytes, buffers=(), msg_id: int = 0, rrid=NO_RRID) -> None:
        """Send what a call produced (its result, error or pushed value). From a call running
        inline while the next frame already waits in the buffer, a small answer is held back
        and goes out in one write with the answers to those frames: the reader flushes before
        it waits for input, and a hand-off (threads.InlineCall) leaves it to the next reader."""
        call = inline_call()
        if call is not None and call.role_lock is self._role_lock and not buffers and self._frame_buffered():
            with self._role_lock:
                if not call.moved:
                    self.send(kind, body, msg_id=msg_id, rrid=rrid, flush=False)
                    return
        self.send(kind, body, buffers, msg_id=msg_id, rrid=rrid)

    def _frame_buffered(self) -> bool:
        """A whole frame without out-of-band buffers is in the receive buffer."""
        start, end = self._start, self._end
        if end - start < _HEADER_SIZE:
            return False
        _kind, _mode, nbuf, _w, _r, _m, size = _unpack_header(self._rbuf, start)
        return nbuf == 0 and end - start >= _HEADER_SIZE + size

    def _join_small(self, head: bytes) -> bytes:
        """`head` and the small frames queued after it, as one write (up to _SMALL_FRAME)."""
        outbox, chunks, size = self._outbox, [head], len(head)
        while outbox and not outbox[0][1] and size < _SMALL_FRAME:
            chunk = outbox.popleft()[0]
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)

    def request(self, mode: int, body: bytes, buffers, rrid=NO_RRID, flush: bool = True,
                on_done=None) -> Reply:
        """Send a CALL that will be answered; returns the Reply to wait on, or with `on_done`
        a CallbackReply that calls it. A link lost while sending fails the reply (its error
        is set, on_done runs) rather than raising. With on_done, the call's outcome reaches
        exactly one of on_done and the caller (an exception from here)."""
        reply = Reply(self.peer) if on_done is None else CallbackReply(self.peer, on_done)
        call_id = next(self._ids)
        with self._pending_lock:
            if self.closed:
                raise ProcessExitedException(self.peer, self.close_reason)
            if len(self._pending) >= settings.MAX_PENDING_CALLS:
                raise RuntimeError(f"{len(self._pending)} calls to process {self.peer} are already "
                                   "waiting for an answer (PYDIST_MAX_PENDING_CALLS); wait for some "
                                   "of them before sending more")
            self._calling_lockstep = not self._pending
            if self._calling_lockstep:
                mode |= LOCKSTEP
            self._pending[call_id] = reply
        try:
            self.send(Kind.CALL, body, buffers, mode=mode, rrid=rrid, msg_id=call_id, flush=flush)
        except BaseException as err:
            with self._pending_lock:
                unanswered = self._pending.pop(call_id, None)
            if unanswered is not None or (on_done is None and not isinstance(err, ProcessExitedException)):
                raise                       # the caller handles it: on_done will never run
            return reply                    # answered or failed meanwhile: on_done has it
        if self._reader_idle:
            try:
                self._request_sent.release()
            except RuntimeError:
                pass                        # already signalled
        return reply

    def abandon(self, reply: Reply) -> None:
        """The caller stopped waiting for `reply` (a timeout): its late answer is dropped, and
        it no longer counts as a call in flight (lock-step, MAX_PENDING_CALLS)."""
        with self._pending_lock:
            for call_id, pending in self._pending.items():
                if pending is reply:
                    del self._pending[call_id]
                    return

    # -- receiving -------------------------------------------------------------------------
    def read_frame(self):
        """Read one frame: (kind, mode, rrid, msg_id, body, buffers). Raises on bad input."""
        if self._end - self._start < _HEADER_SIZE:
            self._fill(_HEADER_SIZE)
        kind, mode, nbuf, whence, rid, msg_id, size = _unpack_header(self._rbuf, self._start)
        self._start += _HEADER_SIZE
        kind = _KINDS.get(kind)
        if kind is None:
            raise ProtocolError("unknown message kind")
        if nbuf:
            if nbuf > settings.MAX_BUFFERS:
                raise ProtocolError(f"{nbuf} buffers in one frame (limit {settings.MAX_BUFFERS})")
            sizes = flagged = struct.unpack(f"!{nbuf}Q", self._read(8 * nbuf))
            shared = max(sizes) & HANDLE_FLAG
            if shared:
                sizes = tuple(n & ~HANDLE_FLAG for n in sizes)
            total = size + sum(sizes)
        else:
            sizes = flagged = ()
            total, shared = size, 0
        if total > settings.MAX_FRAME_BYTES:
            raise ProtocolError(f"a frame of {total} bytes exceeds PYDIST_MAX_FRAME_BYTES="
                                f"{settings.MAX_FRAME_BYTES}")
        body = self._read(size)
        buffers = [self._read(n) for n in sizes] if sizes else []
        if shared:
            self._attach(buffers, flagged)
        self.last_heard = _monotonic()
        return kind, mode, (whence, rid), msg_id, body, buffers

    def _attach(self, buffers: list, flagged: tuple) -> None:
        """Replace the shared-memory names among `buffers` by the memory they name."""
        if self.segments is None:
            raise ProtocolError("a shared-memory segment on a link that shares no memory")
        for i, size in enumerate(flagged):
            if size & HANDLE_FLAG:
                try:
                    buffers[i] = self.segments.attach(bytes(buffers[i]))
                except (OSError, ValueError) as err:
                    raise ProtocolError(f"shared-memory segment: {err}") from err

    def _read(self, n: int) -> bytearray:
        start = self._start
        if n > self._end - start:
            if n > len(self._rbuf):
                return self._read_big(n)
            self._fill(n)
            start = self._start
        self._start = start + n
        return self._rbuf[start:start + n]

    def _fill(self, n: int) -> None:
        """Receive until at least n bytes (at most the block's size) are buffered."""
        start, end = self._start, self._end
        if start:                               # move the partial frame to the front
            self._rbuf[:end - start] = self._rbuf[start:end]
            self._start, self._end = 0, end - start
        while self._end < n:
            self._end += self._receive(self._rview[self._end:])

    def _receive(self, view) -> int:
        """recv_into `view`; polls first for up to SPIN_SECONDS if the peer is quick. Answers
        held back (`answer`) are written first: nothing more will join them."""
        if self._outbox:
            self._flush(wait=False)
        sock = self.sock
        if self._quick and (self._answering_lockstep or
                            (self._calling_lockstep and len(self._pending) <= 1)):
            if not self._pending and not self._answering_lockstep:
                self._await_request()       # the caller needs the GIL first, to send it
            deadline = _monotonic() + settings.SPIN_SECONDS
            while True:
                try:
                    k = sock.recv_into(view, 0, _MSG_DONTWAIT)
                except BlockingIOError:
                    if _monotonic() < deadline:
                        continue
                    self._quick = False         # missed: block, and poll again once quick
                    break
                if not k:
                    raise EOFError("connection closed")
                return k
        began = _monotonic()
        k = sock.recv_into(view)
        if not k:
            raise EOFError("connection closed")
        if self._can_spin:
            self._quick = _monotonic() - began < settings.SPIN_SECONDS
        return k

    def _await_request(self) -> None:
        """Between a lock-step answer and the next call, sleep (without the GIL) until the
        caller has sent that call, or SPIN_SECONDS pass. Polling meanwhile would keep the
        GIL from the very thread that must run to send it."""
        signal = self._request_sent
        signal.acquire(blocking=False)          # a stale signal from an earlier call
        self._reader_idle = True
        if not self._pending:
            signal.acquire(timeout=settings.SPIN_SECONDS)
        self._reader_idle = False

    def _read_big(self, n: int):
        """A body or buffer larger than the block: received straight into its own memory."""
        out = big_buffer(n) if n >= BIG_BUFFER else bytearray(n)
        view = memoryview(out)
        got = self._end - self._start
        view[:got] = self._rview[self._start:self._end]
        self._start = self._end = 0
        while got < n:
            got += self._receive(view[got:])
        return out

    # -- the reading thread ----------------------------------------------------------------
    def start(self, name: str) -> None:
        """Start the reader thread; the link then serves frames until it closes."""
        self._can_spin = (settings.SPIN_SECONDS > 0 and bool(_MSG_DONTWAIT)
                          and type(self.sock) is socket.socket and self.sock.gettimeout() is None)
        self._reader = threading.Thread(target=self._read_loop, name=name, daemon=True)
        self._reader.start()

    def run_inline(self, fn, *args) -> bool:
        """Run fn(*args) on this reading thread, which reads on afterwards: a quick call
        costs no thread switch. Returns True if reading moved to another thread meanwhile
        (the call waited in pydist, or ran long: threads.py); this thread must then stop
        reading. Exceptions from fn are logged, not raised."""
        call = InlineCall(self._role_lock, self._read_elsewhere)
        call.begin()
        try:
            fn(*args)
        except BaseException:
            log.exception("pydist: a call on the link to process %s failed", self.peer)
        finally:
            moved = call.end()
        return moved

    def _read_elsewhere(self) -> None:
        """A call running on this link's reader waits or runs long: another thread reads."""
        self._answering_lockstep = False    # the next reader must not poll while this call runs
        runner.submit(self._read_loop)

    def _read_loop(self) -> None:
        reason = "closed"
        try:
            if self._outbox:
                self._flush(wait=False)     # answers held by the call that handed reading off
            while True:
                kind, mode, rrid, msg_id, body, buffers = self.read_frame()
                if kind is Kind.RESULT or kind is Kind.ERROR:
                    with self._pending_lock:
                        reply = self._pending.pop(msg_id, None)
                    if reply is not None:
                        reply.set(kind, body, buffers)
                elif kind is Kind.PING:
                    self.send(Kind.PONG)
                elif kind is Kind.PONG:
                    pass
                elif kind is Kind.SHM_FREE:
                    if self.segments is not None:
                        self.segments.released(body)
                else:
                    if kind is Kind.CALL:
                        self._answering_lockstep = bool(mode & LOCKSTEP)
                        mode &= ~LOCKSTEP
                    try:
                        if self._on_frame(self, kind, mode, rrid, msg_id, body, buffers):
                            reason = None   # another thread reads this link now
                            return
                    except (ProtocolError, ProcessExitedException):
                        raise
                    except Exception:
                        log.exception("pydist: handling a %s frame from process %s failed",
                                      kind.name, self.peer)
        except ProtocolError as err:
            reason = f"protocol error: {err}"
            log.warning("pydist: closing the link to process %s: %s", self.peer, err)
        except (OSError, EOFError, ValueError, ProcessExitedException) as err:
            reason = f"connection lost ({err or type(err).__name__})"
        except BaseException as err:
            reason = f"reader failed ({type(err).__name__}: {err})"
            raise
        finally:
            if reason is not None:
                self.close(reason)

    # -- closing ---------------------------------------------------------------------------
    def close(self, reason: str = "closed") -> None:
        """Close the link once: fail its pending calls, then tell the owner."""
        with self._pending_lock:
            if self.closed:
                return
            self.closed = True
            if self.exit_note:
                reason = self.exit_note
            self.close_reason = reason
            pending, self._pending = self._pending, {}
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        for reply in pending.values():
            reply.set(None, None, None, ProcessExitedException(self.peer, reason))
        if self.segments is not None:
            self.segments.close()
        self._on_close(self, reason)
