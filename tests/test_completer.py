"""Completion logic without LSP or a model (lsp/completer.py), with a fake backend; and the remote backend's
wire codec against a tiny in-test websocket server (lsp/backend.py). No subprocess, no sleeps."""

import asyncio
import json
from dataclasses import replace

import pytest
from lsprotocol import types
from websockets.asyncio.server import serve

from fim_server.shared.errors import BackendError, EngineError, ProtocolError
from fim_server.shared.protocol import (
    InfillRequest,
    InfillResult,
    cancelled_message,
    error_message,
    parse_client_message,
    result_message,
    update_message,
)
from lsp.backend import RemoteBackend
from lsp.completer import Completer
from lsp.config import Settings

URI = "file:///tmp/diffill_test/c.py"
CALL = "x = foo(1\n"  # cursor at 9, the end of an unfinished call: a single-line completion
AT_CALL = 9
DEF = "def f(x):\n"  # cursor at 9, after a block opener: a multi-line completion
AT_DEF = 9
SETTINGS = Settings()


class FakeBackend:
    """`infill` answers `text`, or raises `error`; while `hold` is set it waits until cancelled (`held` gets
    each request it waits on). It records every request and the ids of those cancelled while held."""

    def __init__(self, text: str = ", 2)", *, hold: bool = False, error: Exception | None = None):
        self.text, self.hold, self.error = text, hold, error
        self.requests: list[InfillRequest] = []
        self.cancelled: list[str] = []
        self.held = asyncio.Queue()

    async def infill(self, req: InfillRequest) -> InfillResult:
        self.requests.append(req)
        if self.hold:
            self.held.put_nowait(req)
            try:
                await asyncio.Future()
            except asyncio.CancelledError:
                self.cancelled.append(req.id)
                raise
        if self.error is not None:
            raise self.error
        return InfillResult(id=req.id, text=self.text, valid=True, tokens=2, forward_passes=1, ms=1.0)


def complete(completer, backend, source=CALL, offset=AT_CALL, uri=URI, settings=SETTINGS) -> asyncio.Task:
    return asyncio.ensure_future(completer.complete(uri, source, offset, "python", settings, backend))


async def answer(task: asyncio.Task):
    """The task's result; a failure, not a hang, when it does not finish (it is not cancelled here)."""
    done, _ = await asyncio.wait([task], timeout=10)
    assert done, "no answer within 10 s"
    return task.result()


async def test_a_newer_request_for_the_document_cancels_the_older():
    completer, backend = Completer(), FakeBackend(hold=True)
    first = complete(completer, backend)
    held = await asyncio.wait_for(backend.held.get(), 10)
    backend.hold = False
    second = complete(completer, backend)
    assert await answer(second) == ", 2)"
    assert await answer(first) is None  # superseded: answered empty
    assert backend.cancelled == [held.id]  # and its request was cancelled in the backend
    assert completer.in_flight == {}


async def test_typing_through_a_suggestion_is_answered_without_the_backend():
    completer, backend = Completer(), FakeBackend(", 2)")
    assert await complete(completer, backend) == ", 2)"
    typed = CALL[:AT_CALL] + ", " + CALL[AT_CALL:]
    assert await complete(completer, backend, typed, AT_CALL + 2) == "2)"
    assert len(backend.requests) == 1


async def test_forget_cancels_the_request_in_flight_and_drops_the_shown_suggestion():
    completer, backend = Completer(), FakeBackend(", 2)")
    other = "file:///tmp/diffill_test/other.py"
    assert await complete(completer, backend) == ", 2)"
    assert await complete(completer, backend, uri=other) == ", 2)"
    backend.hold = True
    pending = complete(completer, backend)
    held = await asyncio.wait_for(backend.held.get(), 10)
    completer.forget(URI)
    assert await answer(pending) is None
    assert backend.cancelled == [held.id]
    assert completer.in_flight == {} and set(completer.shown) == {other}  # nothing kept for the closed one
    backend.hold = False
    typed = CALL[:AT_CALL] + "," + CALL[AT_CALL:]
    await complete(completer, backend, typed, AT_CALL + 1)
    assert len(backend.requests) == 4  # the old suggestion no longer answers typing through it


class Sink:
    """Where the in-process server's answers go (this test reads its state, not its answers)."""

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


async def test_closing_a_document_forgets_it_and_pygls_still_removes_it():
    from lsp.completer import Shown
    from lsp.server import build

    server = build()
    server.protocol.set_writer(Sink())
    server.protocol.handle_message(types.InitializeRequest(id=1, params=types.InitializeParams(
        capabilities=types.ClientCapabilities())))
    server.protocol.handle_message(types.DidOpenTextDocumentNotification(params=types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=URI, language_id="python", version=1, text=CALL))))
    server.completer.shown[URI] = Shown(AT_CALL, CALL[:AT_CALL], CALL[AT_CALL:], ", 2)")
    server.protocol.handle_message(types.DidCloseTextDocumentNotification(params=types.DidCloseTextDocumentParams(
        text_document=types.TextDocumentIdentifier(uri=URI))))
    assert URI not in server.workspace.text_documents
    assert server.completer.shown == {}


