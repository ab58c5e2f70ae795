"""`diffill serve`: the websocket server. It only translates between the wire (fim_server.shared.protocol) and the
engine; all state about requests lives in the engine.

Contract: one connection carries many concurrent requests, each answered by id. Every message the client
sends gets either its answer or an `error` naming what was wrong; a bad message never closes the
connection or disturbs its other requests. Messages to the client leave through one ordered outbox per
connection, so a request's streaming `update`s always precede its `result`. When a connection closes, its
unfinished requests are cancelled. Plain HTTP `GET /healthz` answers 200 with the model and device.

Security: binds 127.0.0.1 by default; any other address needs a token (or an explicit insecure flag).
A browser page always sends an Origin header; such a connection is refused (403) unless its origin was
allowed, so a web page cannot drive a local server. Optional bearer token (header `Authorization: Bearer T`
or query `?token=T`); /healthz stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server as WsServer
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import OPEN
from websockets.server import ServerProtocol

from fim_server.shared.errors import Cancelled, DiffillError, EngineError, ProtocolError
from fim_server.shared.fim_http import ApiError
from fim_server.shared.protocol import (
    MAX_MESSAGE_BYTES,
    CancelRequest,
    EditRequest,
    EditResult,
    PrefetchRequest,
    cancelled_message,
    edit_result_message,
    error_message,
    parse_client_message,
    result_message,
    size_over,
    update_message,
)
from fim_server.web import EngineSlot, Front, run_in_slot

log = logging.getLogger("diffill.server")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    allowed_origins: tuple[str, ...] = ()  # browser origins allowed; connections without Origin always are
    token: str | None = None
    max_message_bytes: int = MAX_MESSAGE_BYTES  # larger messages get a "too_large" error
    max_in_flight: int = 16  # per connection
    insecure_no_token: bool = False  # allow a non-loopback host without a token (logged as a warning)
    http_language: str | None = None  # the language of HTTP requests that name none (plugins do not)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: ServerConfig) -> None:
    """Refuse to listen beyond this machine without a token: anyone who can reach the port would get
    completions and send code through the model. `insecure_no_token` overrides it, with a warning."""
    if is_loopback(config.host) or config.token is not None:
        return
    if not config.insecure_no_token:
        raise ValueError(f"refusing to listen on {config.host} without a token: anyone who can reach it could "
                         "use the model and send it code. Give --token TOKEN (clients send 'Authorization: "
                         "Bearer TOKEN'), or --insecure-no-token if the network is trusted.")
    log.warning("listening on %s with no token: anyone who can reach this port can use the server", config.host)


def _make_process_request(config: ServerConfig):
    """The websocket handshake's checks (HTTP requests get theirs in fim_server.web)."""

    def process_request(connection: ServerConnection, request):
        url = urlsplit(request.path)
        origin = request.headers.get("Origin")
        if origin is not None and origin not in config.allowed_origins:
            log.warning("refused connection from origin %r", origin)
            return connection.respond(HTTPStatus.FORBIDDEN, f"origin {origin} is not allowed\n")
        if config.token is not None:
            auth = request.headers.get("Authorization", "")
            given = auth[7:] if auth.startswith("Bearer ") else (parse_qs(url.query).get("token") or [""])[0]
            if not hmac.compare_digest(given.encode(), config.token.encode()):
                return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    return process_request


class _Connection:
    """State of one client connection: its in-flight jobs and its ordered outbox."""

    def __init__(self, ws: ServerConnection, engine, config: ServerConfig):
        self.ws, self.engine, self.config = ws, engine, config
        self.outbox: asyncio.Queue[dict | None] = asyncio.Queue()
        self.jobs: dict[str, object] = {}
        self.tasks: set[asyncio.Task] = set()

    async def sender(self) -> None:
        while (msg := await self.outbox.get()) is not None:
            try:
                await self.ws.send(json.dumps(msg))
            except ConnectionClosed:
                return

    def send(self, msg: dict) -> None:
        self.outbox.put_nowait(msg)

    def handle(self, raw: str | bytes) -> None:
        """One message from the client. A request's job exists in the engine before the next message is
        read, so a `cancel` right behind its request (even in the same TCP segment) finds it."""
        try:
            if (size := size_over(raw, self.config.max_message_bytes)) is not None:
                raise ProtocolError("too_large", f"message of {size} bytes is over the "
                                    f"{self.config.max_message_bytes}-byte cap")
            msg = parse_client_message(raw)
            if isinstance(msg, CancelRequest):
                job = self.jobs.get(msg.id)
                if job is None:
                    raise ProtocolError("unknown_id", f"no request {msg.id!r} in flight", msg.id)
                job.cancel()
                return
            if isinstance(msg, PrefetchRequest):  # a hint: no job, no answer
                self.engine.prefetch(msg.infill)
                return
            if msg.id in self.jobs:
                raise ProtocolError("duplicate_id", f"request {msg.id!r} is already in flight", msg.id)
            if len(self.jobs) >= self.config.max_in_flight:
                raise ProtocolError("too_many_in_flight",
                                    f"{self.config.max_in_flight} requests already in flight", msg.id)
            if isinstance(msg, EditRequest):
                job = self.engine.submit_edit(msg, owner=self)
            else:
                on_update = None
                if msg.stream:
                    on_update = functools.partial(self._send_update, msg.id)
                job = self.engine.submit(msg, on_update=on_update, owner=self)
            self.jobs[msg.id] = job
            task = asyncio.create_task(self.answer(msg.id, job))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        except DiffillError as e:
            self.send(error_message(e))

    def _send_update(self, rid: str, text: str) -> None:
        self.send(update_message(rid, text))

    async def answer(self, rid: str, job) -> None:
        """Wait for a job and send its one final message: result, cancelled or error."""
        try:
            res = await job.result()
            self.send(edit_result_message(res) if isinstance(res, EditResult) else result_message(res))
        except Cancelled:
            self.send(cancelled_message(rid))
        except DiffillError as e:  # the engine failed this request; the connection carries on
            e.id = rid
            self.send(error_message(e))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # pragma: no cover - the engine wraps its errors; this is a last resort
            log.exception("request %s failed", rid)
            self.send(error_message(EngineError(f"engine error: {type(e).__name__}: {e}", id=rid)))
        finally:
            self.jobs.pop(rid, None)

    def close(self) -> None:
        for job in list(self.jobs.values()):
            job.cancel()
        self.send(None)


