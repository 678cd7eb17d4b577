"""Message kinds and the frame header that carries them.

Every frame is a fixed 32-byte header, then one u64 length per out-of-band buffer, then
the pickled body, then the buffers:

    kind u8 | mode u8 | nbuffers u16 | rrid.whence u32 | rrid.id u64 | msg_id u64 | body u64

The header travels outside the pickled body on purpose: when a body cannot be unpickled
(a class missing on this side, a corrupt argument), the receiver still knows which call it
belonged to and answers that call alone with an error, keeping the link.  Out-of-band
buffers (pickle protocol 5) are written and read straight from and into their memory.
"""

from __future__ import annotations

import enum
import struct

HEADER = struct.Struct("!BBHIQQQ")


class Kind(enum.IntEnum):
    CALL = 1          # run f(*args, **kw); msg_id = call id, rrid = result's Future (mode FUTURE/WAIT)
    RESULT = 2        # msg_id = call id; body = the value
    ERROR = 3         # msg_id = call id; body = a RemoteException
    ADD_CLIENT = 4    # owner counts one more holder of rrid, on process msg_id
    DEL_CLIENTS = 5   # body = rrids the sender drops, one count each
    JOIN = 6          # master -> new worker: its id and the cluster (body = dict)
    JOINED = 7        # worker -> master: the worker is ready (body = its WorkerInfo)
    IDENT = 8         # dialing worker -> peer: who is calling (body = pid)
    OFFER = 9         # joining worker -> master, before JOIN: who it is (body = dict)
    PING = 10         # liveness probe; answered by PONG
    PONG = 11
    PUSH = 12         # callee -> caller: a small result of its remotecall Future `rrid` (body)
    SHM_FREE = 13     # receiver -> sender: shared-memory slots it let go of (shm.py; body)


class Mode(enum.IntEnum):
    FETCH = 0         # answer with RESULT or ERROR; rrid.id, if not 0, is the caller's lane
    FUTURE = 1        # keep the outcome in the Future `rrid` owned by the callee
    WAIT = 2          # as FUTURE, then answer RESULT(None) or ERROR
    DO = 3            # no answer; an error is printed on the callee's stderr


# A CALL's mode byte may carry this flag: its caller has nothing else in flight on the link
# and waits for the answer, so its next call is likely to follow at once (the callee's
# reader then polls for it briefly instead of sleeping; see transport).
LOCKSTEP = 0x80

NO_RRID = (0, 0)
