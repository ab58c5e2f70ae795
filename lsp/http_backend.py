"""A completion backend over one of the HTTP FIM APIs (fim_server.shared.fim_http): OpenAI-style
`/v1/completions` with `suffix` ("openai"), Inception's `/v1/fim/completions` ("inception", Mercury Coder),
llama.cpp's `/infill` ("llamacpp"). Any server speaking them will do: a hosted API, a llama.cpp box, another
`diffill serve`.

Contract: `infill(req)` -> `InfillResult` whose text has been through the same tree-sitter check the engine
applies (fim_server.shared.finalize.settle: kept, trimmed to its valid leading lines, or dropped); what the language
server does afterwards (typing-through, shaping) is the same for every backend. Only an engine can repair by
re-masking, so `repair` is never "remask" here, and multi-line edits need the engine (`edit` raises
BackendError "unsupported"). Cancelling the awaiting task aborts the HTTP request (its connection is closed);
a request that takes longer than `timeout_s` raises BackendError "timeout". The API key goes in the
`Authorization: Bearer` header and nowhere else (never logged). Connections are kept alive and reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from fim_server.shared import fim_http
from fim_server.shared.errors import BackendError, DiffillError, ProtocolError
from fim_server.shared.finalize import settle
from fim_server.shared.protocol import EditRequest, EditResult, InfillRequest, InfillResult

log = logging.getLogger("diffill.lsp")

MAX_ANSWER_BYTES = 4 * 1024 * 1024


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    h11: h11.Connection

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def endpoint(base: str, api: str) -> tuple[str, str]:
    """-> (the URL the requests go to, its path). `base` is the server (`http://host:port`, or with `/v1`),
    or the endpoint itself."""
    path = fim_http.PATHS[api]
    url = urlsplit(base)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"not an http(s) URL: {base!r}")
    have = url.path.rstrip("/")
    if have.endswith(path):
        full = have
    elif have.endswith("/v1") and path.startswith("/v1/"):
        full = have + path[3:]
    else:
        full = have + path
    return f"{url.scheme}://{url.netloc}{full}", full


class HttpBackend:
    def __init__(self, url: str, api: str = "openai", *, api_key: str | None = None, model: str | None = None,
                 timeout_s: float = 10.0):
        if api not in fim_http.APIS:
            raise ValueError(f"unknown backend {api!r}; expected one of {fim_http.APIS}")
        self.url, self.api, self.model, self.timeout_s = url, api, model, timeout_s
        self.full_url, self.path = endpoint(url, api)
        parts = urlsplit(url)
        self.host, self.tls = parts.hostname, parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self._key = api_key
        self._idle: list[_Conn] = []
        self.name = f"{api} {self.full_url}"

    def __repr__(self) -> str:  # never shows the key
        return f"HttpBackend({self.full_url!r}, {self.api!r})"

    def start(self) -> None:
        pass

    async def edit(self, req: EditRequest) -> EditResult:
        raise BackendError(f"multi-line edits need a Diffill engine (in-process or ws://); the {self.api} "
                           "backend only completes", code="unsupported", id=req.id)

    def prefetch(self, req: InfillRequest) -> None:
        """The HTTP FIM APIs have no message for "a request is coming": nothing is sent."""

    async def infill(self, req: InfillRequest) -> InfillResult:
        _, body = fim_http.client_request(self.api, req, self.model)
        t0 = time.perf_counter()
        try:
            status, raw = await asyncio.wait_for(self._post(body), self.timeout_s)
        except asyncio.TimeoutError:
            raise BackendError(f"{self.full_url} did not answer within {self.timeout_s:g} s", code="timeout",
                               id=req.id) from None
        except (OSError, h11.ProtocolError, EOFError) as e:
            raise BackendError(f"cannot reach {self.full_url}: {e}", id=req.id) from e
        try:
            text, tokens = fim_http.client_text(self.api, status, raw)
        except ProtocolError as e:
            raise BackendError(f"{self.full_url}: {e}", code="bad_reply", id=req.id) from e
        except DiffillError as e:
            raise BackendError(f"{self.full_url}: {e}", code=e.code, id=req.id) from e
        text, valid, repair = settle(req.language, req.prefix, text, req.suffix)
        return InfillResult(id=req.id, text=text, valid=valid, tokens=tokens, forward_passes=0,
                            ms=round((time.perf_counter() - t0) * 1000, 2), repair=repair)

    async def _post(self, body: dict) -> tuple[int, bytes]:
        """POST `body` as JSON; -> (status, answer bytes). A kept-alive connection the server closed
        meanwhile is retried once on a new one."""
        data = json.dumps(body).encode()
        while self._idle:
            conn = self._idle.pop()
            try:
                return await self._exchange(conn, data)
            except (OSError, EOFError, h11.ProtocolError):
                conn.close()  # stale: the server closed it while idle
        return await self._exchange(await self._open(), data)

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=True if self.tls else None)
        return _Conn(reader, writer, h11.Connection(h11.CLIENT))

    async def _exchange(self, conn: _Conn, data: bytes) -> tuple[int, bytes]:
        done = False
        try:
            headers = [("Host", self.host if self.port in (80, 443) else f"{self.host}:{self.port}"),
                       ("Content-Type", "application/json"), ("Accept", "application/json"),
                       ("Content-Length", str(len(data))), ("User-Agent", "diffill-lsp")]
            if self._key:
                headers.append(("Authorization", f"Bearer {self._key}"))
            conn.writer.write(conn.h11.send(h11.Request(method="POST", target=self.path, headers=headers)))
            conn.writer.write(conn.h11.send(h11.Data(data=data)))
            conn.writer.write(conn.h11.send(h11.EndOfMessage()))
            await conn.writer.drain()
            status, answer = 0, bytearray()
            while True:
                event = conn.h11.next_event()
                if event is h11.NEED_DATA:
                    chunk = await conn.reader.read(65536)
                    conn.h11.receive_data(chunk)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    answer += event.data
                    if len(answer) > MAX_ANSWER_BYTES:
                        raise BackendError(f"{self.full_url}: answer over {MAX_ANSWER_BYTES} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise EOFError("connection closed before the answer")
            if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
                conn.h11.start_next_cycle()
                self._idle.append(conn)
                done = True
            return status, bytes(answer)
        finally:
            if not done:
                conn.close()  # cancelled, failed or not reusable: the request is aborted with it

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()