@pytest.mark.parametrize("error", [EngineError("boom"), BackendError("cannot reach ws://x"), RuntimeError("bug")])
async def test_a_backend_failure_gives_no_completion_not_an_exception(error):
    completer = Completer()
    assert await complete(completer, FakeBackend(error=error)) is None
    assert completer.in_flight == {} and completer.shown == {}
    assert await complete(completer, FakeBackend(", 2)")) == ", 2)"  # and the next request is served


async def test_the_request_carries_the_settings():
    completer, backend = Completer(), FakeBackend("\n    return x")
    s = Settings(max_tokens=40, single_line_max_tokens=12, steps=7, threshold=0.6).updated({"candidates": 4})
    await complete(completer, backend, settings=s)
    await complete(completer, backend, DEF, AT_DEF, settings=s)
    single, multi = backend.requests
    assert (single.max_tokens, multi.max_tokens) == (12, 40)
    for req in (single, multi):
        assert (req.steps, req.threshold, req.language, req.candidates) == (7, 0.6, "python", 4)
    assert (single.prefix, single.suffix) == (CALL[:AT_CALL], CALL[AT_CALL:])


async def test_a_last_line_without_newline_is_sent_with_one():
    completer, backend = Completer(), FakeBackend(")")
    assert await complete(completer, backend, "print(x", 7) == ")"
    assert backend.requests[0].suffix == "\n"


async def test_a_disabled_language_is_not_sent():
    completer, backend = Completer(), FakeBackend()
    assert await complete(completer, backend, settings=Settings(languages=("javascript",))) is None
    assert backend.requests == []


# ---- RemoteBackend's codec against a scripted websocket server ------------------------------------------
class Scripted:
    """A websocket server that records every message and answers by the request's prefix: "err" -> an error,
    "hold" -> nothing until a cancel comes, "drop" -> cancelled; else an update, then the result "ok"."""

    def __init__(self):
        self.received: list[dict] = []
        self.request_seen, self.cancel_seen = asyncio.Event(), asyncio.Event()

    async def handler(self, ws):
        async for raw in ws:
            self.received.append(json.loads(raw))
            req = parse_client_message(raw)
            if self.received[-1]["type"] == "cancel":
                self.cancel_seen.set()
                await ws.send(json.dumps(cancelled_message(req.id)))
                continue
            self.request_seen.set()
            if req.prefix == "err":
                await ws.send(json.dumps(error_message(ProtocolError("bad_field", "steps must be 1..1024", req.id))))
            elif req.prefix == "drop":
                await ws.send(json.dumps(cancelled_message(req.id)))
            elif req.prefix != "hold":
                await ws.send(json.dumps(update_message(req.id, "o")))
                await ws.send(json.dumps(result_message(InfillResult(req.id, "ok", True, 1, 2, 3.0))))


@pytest.fixture
async def remote():
    scripted = Scripted()
    async with serve(scripted.handler, "127.0.0.1", 0) as srv:
        backend = RemoteBackend(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        yield backend, scripted
        await backend.close()


async def test_remote_forwards_every_field_and_ignores_updates(remote):
    backend, scripted = remote
    req = InfillRequest("a", "x = ", "\n", language="python", max_tokens=5, stream=True, steps=3, threshold=0.5,
                        temperature=0.7)
    res = await backend.infill(req)
    assert (res.id, res.text, res.forward_passes) == ("a", "ok", 2)
    (sent,) = scripted.received
    assert parse_client_message(json.dumps(sent)) == replace(req, id=sent["id"])
    assert sent["temperature"] == 0.7 and sent["stream"] is True


async def test_remote_error_reply_is_a_backend_error_with_the_servers_code(remote):
    backend, _ = remote
    with pytest.raises(BackendError, match="steps must be 1..1024") as e:
        await backend.infill(InfillRequest("a", "err", ""))
    assert e.value.code == "bad_field"


async def test_remote_cancelled_reply_cancels_the_caller(remote):
    backend, _ = remote
    with pytest.raises(asyncio.CancelledError):
        await backend.infill(InfillRequest("a", "drop", ""))


async def test_cancelling_a_remote_request_sends_a_cancel(remote):
    backend, scripted = remote
    task = asyncio.ensure_future(backend.infill(InfillRequest("a", "hold", "")))
    await asyncio.wait_for(scripted.request_seen.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(scripted.cancel_seen.wait(), 10)
    sent, cancel = scripted.received
    assert cancel == {"type": "cancel", "id": sent["id"]}
