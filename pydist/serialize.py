"""Pickling for the wire: cloudpickle with protocol-5 out-of-band buffers.

Functions and lambdas from `__main__` travel by value, importable ones by reference.
Buffers of 64 KiB or more (numpy arrays, bytes, bytearrays) are not copied into the pickle:
they are sent and received as separate memory blocks.

`dumps(obj, dest)` records the destination process in a thread-local while pickling, so
that a Future or RemoteChannel being pickled can tell its owner about the new holder.
"""

from __future__ import annotations

import io
import pickle
import threading

import cloudpickle

OUT_OF_BAND_MIN = 1 << 16     # smaller buffers are cheaper in-band than as extra frames

_context = threading.local()


def destination() -> int | None:
    """The process the object now being pickled is going to (None outside `dumps`)."""
    return getattr(_context, "dest", None)


def dumps(obj, dest: int | None = None) -> tuple[bytes, list[memoryview]]:
    """Pickle `obj` for process `dest`; returns the body and its out-of-band buffers."""
    buffers: list[memoryview] = []

    def keep_out_of_band(buf: pickle.PickleBuffer):
        try:
            raw = buf.raw()
        except BufferError:          # not contiguous: let pickle copy it in-band
            return True
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(raw)
        return False

    previous = getattr(_context, "dest", None)
    _context.dest = dest
    try:
        out = io.BytesIO()
        cloudpickle.CloudPickler(out, protocol=5, buffer_callback=keep_out_of_band).dump(obj)
        return out.getvalue(), buffers
    finally:
        _context.dest = previous


def loads(body, buffers=()):
    """Unpickle a body with its out-of-band buffers (which become the objects' memory)."""
    return pickle.loads(body, buffers=buffers)
