"""The object store: pods, secrets and namespaces by resourceVersion, with the watch history."""

from __future__ import annotations

import bisect
import copy
import dataclasses
import threading
import time
import uuid

from .objects import HISTORY_LIMIT, WAKE_INTERVAL, ApiError, not_found, now


@dataclasses.dataclass(frozen=True)
class WatchEvent:
    rv: int
    type: str        # ADDED, MODIFIED, DELETED
    kind: str
    obj: dict        # a snapshot: never mutated after the event is recorded


class Store:
    """Objects by (kind, namespace, name), one resourceVersion counter, and the event history watches replay.

    A single Condition guards ``_objects``, ``_rv``, ``_history`` and ``_closed``; every change bumps
    the counter (like etcd's revision) and wakes the watchers. Callers get deep copies, so nothing
    outside the store mutates stored objects or history snapshots."""

    def __init__(self):
        self._cond = threading.Condition()
        self._objects: dict[tuple[str, str, str], dict] = {}
        self._rv = 0
        self._history: list[WatchEvent] = []
        self._closed = False

    def _record(self, type_: str, kind: str, obj: dict) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append(WatchEvent(self._rv, type_, kind, copy.deepcopy(obj)))
        if len(self._history) > 2 * HISTORY_LIMIT:
            del self._history[:-HISTORY_LIMIT]
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def create(self, kind: str, obj: dict) -> dict:
        """Store a new object (uid, timestamps, resourceVersion filled in); 409 AlreadyExists on a name clash."""
        meta = obj["metadata"]
        with self._cond:
            key = (kind, meta.get("namespace", ""), meta["name"])
            if key in self._objects:
                raise ApiError(409, "AlreadyExists", f'{kind.lower()}s "{meta["name"]}" already exists',
                               name=meta["name"], kind=kind.lower() + "s")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now())
            self._objects[key] = obj = copy.deepcopy(obj)
            return self._record("ADDED", kind, obj)

    def get(self, kind: str, ns: str, name: str) -> dict:
        with self._cond:
            obj = self._objects.get((kind, ns, name))
            if obj is None:
                raise not_found(kind, name)
            return copy.deepcopy(obj)

    def list(self, kind: str, ns: str | None, match=lambda obj: True) -> tuple[list[dict], int]:
        """Matching objects of a kind (ns None: all namespaces), sorted by name, and the current revision."""
        with self._cond:
            items = [copy.deepcopy(o) for (k, n, _), o in sorted(self._objects.items())
                     if k == kind and (ns is None or n == ns) and match(o)]
            return items, self._rv

    def update(self, kind: str, ns: str, name: str, change) -> dict:
        """Apply ``change(obj)`` to a copy; record MODIFIED only if the object really changed.

        ``change`` runs under the store's lock: it must only edit the dict it is given."""
        with self._cond:
            old = self._objects.get((kind, ns, name))
            if old is None:
                raise not_found(kind, name)
            new = copy.deepcopy(old)
            change(new)
            if new == old:
                return copy.deepcopy(old)
            self._objects[(kind, ns, name)] = new
            return self._record("MODIFIED", kind, new)

    def delete(self, kind: str, ns: str, name: str) -> dict:
        with self._cond:
            obj = self._objects.pop((kind, ns, name), None)
            if obj is None:
                raise not_found(kind, name)
            return self._record("DELETED", kind, obj)

    def watch(self, kind: str, ns: str | None, since: int | None, deadline: float):
        """Yield WatchEvents of one kind (and namespace) as they happen, and None at least every WAKE_INTERVAL.

        The None heartbeats let the caller check whether its client is still there. ``since`` None:
        the current objects first, as ADDED. Ends at ``deadline`` (monotonic) or when the store closes."""
        with self._cond:
            if since is None:
                backlog = [WatchEvent(self._rv, "ADDED", kind, copy.deepcopy(o))
                           for (k, n, _), o in sorted(self._objects.items()) if k == kind and ns in (None, n)]
                cursor = self._rv
            else:
                oldest = self._history[0].rv if self._history else self._rv + 1
                if since < oldest - 1:
                    raise ApiError(410, "Expired", f"too old resource version: {since} ({oldest - 1})")
                backlog, cursor = [], since
        yield from backlog
        while True:
            with self._cond:
                left = deadline - time.monotonic()
                self._cond.wait_for(lambda: self._rv > cursor or self._closed,  # noqa: B023 (called at once)
                                    timeout=max(0.0, min(left, WAKE_INTERVAL)))
                if self._closed or time.monotonic() >= deadline:
                    return
                batch = self._history[bisect.bisect_right(self._history, cursor, key=lambda e: e.rv):]
                cursor = self._rv
            for event in batch:
                if event.kind == kind and ns in (None, event.obj["metadata"].get("namespace")):
                    yield event
            yield None

    def close(self) -> None:
        """End every watch."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
