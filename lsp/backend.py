"""Where completions come from: the in-process engine, or a `diffill serve` over its websocket protocol.

Both take a `fim_server.shared.protocol.InfillRequest` and return an `InfillResult` (and an `EditRequest` ->
`EditResult` for multi-line edits). Cancelling the awaiting task cancels the request in the engine
(in-process: the engine does it; remote: a `cancel` message); a request the engine cancelled raises
`asyncio.CancelledError`. A request that cannot be answered raises a `DiffillError`: `BackendError` when
the engine is not loaded, the server is unreachable, or the server answered an error (its code kept).
The remote backend speaks only through `fim_server.shared.protocol`'s codec (every request field is
forwarded; `update` messages are ignored) and reconnects on the next request after the server goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

from fim_server.shared.errors import BackendError, Cancelled, ProtocolError, RequestError
from fim_server.shared.paths import DEFAULT_MODEL
from fim_server.shared.protocol import (
    MAX_MESSAGE_BYTES,
    CancelledReply,
    CancelRequest,
    EditRequest,
    EditResult,
    ErrorReply,
    InfillRequest,
    InfillResult,
    PrefetchRequest,
    Update,
    parse_server_message,
    request_message,
)

__all__ = ["BackendError", "EmbeddedBackend", "RemoteBackend", "make_backend"]

log = logging.getLogger("diffill.lsp")


class EmbeddedBackend:
    def __init__(self, model: str | None, device: str = "cpu"):
        self.model, self.device = model, device
        self._engine = None
        self._ready: asyncio.Future | None = None
        self.name = "embedded"

    def start(self) -> None:
        """Begin loading the engine in a thread, so initialize returns at once and the first completion
        does not pay for the load."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(asyncio.to_thread(self._load))

    def _load(self) -> None:
        from fim_server.engine import Engine  # torch is imported here, in the loader thread

        path = Path(self.model) if self.model else DEFAULT_MODEL
        self._engine = Engine.load(path, device=self.device)
        self.name = self._engine.model_name
        log.info("engine loaded: %s on %s", path, self.device)

    async def infill(self, req: InfillRequest) -> InfillResult:
        engine = await self._loaded()
        return await _result(engine.submit(req))

    async def edit(self, req: EditRequest) -> EditResult:
        engine = await self._loaded()
        try:
            job = engine.submit_edit(req)
        except RequestError as e:
            raise BackendError(str(e), code=e.code, id=req.id) from e
        return await _result(job)

    def prefetch(self, req: InfillRequest) -> None:
        """`req` is about to come: the engine prefills its context while idle. Before the model has loaded,
        nothing (the request will wait for the load anyway)."""
        if self._engine is not None:
            self._engine.prefetch(req)

    async def _loaded(self):
        self.start()
        try:
            await asyncio.shield(self._ready)
        except Exception as e:
            raise BackendError(f"engine failed to load: {e}") from e
        return self._engine

    async def close(self) -> None:
        if self._ready is not None:
            await asyncio.wait([self._ready])  # a load under way finishes first, else its engine would leak
        if self._engine is not None:
            await self._engine.aclose()


async def _result(job):
    try:
        return await job.result()  # cancelling this task cancels the job (the engine sees to it)
    except Cancelled as e:
        raise asyncio.CancelledError() from e


class RemoteBackend:
    def __init__(self, url: str):
        self.url = url
        self.name = url
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._waiting: dict[str, asyncio.Future] = {}  # wire id -> its final reply
        self._ids = itertools.count()
        self._lock = asyncio.Lock()
        self._sending: set[asyncio.Task] = set()  # prefetch hints on their way (a task needs a reference)

    def start(self) -> None:
        pass

    async def _connect(self):
        from websockets.asyncio.client import connect
        from websockets.exceptions import WebSocketException

        async with self._lock:
            if self._ws is None:
                try:
                    self._ws = await asyncio.wait_for(connect(self.url, max_size=None), 5)
                except (OSError, asyncio.TimeoutError, WebSocketException) as e:
                    raise BackendError(f"cannot reach {self.url}: {e}") from e
                self._reader = asyncio.ensure_future(self._read(self._ws))
        return self._ws

    async def _read(self, ws) -> None:
        try:
            async for raw in ws:
                try:
                    reply = parse_server_message(raw)
                except ProtocolError as e:
                    log.warning("%s: %s", self.url, e)
                    continue
                if isinstance(reply, Update):
                    continue  # a draft; only the final answer matters here
                fut = self._waiting.get(reply.id)
                if fut is not None and not fut.done():
                    fut.set_result(reply)
                elif isinstance(reply, ErrorReply):
                    log.info("%s: an error for no request waiting: %s: %s", self.url, reply.code, reply.message)
        except Exception as e:  # connection lost: fail everything waiting, reconnect next time
            log.warning("connection to %s lost: %s", self.url, e)
        finally:
            self._ws = None
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(BackendError(f"connection to {self.url} lost"))

    async def infill(self, req: InfillRequest) -> InfillResult:
        return await self._ask(req)

    async def edit(self, req: EditRequest) -> EditResult:
        return await self._ask(req)

    def prefetch(self, req: InfillRequest) -> None:
        """`req` is about to come: a `prefetch` message, so the server prefills its context while idle. A hint:
        sent in the background, its failure only logged (the request itself reports a lost connection)."""
        task = asyncio.ensure_future(self._hint(req))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _hint(self, req: InfillRequest) -> None:
        body = json.dumps(request_message(PrefetchRequest(req)))
        if len(body) > MAX_MESSAGE_BYTES:
            return
        try:
            ws = await self._connect()
            await ws.send(body)
        except Exception as e:
            log.debug("prefetch to %s not sent: %s", self.url, e)

    async def _ask(self, req):
        """Send one request, wait for its final reply (a cancel goes out if the waiting task is cancelled).
        On the wire the id gets a per-connection suffix, so two requests with the same id never clash."""
        rid = f"{req.id}-{next(self._ids)}"
        body = json.dumps(request_message(replace(req, id=rid)))
        if len(body) > MAX_MESSAGE_BYTES:  # the server would answer an error it could not tie to this request
            raise BackendError(f"request of {len(body)} characters is over the {MAX_MESSAGE_BYTES} cap",
                               code="too_large", id=req.id)
        ws = await self._connect()
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            await ws.send(body)
            reply = await fut
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await ws.send(json.dumps(request_message(CancelRequest(rid))))
            raise
        except BackendError:
            raise
        except Exception as e:  # the connection closed under send
            raise BackendError(f"connection to {self.url} lost: {e}", id=req.id) from e
        finally:
            self._waiting.pop(rid, None)
        if isinstance(reply, CancelledReply):
            raise asyncio.CancelledError()
        if isinstance(reply, ErrorReply):
            raise BackendError(reply.message, code=reply.code, id=req.id)
        return replace(reply, id=req.id)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()


def make_backend(settings):
    """The backend the settings name: no URL, the in-process engine; ws(s)://, a `diffill serve`; http(s)://,
    an HTTP FIM API (`settings.backend`, default "openai"). Raises ValueError for a URL that cannot work."""
    url = settings.server_url
    if not url:
        return EmbeddedBackend(settings.model, settings.device)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("ws", "wss"):
        return RemoteBackend(url)
    if scheme in ("http", "https"):
        from lsp.http_backend import HttpBackend

        key = settings.api_key or os.environ.get("DIFFILL_API_KEY") or None
        return HttpBackend(url, settings.backend or "openai", api_key=key, model=settings.remote_model)
    raise ValueError(f"serverUrl {url!r} must start with ws://, wss://, http:// or https://")
