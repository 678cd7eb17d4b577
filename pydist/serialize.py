"""Pickling for the wire: cloudpickle with protocol-5 out-of-band buffers.

Functions and lambdas from `__main__` travel by value, importable ones by reference.
Buffers of 64 KiB or more that pickle hands over as out-of-band buffers (numpy arrays and
other `PickleBuffer` producers; not `bytes` or `bytearray`, which protocol 5 copies in) are
not copied into the pickle: they are sent and received as separate memory blocks.

Fast path: most messages (an importable function, numbers, strings, arrays) pickle the same
with the standard C pickler, which costs a fraction of cloudpickle's pure-Python hooks.  It
is tried first; anything it refuses (lambdas, closures, dynamic classes) or that names
`__main__` (which must travel by value) is pickled again with cloudpickle.

Functions sent by value keep their file name (cloudpickle writes `<dynamic-code>`), so a
remote traceback says where the user's code is.  When a call cannot be pickled,
`unpicklable(obj)` finds the part that cannot: an argument, an item in it, or a variable a
function captures.

`dumps(obj, dest)` records the destination process in a thread-local while pickling, so a
Future or RemoteChannel being pickled can tell its owner about the new holder at once (so
that notice can never be overtaken by this process's own release).  Each such reference
leaves an undo action (`undo_if_not_sent`); a failed or retried attempt runs them, so it
never counts a holder that does not exist.
"""

from __future__ import annotations

import collections
import io
import pickle
import reprlib
import threading
import types

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle_impl

OUT_OF_BAND_MIN = 1 << 16     # smaller buffers are cheaper in-band than as extra frames

class _Pickling:
    """One thread's pickling state: where the object goes, the undo actions of the references
    in it, and its out-of-band buffers. One object per thread (plain slots are read several
    times per message; thread-local attributes cost more each)."""

    __slots__ = ("dest", "pending", "buffers", "bounded", "keep")

    def __init__(self):
        self.dest = self.pending = self.buffers = None
        self.bounded = False            # a bounded pickle (dumps_small) takes no buffer
        self.keep = self._keep          # the buffer_callback, made once

    def _keep(self, buf: pickle.PickleBuffer) -> bool:
        """Out of band (False) for contiguous buffers of OUT_OF_BAND_MIN bytes or more."""
        try:
            raw = buf.raw()
        except BufferError:             # not contiguous: let pickle copy it in-band
            return True
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        if self.bounded:
            raise _TooBig
        self.buffers.append(raw)
        return False


_local = threading.local()


def _state() -> _Pickling:
    try:
        return _local.state
    except AttributeError:
        state = _local.state = _Pickling()
        return state


def destination() -> int | None:
    """The process the object now being pickled is going to (None outside `dumps`)."""
    return _state().dest


def undo_if_not_sent(action) -> None:
    """Run `action()` if the current `dumps` fails or its result is not sent."""
    pending = _state().pending
    if pending is not None:
        pending.append(action)


def _undo(actions: list) -> None:
    for action in reversed(actions):
        action()


# Plain values that pickle alike everywhere, hold no reference and no out-of-band buffer:
# most results of small calls; dumps pickles them directly.
_PLAIN = frozenset({int, float, bool, complex, str, bytes, type(None)})


def dumps(obj, dest: int | None = None) -> tuple[bytes, list[memoryview]]:
    """Pickle `obj` for process `dest`; returns the body and its out-of-band buffers."""
    if type(obj) in _PLAIN:
        return pickle.dumps(obj, protocol=5), []
    body, buffers, _undos = _pickle(obj, dest)
    return body, buffers


def dumps_small(obj, dest: int, limit: int) -> bytes | None:
    """`obj` pickled in at most `limit` bytes, with no out-of-band buffers and no Future or
    RemoteChannel inside (so the copy holds nothing anywhere); else None. Pickling stops
    as soon as the limit is passed, so a big result is not pickled twice for nothing."""
    try:
        body, _buffers, undos = _pickle(obj, dest, limit)
    except Exception:
        return None
    if undos:
        _undo(undos)
        return None
    return body


class _TooBig(Exception):
    """A bounded pickle passed its limit (or wanted an out-of-band buffer)."""


class _Bounded(io.BytesIO):
    def __init__(self, limit: int | None):
        super().__init__()
        self.limit = limit

    def write(self, data) -> int:
        if self.limit is not None and self.tell() + len(data) > self.limit:
            raise _TooBig
        return super().write(data)


