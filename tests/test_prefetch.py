"""Cold requests and prefetch: a cold request is answered with a shorter window and its full window is prefilled
while the engine is idle; a prefetch hint (engine, websocket, language server) prefills a request's context
before the request comes. Both leave every answer what it would have been with the same window."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace

import pytest
import torch
from lsprotocol import types
from websockets.asyncio.client import connect

from fim_server.decoder import DecodeConfig, Decoder, reference_infill
from fim_server.engine import PREFILL_CHUNK
from fim_server.shared.protocol import (
    EditRegion,
    EditRequest,
    InfillRequest,
    InfillResult,
    PrefetchRequest,
    parse_client_message,
    request_message,
)
from lsp.completer import Completer
from lsp.config import Settings

# a file longer than the shipped model's 512-token window, cursor inside a call on its last line
LONG = "".join(f"def area_{i}(width, height):\n    scale = {i}\n    return width * height * scale\n\n\n"
               for i in range(60)) + "print(area_3(2, "
TAIL = ")\n"


def drain(decoder: Decoder) -> None:
    """What the engine's idle worker does, chunk by chunk, until nothing is queued ahead."""
    with torch.inference_mode():
        while decoder.work_ahead:
            decoder.prefill_ahead(PREFILL_CHUNK)


@pytest.fixture
def shipped_decoder(shipped_engine):
    model, tok = shipped_engine.model, shipped_engine.tok
    return lambda **kw: Decoder(model, tok, config=DecodeConfig(**kw))


def test_a_cold_request_gets_the_short_window_and_typing_after_it_the_full_one(shipped_decoder):
    dec = shipped_decoder(cold_window=256)
    cold = reference_infill(dec, InfillRequest("c", LONG, TAIL, "python", max_tokens=24))
    assert cold.context_tokens <= 256 and cold.context_truncated
    assert dec.work_ahead  # the full window is queued, not computed in the request
    drain(dec)
    typed = reference_infill(dec, InfillRequest("t", LONG + "3", TAIL, "python", max_tokens=24))
    assert typed.context_tokens > 400  # the model's whole window ...
    assert typed.cached_tokens >= typed.context_tokens - 4  # ... found in the cache: only the typed end is new
    assert not dec.work_ahead


def test_typing_before_the_full_window_is_grown_stays_on_the_cached_short_one(shipped_decoder):
    dec = shipped_decoder(cold_window=256)
    reference_infill(dec, InfillRequest("c", LONG, TAIL, "python", max_tokens=24))
    typed = reference_infill(dec, InfillRequest("t", LONG + "3", TAIL, "python", max_tokens=24))
    assert typed.context_tokens <= 256 and typed.cached_tokens >= typed.context_tokens - 4


def test_the_window_is_the_full_one_when_it_fits_or_the_setting_is_off(shipped_decoder):
    short = InfillRequest("s", "def f(x):\n    return x +", "\n", "python", max_tokens=24)
    for dec, req in ((shipped_decoder(cold_window=256), short),
                     (shipped_decoder(cold_window=0), InfillRequest("l", LONG, TAIL, "python", max_tokens=24))):
        res = reference_infill(dec, req)
        assert res.cached_tokens <= 1 and not dec.work_ahead
        assert res.context_tokens == len(dec.build_context(req.prefix, req.suffix, 24, dec.config.heal).ids)
    assert res.context_tokens > 400


def test_edit_regions_always_use_the_full_window(shipped_decoder):
    dec = shipped_decoder(cold_window=256)
    text = LONG + TAIL
    m = dec.region(EditRequest("e", text, (EditRegion(len(LONG), len(LONG), "fill", 16),), "python"), 0)
    with torch.inference_mode():
        dec.admit(m)
    assert len(m.ctx_ids) > 400 and not dec.work_ahead


def test_a_prefetched_request_finds_its_context_cached_and_answers_the_same(shipped_decoder):
    req = InfillRequest("p", LONG, TAIL, "python", max_tokens=24)
    alone = reference_infill(shipped_decoder(cold_window=0), req)
    dec = shipped_decoder(cold_window=0)
    dec.warm(req)  # only tokenizes: the prefill is the idle worker's
    assert dec.work_ahead and dec.stats["prefill_tokens"] == 0
    drain(dec)
    got = reference_infill(dec, req)
    assert got.cached_tokens == got.context_tokens - 1  # only <fim_middle> is recomputed, as always
    assert (got.text, got.context_tokens) == (alone.text, alone.context_tokens)


