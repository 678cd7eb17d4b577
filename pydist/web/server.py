"""The dashboard's HTTP server (Tornado), on its own thread and event loop in the master.

    GET /?token=T            the page (assets inlined: nothing is fetched from elsewhere)
    GET /events?token=T      server-sent events: the sampler's state, then one update a tick
    GET /api/state?token=T   the sampler's state as JSON
    GET /api/status?token=T  what `pydist status` shows (`pydist status --address URL`)

Every path answers 403 and nothing else without the token (a query parameter, or the header
`Authorization: token T`). The token is an HMAC of the cluster cookie, so it is the same for
the whole life of the cluster and proves nothing about the cookie to whoever sees it.

Threads: `pydist-dashboard` runs the event loop; the sampler's thread hands each update to it
with `call_soon_threadsafe`, and every connected browser has a bounded queue: one that falls
that far behind is disconnected (it reconnects and gets the whole state again).
`pydist-dashboard-status` answers /api/status, which waits for the workers, off the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import json
import logging
import socket
import threading

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from .. import status
from .page import render
from .sampler import Sampler

log = logging.getLogger("pydist")

# Updates a browser may lag behind before it is dropped (one a second: a minute).
CLIENT_BACKLOG = 60


class _Authorized(tornado.web.RequestHandler):
    """Refuses, with 403 and no data, a request without the dashboard's token."""

    def initialize(self, server: DashboardServer):
        self.server = server

    def prepare(self):
        given = self.get_query_argument("token", "")
        header = self.request.headers.get("Authorization", "")
        if header.startswith("token "):
            given = header[len("token "):]
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            self.set_status(403)
            self.finish("403 Forbidden: open the URL the master printed, with its ?token=\n")

    def set_default_headers(self):
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")     # the token is in the URL


class _Page(_Authorized):
    def get(self):
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                        "style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
        self.finish(render(title=f"pydist · cluster {self.server.cluster_id}", data=None))


class _State(_Authorized):
    def get(self):
        self.finish(self.server.sampler.state())


class _Status(_Authorized):
    async def get(self):
        # cluster_status waits for the workers' answers: not on the event loop's thread
        answer = await asyncio.get_running_loop().run_in_executor(self.server.status_thread,
                                                                  status.snapshot)
        self.finish(answer)


class _Events(_Authorized):
    async def get(self):
        self.set_header("Content-Type", "text/event-stream")
        queue: asyncio.Queue = asyncio.Queue(CLIENT_BACKLOG)
        loop = asyncio.get_running_loop()

        def on_update(update: dict) -> None:          # the sampler's thread
            loop.call_soon_threadsafe(_offer, queue, update)

        state = self.server.sampler.subscribe(on_update)
        self.server.streams.add(queue)
        try:
            message = state
            while message is not None:
                self.write(f"data: {json.dumps(message)}\n\n")
                await self.flush()
                message = await queue.get()
        except tornado.iostream.StreamClosedError:
            pass
        finally:
            self.server.sampler.unsubscribe(on_update)
            self.server.streams.discard(queue)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Requests go to pydist's debug log, not to the master's stderr (Tornado's default)."""
    log.debug("pydist dashboard: %s %s %s", handler.get_status(), handler.request.method,
              handler.request.uri.split("?")[0])


def _offer(queue: asyncio.Queue, update: dict | None) -> None:
    """Queue an update for one browser; None (or falling CLIENT_BACKLOG behind) ends its stream."""
    if update is not None and not queue.full():
        queue.put_nowait(update)
        return
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)


class DashboardServer:
    """The dashboard of this master at http://host:port/?token=...; `close()` stops it."""

    def __init__(self, host: str, port: int, token: str, cluster_id: str):
        self.token, self.cluster_id = token, cluster_id
        self.sampler = Sampler().start()
        try:
            sockets = tornado.netutil.bind_sockets(port, host, family=socket.AF_INET
                                                   if ":" not in host else socket.AF_UNSPEC)
        except OSError:
            self.sampler.stop()
            raise
        self.port = sockets[0].getsockname()[1]
        self.host = host
        self.streams: set[asyncio.Queue] = set()      # one per browser; only the loop's thread
        self.status_thread = concurrent.futures.ThreadPoolExecutor(1, "pydist-dashboard-status")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(sockets, ready),
                                        name="pydist-dashboard", daemon=True)
        self._thread.start()
        ready.wait(status.STATUS_TIMEOUT)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={self.token}"

    def _serve(self, sockets, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        handlers = [(path, handler, {"server": self}) for path, handler in
                    [("/", _Page), ("/events", _Events), ("/api/state", _State), ("/api/status", _Status)]]
        app = tornado.web.Application(handlers, log_function=_log_request)
        self._http = tornado.httpserver.HTTPServer(app)
        self._http.add_sockets(sockets)
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        self._http.stop()
        for queue in list(self.streams):
            _offer(queue, None)
        await self._http.close_all_connections()

    def close(self) -> None:
        """Stop sampling, then serving (waits a few seconds at most)."""
        self.sampler.stop()
        if self._loop is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(status.STATUS_TIMEOUT)
            except Exception as err:
                log.warning("pydist: the dashboard did not close its connections: %r", err)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(status.STATUS_TIMEOUT)
        self.status_thread.shutdown(wait=False)
