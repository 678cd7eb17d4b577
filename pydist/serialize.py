"""Pickling for the wire: cloudpickle with protocol-5 out-of-band buffers.

Functions and lambdas from `__main__` travel by value, importable ones by reference.
Buffers of 64 KiB or more (numpy arrays, bytes, bytearrays) are not copied into the pickle:
they are sent and received as separate memory blocks.

Fast path: most messages (an importable function, numbers, strings, arrays) pickle the same
with the standard C pickler, which costs a fraction of cloudpickle's pure-Python hooks.  It
is tried first; anything it refuses (lambdas, closures, dynamic classes) or that names
`__main__` (which must travel by value) is pickled again with cloudpickle.

`dumps(obj, dest)` records the destination process in a thread-local while pickling, so a
Future or RemoteChannel being pickled can tell its owner about the new holder.  Those
notices (`after_pickling`) run only once pickling has succeeded, so a retried or failed
attempt never counts a holder that does not exist.
"""

from __future__ import annotations

import io
import pickle
import threading

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle_impl

OUT_OF_BAND_MIN = 1 << 16     # smaller buffers are cheaper in-band than as extra frames

_context = threading.local()


def destination() -> int | None:
    """The process the object now being pickled is going to (None outside `dumps`)."""
    return getattr(_context, "dest", None)


def after_pickling(action) -> None:
    """Run `action()` once the current `dumps` has succeeded (immediately outside one)."""
    pending = getattr(_context, "pending", None)
    if pending is None:
        action()
    else:
        pending.append(action)


def dumps(obj, dest: int | None = None) -> tuple[bytes, list[memoryview]]:
    """Pickle `obj` for process `dest`; returns the body and its out-of-band buffers."""
    body, buffers, notices = _pickle(obj, dest)
    for notice in notices:
        notice()
    return body, buffers


def dumps_small(obj, dest: int, limit: int) -> bytes | None:
    """`obj` pickled in at most `limit` bytes, with no out-of-band buffers and no Future or
    RemoteChannel inside (so the copy holds nothing anywhere); else None."""
    try:
        body, buffers, notices = _pickle(obj, dest)
    except Exception:
        return None
    return body if not buffers and not notices and len(body) <= limit else None


def _pickle(obj, dest):
    """(body, buffers, notices): the notices are to run only if the body is sent."""
    saved = (getattr(_context, "dest", None), getattr(_context, "pending", None))
    _context.dest = dest
    try:
        body, buffers = None, []
        if not _cloudpickle_impl._PICKLE_BY_VALUE_MODULES:
            _context.pending = []
            try:
                body = pickle.dumps(obj, protocol=5, buffer_callback=_out_of_band(buffers))
            except Exception:
                body = None
            if body is not None and b"__main__" in body:
                body = None
        if body is None:
            _context.pending, buffers = [], []
            out = io.BytesIO()
            cloudpickle.CloudPickler(out, protocol=5, buffer_callback=_out_of_band(buffers)).dump(obj)
            body = out.getvalue()
        return body, buffers, _context.pending
    finally:
        _context.dest, _context.pending = saved


def _out_of_band(buffers: list):
    def keep(buf: pickle.PickleBuffer):
        try:
            raw = buf.raw()
        except BufferError:          # not contiguous: let pickle copy it in-band
            return True
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(raw)
        return False
    return keep


def loads(body, buffers=()):
    """Unpickle a body with its out-of-band buffers (which become the objects' memory)."""
    return pickle.loads(body, buffers=buffers)