async def _handler(ws: ServerConnection, engine, config: ServerConfig) -> None:
    conn = _Connection(ws, engine, config)
    sender = asyncio.create_task(conn.sender())
    try:
        async for raw in ws:
            conn.handle(raw)
    except ConnectionClosed:
        pass
    finally:
        conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(sender, timeout=5)


class DiffillServer:
    """The listening server: HTTP and websocket on one port. `sockets[0].getsockname()[1]` is the port."""

    def __init__(self, listener: asyncio.Server, front: Front, ws_server: WsServer):
        self.listener, self.front, self.ws_server = listener, front, ws_server

    @property
    def sockets(self):
        return self.listener.sockets

    def close(self) -> None:
        self.front.close()  # HTTP connections: their requests are cancelled
        self.ws_server.close()  # stops listening, closes websocket connections (1001)

    async def wait_closed(self) -> None:
        await self.ws_server.wait_closed()


async def start_server(engine, config: ServerConfig = ServerConfig()) -> DiffillServer:
    """Listening server; `server.sockets[0].getsockname()[1]` is the port (use port 0 in tests). `engine` is
    an Engine, or an `EngineSlot` that a loader fills later (until then: HTTP 503, websocket refused with
    503). Raises ValueError for a non-loopback host without a token (see `check_exposure`)."""
    check_exposure(config)
    slot = engine if isinstance(engine, EngineSlot) else EngineSlot(engine)
    process_request = _make_process_request(config)

    async def protocol_handler(connection: ServerConnection) -> None:
        """A websocket connection's life: handshake, then the Diffill protocol until it closes."""
        try:
            await asyncio.wait_for(connection.handshake(ws_checks, None, None), 10)
            if connection.protocol.state is not OPEN:
                connection.transport.abort()
                return
            ws_server.all_connections.add(connection)
            connection.start_keepalive()
            try:
                async with connection:
                    await _handler(connection, slot.engine, config)
            except Exception:
                log.exception("websocket connection handler failed")
            finally:
                ws_server.all_connections.discard(connection)
        except Exception:
            connection.transport.abort()
        finally:
            ws_server.handler_tasks.discard(asyncio.current_task())

    def ws_checks(connection: ServerConnection, request):
        if slot.engine is None:
            try:
                slot.get()
            except ApiError as e:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, f"{e}\n")
        return process_request(connection, request)

    def upgrade(transport: asyncio.Transport, head: bytes) -> None:
        """Hand a connection whose first request is a websocket upgrade over to websockets."""
        protocol = ServerProtocol(max_size=4 * config.max_message_bytes,  # over 4x the cap: close (1009)
                                  logger=ws_server.logger)  # no compression: it costs latency on every message
        connection = ServerConnection(protocol, ws_server)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        connection.data_received(head)

    async def no_create():  # pragma: no cover - the listener is made below
        raise RuntimeError

    ws_server = WsServer(no_create, protocol_handler, logging.getLogger("diffill.websocket"))
    front = Front(slot, config, upgrade)
    listener = await asyncio.get_running_loop().create_server(front.protocol, config.host, config.port)
    ws_server.server = listener
    return DiffillServer(listener, front, ws_server)


async def serve(engine, config: ServerConfig = ServerConfig(), *, ready: Callable[[int], None] | None = None,
                load: Callable[[], Awaitable[object]] | None = None) -> None:
    """Run until SIGINT/SIGTERM (or cancellation), then close cleanly. With `load`, `engine` is an empty
    EngineSlot: the server listens at once (HTTP 503 while loading) and `load()` gives the engine; a failed
    load stops the server and is raised."""
    server = await start_server(engine, config)
    port = server.sockets[0].getsockname()[1]
    log.info("diffill listening on %s:%d: websocket ws://%s:%d/, HTTP /v1/completions, /v1/fim/completions, "
             "/infill, /v1/models, /healthz", config.host, port, config.host, port)
    if ready is not None:
        ready(port)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    loading = None
    if load is not None:
        loading = asyncio.ensure_future(run_in_slot(engine, load))
        loading.add_done_callback(lambda t: t.cancelled() or t.exception() is None or stop.done()
                                  or stop.set_exception(t.exception()))
    try:
        await stop
    finally:
        if loading is not None and not loading.done():
            await asyncio.wait([loading])  # a load under way finishes first, else its engine would leak
        server.close()
        await server.wait_closed()
