"""How `diffill lsp` talks to its client: stdio, or TCP for one client. Thin I/O around lsp/framing.py (bytes
to message bodies, resynchronising after malformed framing) and lsp/protocol.py (`receive` a body).

Contract: `serve_stdio(protocol)` and `serve_tcp(protocol, host, port)` serve until `exit` or the end of the
client's stream, and return the exit code (0 when `shutdown` came first, else 1: LSP). They replace pygls'
read loops, which dropped a message with a lower-case header name, LF line ends or two spaces after the colon,
lost sync for good after one malformed frame, and allocated whatever Content-Length said (MemoryError).

TCP serves one client per process, like stdio: while a client is connected, further connections are closed
at once with a log line, and when the client disconnects the process exits. One process holds one client's
documents and one answer channel; pygls shared both between connections, so a second local connection got
completions built from the first client's documents and the first client's answers, and its disconnect
stopped the server. There is no authentication: keep the default loopback address. The bound address is
logged ("listening on HOST:PORT"), so `--port 0` picks a free port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable

from pygls.io_ import StdoutWriter

from lsp.framing import Deframer, FramingError
from lsp.protocol import DiffillProtocol

log = logging.getLogger("diffill.lsp")

CHUNK = 64 * 1024  # bytes per read


async def serve_stream(read: Callable[[], Awaitable[bytes]], protocol: DiffillProtocol) -> int:
    """Read with `read()` (b"" at the end) until `exit` or the end. -> the exit code."""
    deframer = Deframer()
    protocol.reader = asyncio.current_task()
    try:
        while protocol.exit_code is None and (chunk := await read()):
            deframer.feed(chunk)
            while protocol.exit_code is None and (event := deframer.next_event()) is not None:
                if isinstance(event, FramingError):
                    log.warning("malformed framing: %s", event.message)
                    continue
                try:
                    deframer.unread(protocol.receive(event.data))
                except ConnectionError:  # writing to a client that is gone (BrokenPipeError on stdio)
                    raise
                except Exception:  # a bug of ours must not end the session
                    log.exception("failed to handle a message")
    except ConnectionError as e:
        log.info("the client is gone: %s", e)
    except asyncio.CancelledError:
        if protocol.exit_code is None:
            raise
    return protocol.final_exit_code()


class _StdinChunks:
    """stdin read in a daemon thread (so a read blocked at exit never holds the process), at most a few
    chunks ahead of the event loop."""

    def __init__(self, fd: int):
        self._queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, args=(fd,), name="diffill-stdin", daemon=True).start()

    def _pump(self, fd: int) -> None:
        chunk = b"."
        while chunk:
            try:
                chunk = os.read(fd, CHUNK)
            except OSError:
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(self._queue.put(chunk), self._loop).result()
            except (RuntimeError, asyncio.CancelledError):  # the loop is gone: the server is ending
                return

    async def read(self) -> bytes:
        return await self._queue.get()


def serve_stdio(protocol: DiffillProtocol) -> int:
    protocol.set_writer(StdoutWriter(sys.stdout.buffer))

    async def main() -> int:
        return await serve_stream(_StdinChunks(sys.stdin.fileno()).read, protocol)

    return asyncio.run(main())


def serve_tcp(protocol: DiffillProtocol, host: str, port: int) -> int:
    return asyncio.run(_serve_tcp(protocol, host, port))


async def _serve_tcp(protocol: DiffillProtocol, host: str, port: int) -> int:
    served: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    connected = False

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connected
        peer = writer.get_extra_info("peername")
        if connected:
            log.warning("closed a connection from %s: diffill lsp --tcp serves one client per process, and one "
                        "is connected", peer)
            writer.close()
            return
        connected = True
        log.info("client connected from %s", peer)
        protocol.set_writer(writer)

        async def read() -> bytes:
            try:
                return await reader.read(CHUNK)
            except ConnectionError:
                return b""

        code = 1
        try:
            code = await serve_stream(read, protocol)
        finally:
            writer.close()
            log.info("client %s disconnected: exiting", peer)
            served.set_result(code)

    server = await asyncio.start_server(on_connect, host, port)
    bound = server.sockets[0].getsockname()
    log.info("listening on %s:%d (one client; the process exits when it disconnects)", bound[0], bound[1])
    async with server:
        return await served
