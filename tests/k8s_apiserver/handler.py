"""The HTTP side: routes and the request handler, one thread per connection."""

from __future__ import annotations

import json
import re
import select
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from .objects import KINDS, NODE_NAME, ApiError, log, not_found, parse_field_selector, parse_label_selector


if TYPE_CHECKING:
    from .server import KubeTestServer

NAME_PATTERN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
ROUTES = [
    (r"/(version|healthz|readyz|livez|api|apis|api/v1)", "misc"),
    (r"/api/v1/nodes(?:/(?P<name>[^/]+))?", "nodes"),
    (r"/api/v1/namespaces(?:/(?P<name>[^/]+))?", "namespaces"),
    (r"/api/v1/(?P<plural>pods|secrets)", "cluster_list"),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>pods|secrets)", "collection"),
    (r"/api/v1/namespaces/(?P<ns>[^/]+)/(?P<plural>pods|secrets)/(?P<name>[^/]+)(?:/(?P<sub>status|log))?", "item"),
]


class Handler(BaseHTTPRequestHandler):
    """Routes a request to a resource method; every error is a Status object with the real code and reason."""
    protocol_version = "HTTP/1.1"           # keep-alive: the client's urllib3 pool reuses connections
    disable_nagle_algorithm = True          # headers and body are two writes: without this, 40 ms each (delayed ACK)
    server: "KubeTestServer._HTTPServer"

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self): self._dispatch("GET")
    def do_POST(self): self._dispatch("POST")
    def do_PUT(self): self._dispatch("PUT")
    def do_DELETE(self): self._dispatch("DELETE")
    def do_PATCH(self): self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            self.body = json.loads(raw) if raw else {}
            for pattern, name in ROUTES:
                m = re.fullmatch(pattern, url.path.rstrip("/"))
                if m:
                    return getattr(self, "_" + name)(method, **{k: v for k, v in m.groupdict().items() if v})
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({url.path})")
        except ApiError as err:
            self._json(err.code, err.status())
        except (ValueError, KeyError, TypeError) as err:
            self._json(400, ApiError(400, "BadRequest", f"bad request: {err!r}").status())
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as err:  # noqa: BLE001 -- a bug here must answer 500, not drop the connection
            log.exception("internal error on %s %s", method, self.path)
            self._json(500, ApiError(500, "InternalError", repr(err)).status())

    # -- writing --------------------------------------------------------------------------------
    def _json(self, code: int, obj: dict) -> None:
        self._bytes(code, json.dumps(obj).encode(), "application/json")

    def _bytes(self, code: int, data: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunked(self, chunks, ctype: str) -> None:
        """Stream chunks (None: nothing to send, only a chance to stop) until they end or the client goes."""
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for data in chunks:
                if data:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                elif self._client_gone():
                    return
            self.wfile.write(b"0\r\n\r\n")
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()

    def _client_gone(self) -> bool:
        readable, _, _ = select.select([self.connection], [], [], 0)
        try:
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    # -- routes ---------------------------------------------------------------------------------
    def _misc(self, method, **_):
        srv = self.server.owner
        path = urlsplit(self.path).path.rstrip("/")
        if path == "/version":
            return self._json(200, {"major": "1", "minor": "33", "gitVersion": "v1.33.0-pydist-test",
                                    "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                                    "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})
        if path == "/api":
            return self._json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": srv.url.split("//")[1]}]})
        if path == "/apis":
            return self._json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if path == "/api/v1":
            res = [("pods", "Pod", True, "create delete deletecollection get list watch"),
                   ("pods/log", "Pod", True, "get"), ("pods/status", "Pod", True, "get"),
                   ("secrets", "Secret", True, "create delete deletecollection get list update watch"),
                   ("namespaces", "Namespace", False, "create get list"), ("nodes", "Node", False, "get list")]
            return self._json(200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": n, "singularName": "", "namespaced": ns, "kind": k, "verbs": v.split()}
                for n, k, ns, v in res]})
        return self._bytes(200, b"ok", "text/plain")

    def _nodes(self, method, name=None):
        node = self.server.owner.node()
        if name is None:
            return self._json(200, {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": [node]})
        if name != NODE_NAME:
            raise not_found("Node", name)
        return self._json(200, node)

    def _namespaces(self, method, name=None):
        owner = self.server.owner
        if method == "POST" and name is None:
            return self._json(201, owner.ensure_namespace(self.body["metadata"]["name"], must_be_new=True))
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{method} on namespaces is not supported by the test API server")
        if name is None:
            return self._list("Namespace", None)
        return self._json(200, owner.store.get("Namespace", "", name))

    def _cluster_list(self, method, plural):
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"{method} {self.path} is not supported")
        return self._list(KINDS[plural], None)

    def _collection(self, method, ns, plural):
        kind = KINDS[plural]
        if method == "GET":
            return self._list(kind, ns)
        if method == "POST":
            return self._json(201, self.server.owner.create(kind, ns, self.body))
        if method == "DELETE":
            items, rv = self.server.owner.store.list(kind, ns, self._matcher(kind))
            deleted = [self.server.owner.delete(kind, ns, o["metadata"]["name"], self._grace()) for o in items]
            return self._json(200, {"kind": kind + "List", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": str(rv)}, "items": deleted})
        raise ApiError(405, "MethodNotAllowed", f"{method} on a {plural} collection is not supported")

    def _item(self, method, ns, plural, name, sub=None):
        owner, kind = self.server.owner, KINDS[plural]
        if sub == "log":
            return self._log(owner.store.get("Pod", ns, name))
        if method == "GET":
            return self._json(200, owner.store.get(kind, ns, name))
        if method == "DELETE" and sub is None:
            return self._json(200, owner.delete(kind, ns, name, self._grace()))
        if method == "PUT" and kind == "Secret" and sub is None:
            return self._json(200, owner.replace_secret(ns, name, self.body))
        if method == "PATCH" and sub is None:
            return self._json(200, owner.patch(kind, ns, name, self.body, self.headers.get("Content-Type", "")))
        raise ApiError(405, "MethodNotAllowed", f"{method} {self.path} is not supported by the test API server")

    def _grace(self) -> int | None:
        value = self.query.get("gracePeriodSeconds", self.body.get("gracePeriodSeconds"))
        return None if value is None else int(value)

    def _matcher(self, kind: str):
        labels = parse_label_selector(self.query.get("labelSelector"))
        fields = parse_field_selector(self.query.get("fieldSelector"), kind)
        return lambda obj: labels(obj["metadata"].get("labels")) and fields(obj)

    def _list(self, kind: str, ns: str | None):
        store, match = self.server.owner.store, self._matcher(kind)
        if _flag(self.query.get("watch")):
            rv = self.query.get("resourceVersion")
            timeout = self.query.get("timeoutSeconds")
            deadline = time.monotonic() + (float(timeout) if timeout else 3600.0)
            events = store.watch(kind, ns, None if rv in (None, "", "0") else int(rv), deadline)
            return self._chunked(self._watch_lines(events, match), "application/json")
        items, rv = store.list(kind, ns, match)
        self._json(200, {"kind": kind + "List", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)},
                         "items": items})

    @staticmethod
    def _watch_lines(events, match):
        """One JSON line per matching event, None between batches (a chance to notice a gone client)."""
        try:
            for event in events:
                if event is None:
                    yield None
                elif match(event.obj):
                    yield json.dumps({"type": event.type, "object": event.obj}).encode() + b"\n"
        except ApiError as err:             # 410 Expired: raised before the first event
            yield json.dumps({"type": "ERROR", "object": err.status()}).encode() + b"\n"

    def _log(self, pod: dict):
        q = self.query
        if q.get("container") not in (None, pod["spec"]["containers"][0]["name"]):
            raise ApiError(400, "BadRequest",
                           f'container {q["container"]} is not valid for pod {pod["metadata"]["name"]}')
        follow = _flag(q.get("follow"))
        kwargs = {"timestamps": _flag(q.get("timestamps")),
                  "tail": int(q["tailLines"]) if "tailLines" in q else "all"}
        if "sinceSeconds" in q:
            kwargs["since"] = int(time.time()) - int(q["sinceSeconds"])
        out = self.server.owner.kubelet.logs(pod, follow, _flag(q.get("previous")), **kwargs)
        limit = int(q["limitBytes"]) if "limitBytes" in q else None
        if not follow:
            return self._bytes(200, out[:limit] if limit else out, "text/plain")
        self._chunked(out, "text/plain")


def _flag(value: str | None) -> bool:
    """A boolean query parameter as the API server reads one (apimachinery's
    Convert_Slice_string_To_bool): anything but "0" or "false" in any case is true, so the
    Python client 36's "True" counts as "true" does."""
    return value is not None and value != "0" and value.lower() != "false"