def test_a_prefetch_readies_the_short_window_first_then_the_full_one(shipped_decoder):
    dec = shipped_decoder(cold_window=256)
    req = InfillRequest("p", LONG, TAIL, "python", max_tokens=24)
    dec.warm(req)
    short_ids, full_ids = dec._ahead
    assert len(short_ids) <= 256 < len(full_ids)
    drain(dec)  # the engine had time for both: the request gets the full window, all of it cached
    got = reference_infill(dec, req)
    assert (got.context_tokens, got.cached_tokens) == (len(full_ids), len(full_ids) - 1)


def test_a_request_arriving_mid_prefetch_uses_what_is_done(shipped_decoder):
    dec = shipped_decoder()
    req = InfillRequest("p", LONG, TAIL, "python", max_tokens=24)
    dec.warm(req)
    with torch.inference_mode():
        dec.prefill_ahead(PREFILL_CHUNK)  # one chunk, then the request comes
    got = reference_infill(dec, req)
    assert got.cached_tokens == PREFILL_CHUNK


def test_a_failed_prefill_ahead_is_not_retried(shipped_decoder, monkeypatch):
    dec = shipped_decoder()
    dec.warm(InfillRequest("p", LONG, TAIL, "python", max_tokens=24))

    def boom(ids):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(dec.cache, "prefill", boom)
    with pytest.raises(RuntimeError):
        dec.prefill_ahead(PREFILL_CHUNK)
    assert not dec.work_ahead  # the worker would otherwise try it again forever


# ---- the engine: hints go through the worker's queue, prefilled while it is idle ---------------------------------
async def test_engine_prefetch_then_infill(shipped_engine):
    shipped_engine.clear_cache()
    req = InfillRequest("ep", LONG, TAIL, "python", max_tokens=24)
    shipped_engine.prefetch(req)
    assert await asyncio.to_thread(shipped_engine.idle.wait, 30)  # idle again once the context is prefilled
    res = await shipped_engine.infill(req)
    assert res.cached_tokens == res.context_tokens - 1 and res.text.strip()


async def test_a_failing_prefetch_costs_the_next_request_nothing(shipped_engine, monkeypatch, caplog):
    def boom(req):
        raise ValueError("bad hint")

    monkeypatch.setattr(shipped_engine.decoder, "warm", boom)
    with caplog.at_level(logging.ERROR, logger="diffill.engine"):
        shipped_engine.prefetch(InfillRequest("bad", "x = ", "\n"))
        assert await asyncio.to_thread(shipped_engine.idle.wait, 30)  # the worker took the hint, alone
        res = await shipped_engine.infill(InfillRequest("ok", "def f(x):\n    return x +", "\n", "python"))
    assert res.text.strip() and "prefetching bad failed" in caplog.text


async def test_hints_queued_together_keep_the_newest_and_a_request_beside_them_drops_them(tokenizer):
    from tests.fakes import scripted_engine, text_script

    eng = scripted_engine(tokenizer, text_script(tokenizer, "a + b + c + d"), confident=False, pass_delay=0.1)
    warmed: list[str] = []
    eng.decoder.warm = lambda req: warmed.append(req.id)
    try:
        busy = eng.submit(InfillRequest("busy", "x = ", "\n", max_tokens=8))
        assert await asyncio.to_thread(eng.model.in_pass.wait, 10)  # the worker is inside a 0.1 s pass
        eng.prefetch(InfillRequest("h1", "y = ", "\n"))
        eng.prefetch(InfillRequest("h2", "y = 1", "\n"))  # both wait for the worker's next look at its queue
        await asyncio.sleep(0.25)  # it took them (at the end of that pass)
        eng.prefetch(InfillRequest("h3", "z = ", "\n"))
        typed = eng.submit(InfillRequest("typed", "z = ", "\n", max_tokens=4))  # an editor without debounce
        await typed.result()
        await busy.result()
    finally:
        eng.close()
    assert warmed == ["h2"]  # h1 superseded by h2; h3 came with its own request, which prefilled itself


def test_a_closed_engine_ignores_prefetch(tiny_model, tokenizer):
    from fim_server.engine import Engine

    eng = Engine(tiny_model, tokenizer)
    eng.close()
    eng.prefetch(InfillRequest("late", "x = ", "\n"))  # a hint after close: nothing happens, nothing raises
    assert eng._thread is None


# ---- the wire: a `prefetch` message, no answer --------------------------------------------------------------------
def test_prefetch_message_round_trip():
    req = InfillRequest("w", "x = ", "\n", language="python", max_tokens=12, threshold=0.5)
    msg = request_message(PrefetchRequest(req))
    assert msg["type"] == "prefetch" and parse_client_message(json.dumps(msg)) == PrefetchRequest(req)