def _pickle(obj, dest, limit: int | None = None):
    """(body, buffers, undos): the undo actions reverse what pickling told owners, for a
    caller that decides not to send the body. With `limit`, raises _TooBig past it."""
    state = _state()
    saved = state.dest, state.pending, state.buffers, state.bounded
    state.dest, state.pending, state.buffers, state.bounded = dest, [], [], limit is not None
    try:
        body = None
        if not _cloudpickle_impl._PICKLE_BY_VALUE_MODULES:
            try:
                if limit is None:
                    body = pickle.dumps(obj, protocol=5, buffer_callback=state.keep)
                else:
                    out = _Bounded(limit)
                    pickle.Pickler(out, protocol=5, buffer_callback=state.keep).dump(obj)
                    body = out.getvalue()
            except _TooBig:
                _undo(state.pending)
                raise
            except Exception:
                body = None
            if body is None or b"__main__" in body:
                _undo(state.pending)
                body = None
        if body is None:
            state.pending, state.buffers = [], []
            out = _Bounded(limit)
            try:
                _Pickler(out, protocol=5, buffer_callback=state.keep).dump(obj)
            except BaseException:
                _undo(state.pending)
                raise
            body = out.getvalue()
        return body, state.buffers, state.pending
    finally:
        state.dest, state.pending, state.buffers, state.bounded = saved


def _code_reduce(code: types.CodeType):
    """cloudpickle's reduction of a code object, with the real file name put back."""
    rebuild, args = _cloudpickle_impl._code_reduce(code)
    return rebuild, tuple(code.co_filename if arg == "<dynamic-code>" else arg for arg in args)


class _Pickler(cloudpickle.CloudPickler):
    """cloudpickle, keeping functions' file names for remote tracebacks."""
    dispatch_table = collections.ChainMap({types.CodeType: _code_reduce},
                                          cloudpickle.CloudPickler.dispatch_table)


# How deep and wide `unpicklable` looks for the culprit: enough for real arguments, bounded
# for huge or cyclic ones.
SEARCH_DEPTH = 8
SEARCH_ITEMS = 1000


def unpicklable(obj, name: str, depth: int = SEARCH_DEPTH) -> tuple[str, BaseException] | None:
    """(path, error) of the innermost part of `obj` (called `name`) that cannot be pickled,
    e.g. `"work's captured variable 'lock'"` or `"argument 2[0]['conn']"`; None if it pickles."""
    try:
        _pickle_alone(obj)
        return None
    except Exception as err:
        failure = (name, err)
    if depth > 0:
        for suffix, part in _parts(obj):
            inner = unpicklable(part, name + suffix, depth - 1)
            if inner is not None:
                return inner
    return failure


def _pickle_alone(obj) -> None:
    _Pickler(io.BytesIO(), protocol=5, buffer_callback=lambda _buffer: False).dump(obj)


def _parts(obj):
    """(path suffix, part) for what pickling `obj` pickles in turn."""
    if isinstance(obj, types.FunctionType):
        cells = zip(obj.__code__.co_freevars, obj.__closure__ or ())
        yield from ((f"'s captured variable {var!r}", _cell_contents(cell)) for var, cell in cells)
        names = _global_names(obj.__code__)
        yield from ((f"'s global {var!r}", obj.__globals__[var]) for var in sorted(names)
                    if var in obj.__globals__ and not isinstance(obj.__globals__[var], types.ModuleType))
        for i, default in enumerate(obj.__defaults__ or ()):
            yield f"'s default value {i + 1}", default
    elif isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for i, item in enumerate(obj):
            if i >= SEARCH_ITEMS:
                return
            yield (f"[{i}]" if not isinstance(obj, (set, frozenset)) else f" item {_short(item)}"), item
    elif isinstance(obj, dict):
        for i, (key, value) in enumerate(obj.items()):
            if i >= SEARCH_ITEMS:
                return
            yield f"[{_short(key)}]", value
    elif isinstance(getattr(obj, "__dict__", None), dict) and not isinstance(obj, (type, types.ModuleType)):
        for attr, value in list(vars(obj).items())[:SEARCH_ITEMS]:
            yield f".{attr}", value


def _cell_contents(cell):
    try:
        return cell.cell_contents
    except ValueError:              # an empty cell pickles fine
        return None


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 40


def _short(value) -> str:
    return _repr.repr(value)


def loads(body, buffers=()):
    """Unpickle a body with its out-of-band buffers (which become the objects' memory)."""
    return pickle.loads(body, buffers=buffers)
