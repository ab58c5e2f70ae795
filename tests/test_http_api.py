"""`diffill serve`'s HTTP FIM APIs on the websocket's port, with real clients: the `openai` package, the JSON
llama.vim sends, raw sockets for what clients do wrong. The engine is the shipped model (answers compared
with the engine's own) or a scripted one (timing-dependent cases)."""

import asyncio
import json

import openai
import pytest
from websockets.asyncio.client import connect

from fim_server.server import ServerConfig, start_server
from fim_server.shared.fim_http import AppendOnly, cut_at_stop
from fim_server.shared.protocol import ExtraChunk, InfillRequest
from fim_server.web import EngineSlot
from tests.fakes import scripted_engine, text_script

PREFIX = "def area(width, height):\n    return "
SUFFIX = "\n\n\nprint(area(2, 3))\n"


@pytest.fixture
async def server(shipped_engine):
    srv = await start_server(shipped_engine, ServerConfig(port=0, max_in_flight=4))
    yield shipped_engine, srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()


async def http(port: int, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
               ) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection; -> (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = body.encode() if isinstance(body, str) else body or b""
    head = [f"{method} {path} HTTP/1.1", "Host: test", f"Content-Length: {len(data)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
    raw = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    head_raw, _, payload = raw.partition(b"\r\n\r\n")
    lines = head_raw.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if hdrs.get("transfer-encoding") == "chunked":
        payload = _unchunk(payload)
    return status, hdrs, payload


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, rest = data.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            break
        out, data = out + rest[:n], rest[n + 2:]
    return out


def sse(payload: bytes) -> list[str]:
    return [e[len("data: "):] for e in payload.decode().split("\n\n") if e.startswith("data: ")]


async def engine_text(engine, prefix=PREFIX, suffix=SUFFIX, max_tokens=16, extra=()) -> str:
    return (await engine.infill(InfillRequest(id="ref", prefix=prefix, suffix=suffix, max_tokens=max_tokens,
                                              extra=extra))).text


async def test_openai_sdk_completions_with_suffix(server):
    engine, port = server
    want = await engine_text(engine)
    assert want.strip()
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    res = await client.completions.create(model="any", prompt=PREFIX, suffix=SUFFIX, max_tokens=16)
    assert res.object == "text_completion" and res.model == "default"
    assert res.choices[0].text == want and res.choices[0].finish_reason == "stop"
    assert res.usage.completion_tokens > 0 and res.usage.prompt_tokens > 10
    # streamed: the chunks add up to the same text, the last chunk says why it ended, then usage
    stream = await client.completions.create(model="any", prompt=PREFIX, suffix=SUFFIX, max_tokens=16, stream=True,
                                             stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == res.usage.completion_tokens
    # Inception's path and the models list
    fim = await client.post("/fim/completions", cast_to=openai.types.Completion,
                            body={"model": "mercury-coder", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 16})
    assert fim.choices[0].text == want
    assert [m.id async for m in client.models.list()] == ["default"]
    await client.close()


async def test_stop_strings_echo_and_best_of(server):
    engine, port = server
    want = await engine_text(engine)
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    stop = want[len(want) // 2:]  # the second half of the answer as a stop string: cut there
    res = await client.completions.create(model="m", prompt=PREFIX, suffix=SUFFIX, max_tokens=16, stop=[stop])
    assert res.choices[0].text == want[: want.find(stop)] and res.choices[0].finish_reason == "stop"
    res = await client.completions.create(model="m", prompt=PREFIX, suffix=SUFFIX, max_tokens=16, echo=True)
    assert res.choices[0].text == PREFIX + want
    res = await client.completions.create(model="m", prompt=PREFIX, suffix=SUFFIX, max_tokens=16, best_of=3,
                                          presence_penalty=1.5, top_p=0.9, extra_body={"steps": 64})
    assert res.choices[0].text.strip()
    await client.close()


LLAMA_VIM_BODY = {  # what llama.vim (autoload/llama.vim, s:fim) posts, field for field
    "id_slot": 0, "input_prefix": "def area(width, height):\n", "input_suffix": "\n\n\nprint(area(2, 3))\n",
    "input_extra": [{"text": "def volume(w, h, d):\n    return w * h * d\n", "time": 1.5, "filename": "geo.py"}],
    "prompt": "    return ", "n_predict": 128, "stop": [], "n_indent": 4, "top_k": 40, "top_p": 0.90,
    "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True, "t_max_prompt_ms": 500,
    "t_max_predict_ms": 1000, "model": "",
    "response_fields": ["content", "timings/prompt_n", "timings/prompt_ms", "timings/prompt_per_token_ms",
                        "timings/prompt_per_second", "timings/predicted_n", "timings/predicted_ms",
                        "timings/predicted_per_token_ms", "timings/predicted_per_second", "truncated",
                        "tokens_cached"],
}


async def test_infill_as_llama_vim_sends_it(server):
    engine, port = server
    chunk = LLAMA_VIM_BODY["input_extra"][0]
    want = await engine_text(engine, max_tokens=128, extra=(ExtraChunk(chunk["filename"], chunk["text"]),))
    # llama.vim sends "Authorization: Bearer " with no key when none is configured
    status, hdrs, body = await http(port, "POST", "/infill", json.dumps(LLAMA_VIM_BODY),
                                    {"Content-Type": "application/json", "Authorization": "Bearer "})
    assert status == 200 and hdrs["content-type"] == "application/json"
    assert body.startswith(b"{") and b'"content":"' in body and body.count(b"\n") == 1  # llama.vim's checks
    msg = json.loads(body)
    assert msg["content"] == want
    assert set(msg) == set(LLAMA_VIM_BODY["response_fields"])  # "timings/x" answered as a top-level key
    assert msg["timings/predicted_n"] > 0 and msg["timings/predicted_ms"] > 0 and msg["truncated"] is False
    # the chunk of the other buffer reached the model: the prompt is longer by its tokens
    status, _, plain = await http(port, "POST", "/infill", json.dumps({**LLAMA_VIM_BODY, "input_extra": []}))
    n_extra = len(engine.tok.encode(chunk["filename"] + "\n" + chunk["text"])) + 1  # + <|file_sep|>
    seen = [m["timings/prompt_n"] + m["tokens_cached"] for m in (msg, json.loads(plain))]  # context tokens
    assert seen[0] == seen[1] + n_extra
    # streamed as llama.cpp streams /infill: partial chunks, then a final one with stop true; no [DONE]
    status, hdrs, body = await http(port, "POST", "/infill", json.dumps({**LLAMA_VIM_BODY, "stream": True,
                                                                      "response_fields": []}))
    events = [json.loads(e) for e in sse(body)]
    assert status == 200 and hdrs["content-type"] == "text/event-stream"
    assert "".join(e["content"] for e in events) == want
    assert [e["stop"] for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1]["tokens_predicted"] > 0 and "timings" in events[-1]
    # llama.vim's ring-buffer request warms the cache with n_predict 0 and response_fields [""]
    warm = {"id_slot": 0, "input_prefix": "", "input_suffix": "", "input_extra": LLAMA_VIM_BODY["input_extra"],
            "prompt": "", "n_predict": 0, "temperature": 0.0, "samplers": [], "stream": False, "cache_prompt": True,
            "t_max_prompt_ms": 1, "t_max_predict_ms": 1, "response_fields": [""], "model": ""}
    status, _, body = await http(port, "POST", "/infill", json.dumps(warm))
    assert status == 200 and json.loads(body) == {}  # as llama.cpp answers it


async def test_error_statuses_in_each_apis_shape(server):
    _, port = server
    cases = [
        ("POST", "/v1/completions", "{bad", 400, "bad_json"),
        ("POST", "/v1/completions", '{"prompt": 3}', 400, "bad_field"),
        ("POST", "/v1/completions", '{"prompt": "x", "max_tokens": true}', 400, "bad_field"),
        ("POST", "/v1/completions", '{"prompt": "x", "n": 2}', 400, "bad_field"),
        ("POST", "/v1/completions", '{"prompt": "x", "temperature": NaN}', 400, "bad_json"),
        ("POST", "/v1/completions", '[1, 2]', 400, "bad_json"),
        ("POST", "/v1/completions", b'{"prompt": "\xff"}', 400, "bad_utf8"),
        ("POST", "/v1/completions", '{"prompt": "\\ud800"}', 400, "bad_field"),
        ("GET", "/v1/completions", None, 405, "method_not_allowed"),
        ("POST", "/v1/chat/completions", "{}", 404, "not_found"),
    ]
    for method, path, body, status, code in cases:
        got, hdrs, raw = await http(port, method, path, body)
        err = json.loads(raw)["error"]
        assert (got, err["code"]) == (status, code), (path, body, raw)
        assert err["message"] and err["type"] == "invalid_request_error"
    got, hdrs, _ = await http(port, "DELETE", "/infill")
    assert got == 405 and hdrs["allow"] == "POST"
    got, _, raw = await http(port, "POST", "/infill", '{"input_prefix": 5}')
    err = json.loads(raw)["error"]
    assert got == 400 and err["code"] == 400 and "input_prefix" in err["message"]  # llama.cpp's shape
    got, _, raw = await http(port, "POST", "/v1/completions", "{}", {"Origin": "https://evil.example"})
    assert got == 403 and json.loads(raw)["error"]["code"] == "forbidden_origin"
    assert (await http(port, "GET", "/healthz"))[0] == 200  # the server carried on through all of it


async def test_token_size_cap_and_allowed_origin(shipped_engine):
    srv = await start_server(shipped_engine, ServerConfig(port=0, token="s3cret", max_message_bytes=1000,
                                                          allowed_origins=("http://localhost:3000",)))
    port = srv.sockets[0].getsockname()[1]
    try:
        body = json.dumps({"prompt": "x = ", "max_tokens": 4})
        for auth in (None, "Bearer wrong", "Basic s3cret"):
            got, _, raw = await http(port, "POST", "/v1/completions", body, {"Authorization": auth} if auth else {})
            assert got == 401 and json.loads(raw)["error"]["type"] == "authentication_error"
        ok = {"Authorization": "Bearer s3cret"}
        assert (await http(port, "POST", "/v1/completions", body, ok))[0] == 200
        assert (await http(port, "GET", "/healthz"))[0] == 200  # health needs no token
        got, hdrs, raw = await http(port, "POST", "/v1/completions", json.dumps({"prompt": "x" * 2000}), ok)
        assert got == 413 and json.loads(raw)["error"]["code"] == "too_large" and hdrs["connection"] == "close"
        got, hdrs, _ = await http(port, "POST", "/v1/completions", body, {**ok, "Origin": "http://localhost:3000"})
        assert got == 200 and hdrs["access-control-allow-origin"] == "http://localhost:3000"
        got, hdrs, _ = await http(port, "OPTIONS", "/v1/completions", None, {"Origin": "http://localhost:3000"})
        assert got == 204 and "Authorization" in hdrs["access-control-allow-headers"]
    finally:
        srv.close()
        await srv.wait_closed()


async def test_503_while_the_model_loads_then_answers(shipped_engine):
    slot = EngineSlot()
    srv = await start_server(slot, ServerConfig(port=0))
    port = srv.sockets[0].getsockname()[1]
    try:
        got, hdrs, raw = await http(port, "POST", "/v1/completions", '{"prompt": "x = "}')
        assert got == 503 and json.loads(raw)["error"]["code"] == "loading" and hdrs["retry-after"] == "1"
        got, _, raw = await http(port, "GET", "/healthz")
        assert got == 503 and json.loads(raw)["status"] == "loading"
        with pytest.raises(Exception, match="503"):
            async with connect(f"ws://127.0.0.1:{port}"):
                pass
        slot.engine = shipped_engine
        assert (await http(port, "POST", "/v1/completions", '{"prompt": "x = ", "max_tokens": 4}'))[0] == 200
        async with connect(f"ws://127.0.0.1:{port}") as ws:  # the websocket protocol on the same port
            await ws.send(json.dumps({"type": "infill", "id": "a", "prefix": "x = ", "max_tokens": 4}))
            assert json.loads(await ws.recv())["type"] == "result"
    finally:
        srv.close()
        await srv.wait_closed()


@pytest.fixture
async def slow_server(tokenizer):
    """A scripted model that writes one token per 50 ms pass, lines of "x", and never ends: requests stay in
    flight, and a streamed one sends a line now and then."""
    line = tokenizer.encode("x\n")
    engine = scripted_engine(tokenizer, lambda k: line[k % len(line)], confident=False, pass_delay=0.05,
                             repair=False)
    srv = await start_server(engine, ServerConfig(port=0, max_in_flight=1))
    yield engine, srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()
    engine.close()


async def test_a_client_that_disconnects_cancels_its_request(slow_server):
    engine, port = slow_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"prompt": "def f():\n", "max_tokens": 512, "stream": True}).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    await asyncio.wait_for(reader.readuntil(b"data: "), 30)  # the request is being denoised
    assert not engine.idle.is_set()
    writer.close()
    assert await asyncio.to_thread(engine.idle.wait, 10)  # the engine dropped it
    # and a second request from the same client is not over the in-flight cap (the first one was freed)
    writer2 = None
    reader2, writer2 = await asyncio.open_connection("127.0.0.1", port)
    writer2.write(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert b" 200 " in await asyncio.wait_for(reader2.readline(), 30)
    # while it runs, another request from this client is over the cap: 429
    got, hdrs, raw = await http(port, "POST", "/v1/completions", body)
    assert got == 429 and json.loads(raw)["error"]["code"] == "too_many_in_flight" and hdrs["retry-after"]
    writer2.close()


async def test_garbage_and_keep_alive(server):
    _, port = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")
    assert b" 400 " in await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    # two requests on one connection, the second sent before the first is answered (pipelined)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"prompt": "x = ", "max_tokens": 4}).encode()
    one = b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    writer.write(one + one)
    for _ in range(2):
        assert b" 200 " in await asyncio.wait_for(reader.readline(), 30)
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        assert json.loads(await reader.readexactly(length))["object"] == "text_completion"
    writer.close()


async def test_scripted_stream_is_append_only_whole_lines(tokenizer):
    answer = "\na = 1\nb = 2\nc = 3\n"
    engine = scripted_engine(tokenizer, text_script(tokenizer, answer), confident=False, threshold=0.99,
                             repair=False)
    srv = await start_server(engine, ServerConfig(port=0))
    port = srv.sockets[0].getsockname()[1]
    try:
        body = json.dumps({"prompt": "x = 0", "max_tokens": 16, "stream": True})
        _, _, raw = await http(port, "POST", "/v1/completions", body)
        texts = [json.loads(e)["choices"][0]["text"] for e in sse(raw)[:-1]]
        assert "".join(texts) == answer and sse(raw)[-1] == "[DONE]"
        parts = [t for t in texts if t]
        assert len(parts) > 1 and all(t.endswith("\n") for t in parts)  # it arrived in parts, line by line
    finally:
        srv.close()
        await srv.wait_closed()
        engine.close()


def test_append_only_holds_back_what_a_stop_string_may_claim():
    out = AppendOnly(("\n\n",))
    assert out.delta("foo") == "fo"  # the last character could start "\n\n"
    assert out.delta("foo\n") == "o"
    assert out.delta("foo\n\nbar") == ""  # the stop string and what follows never go out
    assert out.delta("foo\n\nbar baz") == "" and out.sent == "foo"
    assert out.end(cut_at_stop("foo\n\nbar baz", ("\n\n",))[0]) == ""
    out = AppendOnly()
    assert out.delta("a + b") == "a + b"
    assert out.delta("a +") == ""  # a draft that shrank (a repair re-masked tokens) sends nothing
    assert out.end("a + c") is None  # the final text does not extend what was sent: the caller must say so


async def test_bodies_as_continue_and_minuet_send_them(server):
    """Continue's `provider: inception` (core/llm/llms/Inception.ts) and minuet-ai.nvim's openai_fim_compatible
    (backends/openai_base.lua) post these, streamed; each reads choices[0].text of every event."""
    engine, port = server
    want = await engine_text(engine, max_tokens=64)
    continue_body = {"model": "mercury-coder", "prompt": PREFIX, "suffix": SUFFIX, "max_tokens": 64,
                     "temperature": 0.0, "presence_penalty": 1.5, "stream": True,
                     "stop": ["<|endoftext|>", "\n\n", "\n \n"]}
    minuet_body = {"model": "default", "stream": True, "max_tokens": 64, "prompt": PREFIX, "suffix": SUFFIX}
    for body, expect in ((continue_body, want.split("\n\n")[0]), (minuet_body, want)):
        status, _, raw = await http(port, "POST", "/v1/completions", json.dumps(body),
                                    {"Authorization": "Bearer dummy", "Accept": "application/json"})
        events = sse(raw)
        assert status == 200 and events[-1] == "[DONE]"
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == expect
    # Continue sends "<|endoftext|>" for an empty suffix: read as no suffix at all
    body = {**continue_body, "suffix": "<|endoftext|>", "stream": False}
    _, _, raw = await http(port, "POST", "/v1/completions", json.dumps(body))
    no_suffix = await engine_text(engine, suffix="", max_tokens=64)
    assert json.loads(raw)["choices"][0]["text"] == no_suffix.split("\n\n")[0]


async def test_an_engine_failure_is_a_500_and_the_server_carries_on(tokenizer):
    def script(k: int) -> int:
        raise RuntimeError("the model broke")

    engine = scripted_engine(tokenizer, script)
    srv = await start_server(engine, ServerConfig(port=0))
    port = srv.sockets[0].getsockname()[1]
    try:
        for path, body in (("/v1/completions", {"prompt": "x ="}), ("/infill", {"input_prefix": "x ="})):
            status, _, raw = await http(port, "POST", path, json.dumps(body))
            err = json.loads(raw)["error"]
            assert status == 500 and "the model broke" in err["message"]
            assert err["type"] == "server_error" and err["code"] == ("internal" if path != "/infill" else 500)
        status, _, raw = await http(port, "POST", "/v1/completions", json.dumps({"prompt": "x =", "stream": True}))
        assert status == 200 and json.loads(sse(raw)[-1])["error"]["code"] == "internal"  # mid-stream: an event
        assert (await http(port, "GET", "/healthz"))[0] == 200
    finally:
        srv.close()
        await srv.wait_closed()
        engine.close()


async def test_serve_language_turns_on_the_syntax_check_for_plugins(tokenizer):
    """Plugins send no language; `diffill serve --language python` checks their answers anyway."""
    engine = scripted_engine(tokenizer, text_script(tokenizer, " foo))"))
    body = json.dumps({"prompt": "x =", "suffix": "\n", "max_tokens": 8})
    answers = []
    try:
        for language in (None, "python"):
            srv = await start_server(engine, ServerConfig(port=0, http_language=language))
            try:
                _, _, raw = await http(srv.sockets[0].getsockname()[1], "POST", "/v1/completions", body)
                answers.append(json.loads(raw)["choices"][0]["text"])
            finally:
                srv.close()
                await srv.wait_closed()
    finally:
        engine.close()
    assert answers == [" foo))", ""]  # unchecked as written; checked: it does not parse, so it is dropped
