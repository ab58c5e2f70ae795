"""One port, two protocols: every connection to `diffill serve` starts here. A websocket upgrade is handed to
`websockets` (fim_server.server runs the Diffill protocol on it); anything else is HTTP/1.1 (parsed by h11)
and answers the FIM APIs of fim_server.shared.fim_http, `/v1/models` and `/healthz`.

Contract, per HTTP request, in this order: unknown path 404, wrong method 405, a foreign `Origin` 403, no or
wrong bearer token 401 (when the server has one), a body over the size cap 413 (checked on the headers, the
body is never read), the model still loading 503, over the per-client in-flight cap 429, a bad body 400. Errors
come in the API's own shape. A client that disconnects cancels its request in the engine. Keep-alive and
pipelined requests are served in order, one at a time per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from http import HTTPStatus
from urllib.parse import urlsplit

import h11

from fim_server.shared import fim_http
from fim_server.shared.errors import Cancelled, DiffillError
from fim_server.shared.fim_http import ApiError, Call
from fim_server.shared.protocol import PROTOCOL_VERSION, InfillResult

log = logging.getLogger("diffill.http")

MAX_HEAD_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 120.0  # a keep-alive connection with no request for this long is closed

# path -> (methods, API whose error shape it uses)
ROUTES = {
    "/healthz": (("GET",), "openai"),
    "/v1/models": (("GET",), "openai"),
    "/v1/completions": (("POST",), "openai"),
    "/completions": (("POST",), "openai"),  # what clients configured with a base URL without /v1 send
    "/v1/fim/completions": (("POST",), "inception"),
    "/fim/completions": (("POST",), "inception"),
    "/infill": (("POST",), "llamacpp"),
}


class EngineSlot:
    """The engine, or why there is none yet: `diffill serve` listens while the model loads (HTTP 503)."""

    def __init__(self, engine=None):
        self.engine, self.error = engine, None

    def get(self):
        if self.engine is not None:
            return self.engine
        if self.error is not None:
            raise ApiError(503, f"the model failed to load: {self.error}", "load_failed")
        raise ApiError(503, "the model is loading; try again in a moment", "loading", headers={"Retry-After": "1"})


class Front:
    """What every connection shares: the engine, the server's config, and the websocket hand-off."""

    def __init__(self, slot: EngineSlot, config, upgrade: Callable[[asyncio.Transport, bytes], None]):
        self.slot, self.config, self.upgrade = slot, config, upgrade
        self.connections: set[HttpConnection] = set()
        self.in_flight: Counter[str] = Counter()  # per client address
        self.ids = itertools.count()
        self.prefix = os.urandom(4).hex()

    def protocol(self) -> HttpConnection:
        return HttpConnection(self)

    def close(self) -> None:
        for c in list(self.connections):
            c.abort()