async def test_server_prefetch_has_no_answer_and_the_request_after_it_is_cached(shipped_engine):
    from fim_server.server import ServerConfig, start_server

    shipped_engine.clear_cache()
    srv = await start_server(shipped_engine, ServerConfig(port=0))
    try:
        req = InfillRequest("sp", LONG, TAIL, "python", max_tokens=24)
        async with connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}") as ws:
            before = shipped_engine.stats["prefill_tokens"]
            await ws.send(json.dumps(request_message(PrefetchRequest(req))))
            for _ in range(1000):  # the server hands the hint over; then the idle engine prefills it
                if shipped_engine.stats["prefill_tokens"] > before:
                    break
                await asyncio.sleep(0.01)
            assert await asyncio.to_thread(shipped_engine.idle.wait, 30)
            await ws.send(json.dumps(request_message(req)))
            reply = json.loads(await asyncio.wait_for(ws.recv(), 60))  # the first message is the infill's
        assert reply["type"] == "result" and reply["id"] == "sp"
        assert reply["cached_tokens"] == reply["context_tokens"] - 1
    finally:
        srv.close()
        await srv.wait_closed()


# ---- the language server: a typed change hands the backend the request that will follow -----------------------
class HintedBackend:
    def __init__(self):
        self.hints: list[InfillRequest] = []
        self.requests: list[InfillRequest] = []

    def prefetch(self, req: InfillRequest) -> None:
        self.hints.append(req)

    async def infill(self, req: InfillRequest) -> InfillResult:
        self.requests.append(req)
        return InfillResult(id=req.id, text="2)", valid=True, tokens=2, forward_passes=1, ms=1.0)


URI = "file:///tmp/diffill_test/p.py"


async def test_warm_hands_over_the_request_the_completion_then_sends():
    completer, backend = Completer(), HintedBackend()
    source = "x = foo(1, \n"
    completer.warm(URI, source, 11, "python", Settings(), backend)
    await completer.complete(URI, source, 11, "python", Settings(), backend)
    (hint,), (sent,) = backend.hints, backend.requests
    assert replace(hint, id=sent.id) == sent


async def test_no_hint_when_off_or_answered_by_typing_through():
    completer, backend = Completer(), HintedBackend()
    source = "x = foo(1, \n"
    completer.warm(URI, source, 11, "python", Settings(prefetch=False), backend)
    completer.warm(URI, source, 11, "python", Settings(languages=("javascript",)), backend)
    await completer.complete(URI, source, 11, "python", Settings(), backend)  # shows "2)"
    completer.warm(URI, "x = foo(1, 2\n", 12, "python", Settings(), backend)  # typed its first character
    assert backend.hints == []


class Sink:
    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        pass


def test_did_change_hints_the_completion_at_the_cursor_the_change_left():
    from lsp.server import build

    server = build()
    server.protocol.set_writer(Sink())
    server.protocol.handle_message(types.InitializeRequest(id=1, params=types.InitializeParams(
        capabilities=types.ClientCapabilities())))
    server.backend = backend = HintedBackend()
    text = "def f(é):\n    return é\n"
    server.protocol.handle_message(types.DidOpenTextDocumentNotification(params=types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=URI, language_id="python", version=1, text=text))))

    def change(version, line, char, new_text, end=None):
        end = end or types.Position(line, char)
        server.protocol.handle_message(types.DidChangeTextDocumentNotification(
            params=types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=version),
                content_changes=[types.TextDocumentContentChangePartial(
                    range=types.Range(types.Position(line, char), end), text=new_text)])))

    change(2, 1, 12, " + 1")  # typed after "return é"
    assert backend.hints[-1].prefix == "def f(é):\n    return é + 1" and backend.hints[-1].suffix == "\n"
    change(3, 1, 4, "", end=types.Position(1, 11))  # deleted "return "
    assert backend.hints[-1].prefix == "def f(é):\n    " and backend.hints[-1].suffix.startswith("é + 1\n")


async def test_the_remote_backend_sends_a_prefetch_message():
    from websockets.asyncio.server import serve

    from lsp.backend import RemoteBackend

    got: asyncio.Queue = asyncio.Queue()

    async def handler(ws):
        async for raw in ws:
            got.put_nowait(raw)

    async with serve(handler, "127.0.0.1", 0) as srv:
        backend = RemoteBackend(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        req = InfillRequest("r", "x = ", "\n", language="python", max_tokens=12)
        backend.prefetch(req)
        assert parse_client_message(await asyncio.wait_for(got.get(), 10)) == PrefetchRequest(req)
        await backend.close()
