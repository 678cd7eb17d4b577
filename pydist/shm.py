"""Large out-of-band buffers through shared memory between processes on one host.

Between two processes that see the same shared-memory file system (`/dev/shm` of one boot:
the master and its local workers, workers on one machine, containers started with
`--ipc=host`), a pickle protocol-5 buffer of SHM_BYTES or more does not cross the socket.
The sender copies it into a free slot of an arena, a file of that file system which both
processes map, and sends the slot's place (arena name, offset, length) in the buffer's
stead; the receiver maps just that slot and hands it to pickle, so a numpy array is rebuilt
over the sender's copy with no copy of its own. When the receiver's last reference to the
slot goes (the array is freed), it tells the sender (SHM_FREE), which reuses the slot.
One copy instead of the socket's two, no wake-up per 64 KiB, and no page faults once the
arena's pages exist: on a VM a fresh 4 KiB page costs ~10 µs, which made a segment per
message slower than the socket.

Lifetime.  The receiver removes an arena's name as soon as it has opened it, so the memory
lives exactly as long as both ends keep it mapped and the kernel frees it when they close it
or die. A name can outlive its use only while the receiver has not opened it yet; each name
says which cluster, sender and receiver it is for (`pydist-<cluster>-<from>-<to>-<n>`), and
a process that learns that a peer has gone removes the names between itself and that peer
(`forget`); a worker that loses its master removes every name of its cluster
(`forget_cluster`) before it exits.

Trust.  A place is only read from an authenticated link, must name an arena the link's peer
may send to this process, is opened without following links, must be a file of this user's
and must lie inside it; anything else is a protocol error on that link. Arenas are reserved
with posix_fallocate, so a full file system is an error at that point (the sender then falls
back to the socket and says so once), never a SIGBUS while copying.
"""

from __future__ import annotations

import bisect
import glob
import itertools
import logging
import mmap
import os
import queue
import struct
import threading
import weakref

from . import settings

log = logging.getLogger("pydist")

# A buffer's size field with this bit set carries a slot's place instead of the buffer.
HANDLE_FLAG = 1 << 63
# A new arena holds at least this much (more for a bigger buffer): big enough that a stream
# of large arrays reuses a few arenas, small enough to reserve without noticing.
ARENA_BYTES = 64 << 20
# One link's arenas hold at most this much in all; past it buffers go through the socket.
LINK_LIMIT = 4 << 30
# Arenas wholly free are kept for reuse up to this much per link; past it they are dropped
# (the memory a burst of big arrays took goes back to the system once they are freed).
KEEP_BYTES = 256 << 20
PAGE = mmap.PAGESIZE
_PLACE = struct.Struct("!IQQ")           # arena number, offset, length
_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)    # map every page at once, not per fault


def host_identity(directory: str | None = None) -> str:
    """What two processes must share to exchange buffers this way: this boot, the same file
    system at the arena directory, and the user. "" when there is none (not Linux)."""
    directory = directory or settings.SHM_DIR
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        st = os.stat(directory)
    except OSError:
        return ""
    return f"{boot}:{st.st_dev}:{st.st_ino}:{os.geteuid()}"     # another user cannot open ours


class _Arena:
    """A file both ends map; the sender hands out page-aligned slots of it."""

    def __init__(self, number: int, path: str, size: int):
        self.number, self.path, self.size = number, path, size
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)       # ENOSPC now, not SIGBUS when copying
            self.memory = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        os.close(fd)
        self.free = [(0, size)]                   # (offset, length), sorted by offset

    def take(self, n: int) -> int | None:
        for i, (offset, length) in enumerate(self.free):
            if length >= n:
                self.free[i:i + 1] = [(offset + n, length - n)] if length > n else []
                return offset
        return None

    def give_back(self, offset: int, n: int) -> None:
        i = bisect.bisect(self.free, (offset, 0))
        self.free.insert(i, (offset, n))
        if i + 1 < len(self.free) and offset + n == self.free[i + 1][0]:      # join the next
            self.free[i:i + 2] = [(offset, n + self.free[i + 1][1])]
        if i and self.free[i - 1][0] + self.free[i - 1][1] == offset:         # and the one before
            self.free[i - 1:i + 1] = [(self.free[i - 1][0], self.free[i - 1][1] + self.free[i][1])]