class HttpConnection(asyncio.Protocol):
    def __init__(self, front: Front):
        self.front = front
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.transport: asyncio.Transport | None = None
        self.raw: bytearray | None = bytearray()  # bytes before the first request's head: kept for an upgrade
        self.task: asyncio.Task | None = None  # the request being answered
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.skip_body = False
        self.peer = "?"
        self.idle: asyncio.TimerHandle | None = None
        self.waiting = 0  # bytes received while a request is being answered
        self.lingering = False

    # ---- asyncio.Protocol ----------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else str(peer)
        self.front.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return  # refused: what the client still sends is dropped until the connection closes
        if self.raw is not None:
            self.raw += data
        if self.task is not None and not self.task.done():  # a pipelined request waits in h11's buffer
            self.waiting += len(data)
            if self.waiting > self.front.config.max_message_bytes + MAX_HEAD_BYTES:
                log.warning("closing a connection that sent over %d bytes ahead of its answer", self.waiting)
                self.abort()
                return
        self.h11.receive_data(data)
        self._arm_idle()
        self._events()

    def eof_received(self):
        if self.lingering:
            return None
        self.h11.receive_data(b"")
        self._events()
        return None  # close the transport

    def connection_lost(self, exc) -> None:
        self.front.connections.discard(self)
        if self.idle is not None:
            self.idle.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: its request is cancelled in the engine

    def abort(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            self.transport.close()

    def _arm_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        self.idle = asyncio.get_running_loop().call_later(IDLE_TIMEOUT_S, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self.task is None or self.task.done():
            self.transport.close()

    # ---- reading requests ----------------------------------------------------------------------------------
    def _events(self) -> None:
        while (self.task is None or self.task.done()) and not self.lingering:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                status = 431 if "too long" in str(e) or "too large" in str(e).lower() else e.error_status_hint
                self._fail(status, f"bad HTTP request: {e}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return
            if isinstance(event, h11.Request):
                if self.raw is not None and _is_websocket(event):
                    raw, self.raw = bytes(self.raw), None
                    self.front.connections.discard(self)
                    if self.idle is not None:
                        self.idle.cancel()
                    self.front.upgrade(self.transport, raw)
                    return
                self.raw = None
                self._head(event)
            elif isinstance(event, h11.Data):
                if not self.skip_body:
                    self.body += event.data
                    if len(self.body) > self.front.config.max_message_bytes:  # a chunked body with no length
                        self._refuse(ApiError(413, self._too_large(len(self.body)), "too_large"))
                        self.skip_body = True
            elif isinstance(event, h11.EndOfMessage):
                if self.skip_body:
                    continue  # already answered
                self.task = asyncio.ensure_future(self._answer(self.request, bytes(self.body)))
                self.task.add_done_callback(self._answered)

    def _head(self, request: h11.Request) -> None:
        self.request, self.body, self.skip_body = request, bytearray(), False
        try:
            self._check_head(request)
        except ApiError as e:
            self._refuse(e)
            self.skip_body = True
            return
        if self.h11.they_are_waiting_for_100_continue:  # curl asks before sending a body over 1 KB
            self._send(h11.InformationalResponse(status_code=100, headers=[]))

    def _too_large(self, n: int) -> str:
        return f"request body of {n} bytes is over the {self.front.config.max_message_bytes}-byte cap"

    def _check_head(self, request: h11.Request) -> None:
        if request.http_version not in (b"1.0", b"1.1"):
            raise ApiError(505, f"HTTP/{request.http_version.decode()} is not spoken here: HTTP/1.1", "bad_http")
        path, method = _path(request), request.method.decode()
        headers = _headers(request)
        if path not in ROUTES:
            raise ApiError(404, f"no such endpoint: {path}; this server answers {', '.join(ROUTES)}", "not_found")
        origin = headers.get("origin")
        if method == "OPTIONS" and origin in self.front.config.allowed_origins:
            return  # a CORS preflight from an allowed page: answered in _answer
        methods = ROUTES[path][0]
        if method not in methods:
            raise ApiError(405, f"{path} takes {' or '.join(methods)}, not {method}", "method_not_allowed",
                           headers={"Allow": ", ".join(methods)})
        if path == "/healthz":
            return
        if origin is not None and origin not in self.front.config.allowed_origins:
            log.warning("refused an HTTP request from origin %r", origin)
            raise ApiError(403, f"origin {origin} is not allowed", "forbidden_origin")
        token = self.front.config.token
        if token is not None:
            auth = headers.get("authorization", "")
            given = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN'", "unauthorized")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.front.config.max_message_bytes:
            raise ApiError(413, self._too_large(int(length)), "too_large")

    # ---- answering -----------------------------------------------------------------------------------------
    def _answered(self, task: asyncio.Task) -> None:
        if task.cancelled() or self.transport.is_closing():
            return
        if exc := task.exception():
            log.error("HTTP request failed", exc_info=exc)
            self.transport.close()
            return
        self._next()

    def _next(self) -> None:
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self.transport.close()
            return
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            self.waiting = 0
            self._events()

    def _refuse(self, e: ApiError) -> None:
        """An error answered before the body was read: the connection closes after it."""
        api = ROUTES.get(_path(self.request), (None, "openai"))[1] if self.request else "openai"
        self._send_json(e.status, e.body(api), {**e.headers, "Connection": "close"})
        self._linger()

    def _fail(self, status: int, message: str) -> None:
        with contextlib.suppress(h11.LocalProtocolError):
            self._send_json(status, ApiError(status, message, "bad_http").body("openai"), {"Connection": "close"})
        self._linger()

    def _linger(self) -> None:
        """Close after an early answer without losing it: closing a socket with unread input resets the
        connection, and a client still sending its body would never read the answer. So: end our side
        (FIN after the answer), drop what still comes, and close 2 s later (or when the client does)."""
        self.lingering = True
        if self.idle is not None:
            self.idle.cancel()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(2.0, self.transport.close)

    def _send(self, event) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.h11.send(event))

    def _start(self, status: int, content_type: str, length: int | None, extra: dict[str, str]) -> None:
        headers = [("Content-Type", content_type)]
        if length is not None:
            headers.append(("Content-Length", str(length)))
        origin = _headers(self.request).get("origin") if self.request is not None else None
        if origin is not None and origin in self.front.config.allowed_origins:
            headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        headers += list(extra.items())
        self._send(h11.Response(status_code=status, headers=headers, reason=_reason(status)))

    def _send_json(self, status: int, body: dict, extra: dict[str, str] | None = None) -> None:
        data = (_dumps(body) + "\n").encode()
        self._start(status, "application/json", len(data), extra or {})
        self._send(h11.Data(data=data))
        self._send(h11.EndOfMessage())

    def _event(self, body: dict | str) -> None:
        data = body if isinstance(body, str) else _dumps(body)
        self._send(h11.Data(data=f"data: {data}\n\n".encode()))

    async def _answer(self, request: h11.Request, body: bytes) -> None:
        path, method = _path(request), request.method.decode()
        api = ROUTES[path][1]
        try:
            if method == "OPTIONS":
                self._send(h11.Response(status_code=204, headers=[
                    ("Access-Control-Allow-Origin", _headers(request)["origin"]),
                    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
                    ("Access-Control-Allow-Headers", "Authorization, Content-Type"),
                    ("Access-Control-Max-Age", "600"), ("Content-Length", "0")], reason=b"No Content"))
                self._send(h11.EndOfMessage())
                return
            if path == "/healthz":
                try:
                    engine = self.front.slot.get()
                except ApiError as e:
                    self._send_json(503, {"status": e.code, "message": e.message, "version": PROTOCOL_VERSION})
                    return
                self._send_json(200, {"status": "ok", "model": engine.model_name, "device": engine.device,
                                      "version": PROTOCOL_VERSION})
                return
            engine = self.front.slot.get()
            if path == "/v1/models":
                self._send_json(200, fim_http.models_response(engine.model_name, fim_http.created_now()))
                return
            rid = f"http-{self.front.prefix}-{next(self.front.ids)}"
            call = (fim_http.parse_infill(body, rid) if api == "llamacpp"
                    else fim_http.parse_openai(body, rid, api))
            if call.req.language is None and self.front.config.http_language:  # turns the syntax check on
                call = replace(call, req=replace(call.req, language=self.front.config.http_language))
            if call.warm_only:  # llama.cpp would only cache the prompt; `input_extra` is not used yet
                empty = InfillResult(id=rid, text="", valid=None, tokens=0, forward_passes=0, ms=0.0)
                self._send_json(200, fim_http.infill_response(call, engine.model_name, "", None, empty))
                return
            if self.front.in_flight[self.peer] >= self.front.config.max_in_flight:
                raise ApiError(429, f"{self.front.config.max_in_flight} requests from this client already in "
                               "flight", "too_many_in_flight", headers={"Retry-After": "1"})
            self.front.in_flight[self.peer] += 1
            try:
                await self._complete(engine, call)
            finally:
                self.front.in_flight[self.peer] -= 1
                if not self.front.in_flight[self.peer]:
                    del self.front.in_flight[self.peer]
        except ApiError as e:
            self._send_json(e.status, e.body(api), e.headers)
        except DiffillError as e:
            err = ApiError.from_diffill(e)
            if self.h11.our_state is h11.SEND_BODY:  # mid-stream: an error event, then the end
                self._event(err.body(api))
                self._send(h11.EndOfMessage())
            else:
                self._send_json(err.status, err.body(api))

    async def _complete(self, engine, call: Call) -> None:
        model = engine.model_name
        cid, created = f"cmpl-{call.req.id}", fim_http.created_now()
        stream = call.req.stream
        on_update = None
        if stream:
            self._start(200, "text/event-stream", None, {"Cache-Control": "no-cache"})
            out = fim_http.AppendOnly(call.stops)

            usage = call.include_usage

            def on_update(draft: str) -> None:
                if delta := out.delta(draft):
                    self._event(fim_http.infill_chunk(delta) if call.api == "llamacpp"
                                else fim_http.openai_chunk(cid, created, model, delta, None, with_usage=usage))

            if call.echo:
                self._event(fim_http.openai_chunk(cid, created, model, call.echo, None, with_usage=usage))
        job = engine.submit(call.req, on_update=on_update, owner=self)
        try:
            result = await job.result()
        except Cancelled as e:  # the engine closed under it
            raise DiffillError(str(e), code="closed") from e
        text, stopped = fim_http.cut_at_stop(result.text, call.stops)
        reason = fim_http.finish_reason(call, result.tokens, stopped)
        if not stream:  # Server-Timing: the engine's share of the request (benches subtract it)
            self._send_json(200, fim_http.infill_response(call, model, text, stopped, result) if call.api == "llamacpp"
                            else fim_http.openai_response(call, cid, created, model, text, reason, result),
                            {"Server-Timing": f"engine;dur={result.ms}"})
            return
        rest = out.end(text)
        if rest is None:
            log.warning("request %s: the final check changed text already streamed (%r -> %r)",
                        call.req.id, out.sent, text)
            engine.stats["stream_diverged"] = engine.stats.get("stream_diverged", 0) + 1
            rest = ""
        if call.api == "llamacpp":  # as llama.cpp: the text in partial chunks, the final one without it
            if rest:
                self._event(fim_http.infill_chunk(rest, result.tokens))
            self._event(fim_http.infill_response(call, model, "", stopped, result))
        else:
            self._event(fim_http.openai_chunk(cid, created, model, rest, reason, with_usage=call.include_usage))
            if call.include_usage:
                self._event(fim_http.openai_usage_chunk(cid, created, model, result))
            self._event("[DONE]")
        self._send(h11.EndOfMessage())


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Client Closed Request" if status == 499 else b""


def _dumps(body: dict) -> str:
    """Compact, on one line: llama.vim looks for '"content":"' with no space, and Vim reads line by line."""
    return json.dumps(body, separators=(",", ":"))


def _is_websocket(request: h11.Request) -> bool:
    if request.method != b"GET":
        return False
    headers = _headers(request)
    return headers.get("upgrade", "").lower() == "websocket"


def _headers(request: h11.Request) -> dict[str, str]:
    return {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}


def _path(request: h11.Request) -> str:
    return urlsplit(request.target.decode("latin-1")).path


async def run_in_slot(slot: EngineSlot, load: Callable[[], Awaitable[object]]) -> None:
    """Fill `slot` with what `load` gives; a failure is kept in the slot (HTTP 503 says why) and re-raised."""
    try:
        slot.engine = await load()
    except Exception as e:
        slot.error = f"{type(e).__name__}: {e}"
        raise
