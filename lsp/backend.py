"""Where completions come from: the in-process engine, or a `diffill serve` over its websocket protocol.

Both take a `fim_server.shared.protocol.InfillRequest` and return an `InfillResult` (and an `EditRequest` ->
`EditResult` for multi-line edits); cancelling the awaiting task cancels the request in the engine
(in-process: `job.cancel()`; remote: a `cancel` message).
The remote backend reconnects on the next request after the server goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from pathlib import Path

from fim_server.shared.paths import DEFAULT_MODEL
from fim_server.shared.protocol import EditRequest, EditResult, InfillRequest, InfillResult, RegionResult

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
        from fim_server.engine import Engine  # torch is imported here, in the loader thread

        path = Path(self.model) if self.model else DEFAULT_MODEL
        self._engine = Engine.load(path, device=self.device)
        self.name = self._engine.model_name
        log.info("engine loaded: %s on %s", path, self.device)

    async def infill(self, req: InfillRequest) -> InfillResult:
        await self._loaded()
        return await self._run(self._engine.submit(req))

    async def edit(self, req: EditRequest) -> EditResult:
        await self._loaded()
        try:
            job = self._engine.submit_edit(req)
        except self._engine.RequestError as e:
            raise BackendError(str(e)) from e
        return await self._run(job)

    async def _loaded(self) -> None:
        self.start()
        try:
            await asyncio.shield(self._ready)
        except Exception as e:
            raise BackendError(f"engine failed to load: {e}") from e

    async def _run(self, job):
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
                if fut is not None and not fut.done() and \
                        msg.get("type") in ("result", "edit_result", "cancelled", "error"):
                    fut.set_result(msg)
        except Exception as e:  # connection lost: fail everything waiting, reconnect next time
            log.warning("connection to %s lost: %s", self.url, e)
        finally:
            self._ws = None
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(BackendError(f"connection to {self.url} lost"))

    async def infill(self, req: InfillRequest) -> InfillResult:
        body = {"type": "infill", "prefix": req.prefix, "suffix": req.suffix, "language": req.language,
                "max_tokens": req.max_tokens, "stream": False}
        msg = await self._ask(req, body)
        return InfillResult(id=req.id, text=msg["text"], valid=msg["valid"], tokens=msg["tokens"],
                            forward_passes=msg["forward_passes"], ms=msg["ms"], repair=msg.get("repair"),
                            context_truncated=msg.get("context_truncated", False))

    async def edit(self, req: EditRequest) -> EditResult:
        body = {"type": "edit", "text": req.text, "language": req.language,
                "regions": [{"start": r.start, "end": r.end, "mode": r.mode, "max_tokens": r.max_tokens}
                            for r in req.regions]}
        if req.revise_threshold is not None:
            body["revise_threshold"] = req.revise_threshold
        msg = await self._ask(req, body)
        regions = tuple(RegionResult(start=g["start"], end=g["end"], text=g["text"], changed=g["changed"],
                                     valid=g["valid"], tokens=g["tokens"], repair=g.get("repair"),
                                     remasked=g.get("remasked")) for g in msg["regions"])
        return EditResult(id=req.id, regions=regions, errors_before=msg["errors_before"],
                          errors_after=msg["errors_after"], forward_passes=msg["forward_passes"], ms=msg["ms"],
                          context_truncated=msg.get("context_truncated", False))

    async def _ask(self, req: InfillRequest | EditRequest, body: dict) -> dict:
        """Send one request, wait for its final message (a cancel goes out if the waiting task is cancelled)."""
        ws = await self._connect()
        rid = f"{req.id}-{next(self._ids)}"
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        body = {**body, "id": rid}
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
        return msg

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