class Segments:
    """Shared memory on one link between process `me` and process `peer`: the arenas this
    side sends from, and the peer's arenas this side receives from."""

    def __init__(self, cluster_id: str, me: int, peer: int, directory: str | None = None):
        self.directory = directory or settings.SHM_DIR
        self.prefix = f"pydist-{cluster_id}-{me}-{peer}-"           # the arenas we send from
        self.peer_prefix = f"pydist-{cluster_id}-{peer}-{me}-"      # those the peer sends from
        self.numbers = itertools.count(1)
        self.lock = threading.Lock()     # guards arenas and every arena's free list
        self.arenas: dict[int, _Arena] = {}
        self.received: dict[int, int] = {}       # the peer's arena number -> our descriptor
        self.failed = False              # the file system refused once: said so already
        self.closed = False
        self.link = None                 # set by the link: where SHM_FREE notes go
        _start_sender()                  # now, not from a finalizer (see _release_later)

    # -- sending -----------------------------------------------------------------------------
    def export(self, buffer: memoryview) -> bytes | None:
        """Copy `buffer` into a free slot; its place, or None to send it on the socket."""
        data = buffer.cast("B") if buffer.format != "B" or buffer.ndim != 1 else buffer
        n = -(-len(data) // PAGE) * PAGE
        with self.lock:
            arena, offset = self._slot(n)
        if arena is None:
            return None
        arena.memory[offset:offset + len(data)] = data
        return _PLACE.pack(arena.number, offset, len(data))

    def _slot(self, n: int) -> tuple[_Arena | None, int]:
        for arena in self.arenas.values():
            offset = arena.take(n)
            if offset is not None:
                return arena, offset
        if self.closed or sum(a.size for a in self.arenas.values()) + n > LINK_LIMIT:
            return None, 0
        number = next(self.numbers)
        try:
            arena = _Arena(number, os.path.join(self.directory, f"{self.prefix}{number}"),
                           max(n, ARENA_BYTES))
        except OSError as err:
            if not self.failed:
                self.failed = True
                log.warning("pydist: shared memory in %s refused %d bytes (%s); large buffers go "
                            "through the socket instead", self.directory, n, err)
            return None, 0
        self.arenas[number] = arena
        return arena, arena.take(n)

    def released(self, body: bytes) -> None:
        """The peer's SHM_FREE: slots of our arenas it let go of (reused from now on), or
        (number, 0, 0): its arena `number` is dropped, close our descriptor of it."""
        dropped, closing = [], []
        with self.lock:
            for number, offset, length in _PLACE.iter_unpack(body):
                if not length:
                    fd = self.received.pop(number, None)
                    if fd is not None:
                        closing.append(fd)
                    continue
                arena = self.arenas.get(number)
                if arena is None:
                    continue
                arena.give_back(offset, -(-length // PAGE) * PAGE)
                idle = [a for a in self.arenas.values() if a.free == [(0, a.size)]]
                if arena.free == [(0, arena.size)] and sum(a.size for a in idle) > KEEP_BYTES:
                    dropped.append(self.arenas.pop(number))
        for fd in closing:
            os.close(fd)
        for arena in dropped:
            arena.memory.close()
            _unlink(arena.path)
        if dropped and self.link is not None:
            from .messages import Kind
            try:
                self.link.send(Kind.SHM_FREE, b"".join(_PLACE.pack(a.number, 0, 0) for a in dropped))
            except Exception:
                pass            # the peer is gone: its descriptors went with it

    # -- receiving ---------------------------------------------------------------------------
    def attach(self, place: bytes) -> mmap.mmap:
        """Map the slot at `place` (sent by the peer); the peer may reuse it once the mapping
        is freed. Raises ValueError for a place the peer may not send, OSError if it is gone."""
        if len(place) != _PLACE.size:
            raise ValueError(f"a shared-memory place of {len(place)} bytes")
        number, offset, length = _PLACE.unpack(place)
        fd = self.received.get(number)
        if fd is None:
            fd = self._open(number)
        if offset % PAGE or offset + length > os.fstat(fd).st_size or not length:
            raise ValueError(f"slot {offset}+{length} lies outside arena {number}")
        memory = mmap.mmap(fd, length, flags=mmap.MAP_SHARED | _MAP_POPULATE,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        weakref.finalize(memory, _release_later, self, place).atexit = False
        return memory

    def _open(self, number: int) -> int:
        name = f"{self.peer_prefix}{number}"      # only names the peer may send to us
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        _unlink(path)                   # from now on only the two mappings keep it
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid():
            os.close(fd)
            raise ValueError(f"shared-memory arena {name} belongs to uid {owner}")
        with self.lock:
            self.received[number] = fd
        return fd

    def close(self) -> None:
        """The link is closed: unmap what this side sends from, close what it received
        (mappings handed out stay valid until their buffers are freed)."""
        with self.lock:
            self.closed = True
            arenas, self.arenas = list(self.arenas.values()), {}
            received, self.received = list(self.received.values()), {}
        for arena in arenas:
            try:
                arena.memory.close()
            except BufferError:
                pass                    # an export still being written: the GC closes it
            _unlink(arena.path)
        for fd in received:
            os.close(fd)


# -- SHM_FREE notes: sent by one thread, since a finalizer may run anywhere (inside the GC,
# holding any lock) and must not write to a socket itself -------------------------------------
_freed: queue.SimpleQueue = queue.SimpleQueue()     # (Segments, place)
_sender: threading.Thread | None = None
_sender_lock = threading.Lock()


def _release_later(segments: Segments, place: bytes) -> None:
    """A mapping was freed (a finalizer: any thread, maybe inside the GC holding any lock):
    only queue the note; no lock, no I/O."""
    _freed.put((segments, place))


def _start_sender() -> None:
    global _sender
    if _sender is None:
        with _sender_lock:
            if _sender is None:
                _sender = threading.Thread(target=_send_releases, name="pydist-shm-free", daemon=True)
                _sender.start()


def _send_releases() -> None:
    from .messages import Kind
    while True:
        batch = [_freed.get()]
        while True:
            try:
                batch.append(_freed.get_nowait())
            except queue.Empty:
                break
        by_link: dict[int, tuple[Segments, list[bytes]]] = {}
        for segments, place in batch:
            by_link.setdefault(id(segments), (segments, []))[1].append(place)
        for segments, places in by_link.values():
            link = segments.link
            if link is None or link.closed:
                continue
            try:
                link.send(Kind.SHM_FREE, b"".join(places))
            except Exception:
                pass            # the peer is gone, and its arenas with it


def _forget_sender() -> None:
    """In a forked child: the parent's thread and queue are not ours."""
    global _sender, _sender_lock, _freed
    _sender, _sender_lock, _freed = None, threading.Lock(), queue.SimpleQueue()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_sender)


# -- names left behind --------------------------------------------------------------------------
def forget(cluster_id: str, me: int, peer: int, directory: str | None = None) -> None:
    """`peer` is gone: remove the arena names still there between it and this process."""
    directory = directory or settings.SHM_DIR
    for pattern in (f"pydist-{cluster_id}-{me}-{peer}-*", f"pydist-{cluster_id}-{peer}-{me}-*"):
        for path in glob.glob(os.path.join(glob.escape(directory), pattern)):
            _unlink(path)


def forget_cluster(cluster_id: str, directory: str | None = None) -> None:
    """This process leaves with its cluster: remove every arena name of the cluster."""
    directory = directory or settings.SHM_DIR
    for path in glob.glob(os.path.join(glob.escape(directory), f"pydist-{cluster_id}-*")):
        _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass                    # the receiver (or another cleaner) was first
