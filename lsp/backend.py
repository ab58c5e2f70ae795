"""Where completions come from: the in-process engine, or a `diffill serve` over its websocket protocol.

Both take a `fim_server.protocol.InfillRequest` and return an `InfillResult`; cancelling the awaiting
task cancels the request in the engine (in-process: `job.cancel()`; remote: a `cancel` message).
The remote backend reconnects on the next request after the server goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from pathlib import Path

from fim_server.protocol import InfillRequest, InfillResult

log = logging.getLogger("diffill.lsp")


class BackendError(Exception):
    """The backend could not answer (not loaded, server unreachable, engine error)."""


class EmbeddedBackend:
    def __init__(self, model: str | None, device: str = "cpu"):
        self.model, self.device = model, device
        self._engine = None
        self._ready: asyncio.Task | None = None
        self.name = "embedded"

    def start(self) -> None:
        """Begin loading the engine in a thread, so initialize returns at once and the first completion
        does not pay for the load."""
        if self._ready is None:
            self._ready = asyncio.ensure_future(asyncio.to_thread(self._load))

    def _load(self):
        from fim_server.cli import DEFAULT_MODEL  # imports no torch
        from fim_server.engine import Engine  # torch is imported here, in the loader thread

        path = Path(self.model) if self.model else DEFAULT_MODEL
        self._engine = Engine.load(path, device=self.device)
        self.name = self._engine.model_name
        log.info("engine loaded: %s on %s", path, self.device)

    async def infill(self, req: InfillRequest) -> InfillResult:
        self.start()
        try:
            await asyncio.shield(self._ready)
        except Exception as e:
            raise BackendError(f"engine failed to load: {e}") from e
        job = self._engine.submit(req)
        try:
            return await job.result()
        except asyncio.CancelledError:
            job.cancel()
            raise
        except self._engine.Cancelled as e:
            raise asyncio.CancelledError() from e

    async def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


class RemoteBackend:
    def __init__(self, url: str):
        self.url = url
        self.name = url
        self._ws = None
        self._reader: asyncio.Task | None = None
        self._waiting: dict[str, asyncio.Future] = {}
        self._ids = itertools.count()
        self._lock = asyncio.Lock()

    def start(self) -> None:
        pass

    async def _connect(self):
        from websockets.asyncio.client import connect

        async with self._lock:
            if self._ws is None:
                try:
                    self._ws = await asyncio.wait_for(connect(self.url, max_size=None), 5)
                except (OSError, asyncio.TimeoutError) as e:
                    raise BackendError(f"cannot reach {self.url}: {e}") from e
                self._reader = asyncio.ensure_future(self._read(self._ws))
        return self._ws

    async def _read(self, ws) -> None:
        try:
            async for raw in ws:
                msg = json.loads(raw)
                fut = self._waiting.get(msg.get("id"))
                if fut is not None and not fut.done() and msg.get("type") in ("result", "cancelled", "error"):
                    fut.set_result(msg)
        except Exception as e:  # connection lost: fail everything waiting, reconnect next time
            log.warning("connection to %s lost: %s", self.url, e)
        finally:
            self._ws = None
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(BackendError(f"connection to {self.url} lost"))

    async def infill(self, req: InfillRequest) -> InfillResult:
        ws = await self._connect()
        rid = f"{req.id}-{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        body = {"type": "infill", "id": rid, "prefix": req.prefix, "suffix": req.suffix, "language": req.language,
                "max_tokens": req.max_tokens, "stream": False}
        for k in ("steps", "threshold"):
            if getattr(req, k) is not None:
                body[k] = getattr(req, k)
        try:
            await ws.send(json.dumps(body))
            msg = await fut
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await ws.send(json.dumps({"type": "cancel", "id": rid}))
            raise
        except Exception as e:
            raise BackendError(str(e)) from e
        finally:
            self._waiting.pop(rid, None)
        if msg["type"] == "cancelled":
            raise asyncio.CancelledError()
        if msg["type"] == "error":
            raise BackendError(f"{msg['code']}: {msg['message']}")
        return InfillResult(id=req.id, text=msg["text"], valid=msg["valid"], tokens=msg["tokens"],
                            forward_passes=msg["forward_passes"], ms=msg["ms"], repair=msg.get("repair"),
                            context_truncated=msg.get("context_truncated", False))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
