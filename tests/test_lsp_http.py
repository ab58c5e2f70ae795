"""The language server on an HTTP FIM backend, end to end: `diffill serve` speaking OpenAI's `/v1/completions`
and llama.cpp's `/infill`, and a small local server standing in for Inception's hosted API that records what
it was sent. Also the HTTP backend's cancellation, timeout and errors, without an editor."""

import asyncio
import json
import os
import sys

import pytest
from lsprotocol import types
from pytest_lsp import make_test_lsp_client

from fim_server.server import ServerConfig, start_server
from fim_server.shared.errors import BackendError
from fim_server.shared.protocol import InfillRequest
from lsp.http_backend import HttpBackend, endpoint
from tests.test_lsp import TEXT, URI, inline


async def lsp_session(options: dict, env: dict | None = None):
    client = make_test_lsp_client()
    await client.start_io(sys.executable, "-m", "lsp", env={**os.environ, **(env or {})})
    await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(), initialization_options={"diffill": options}))
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=URI, language_id="python", version=1, text=TEXT)))
    return client


async def end(client) -> None:
    await client.shutdown_session()
    await client.stop()


async def first_item(client) -> str | None:
    res = await inline(client, 3, 13)
    return res.items[0].insert_text if res.items else None


async def test_lsp_on_diffill_serve_over_each_api(shipped_engine):
    srv = await start_server(shipped_engine, ServerConfig(port=0))
    port = srv.sockets[0].getsockname()[1]
    shown = {}
    try:
        for name, options in [("ws", {"serverUrl": f"ws://127.0.0.1:{port}"}),
                              ("openai", {"serverUrl": f"http://127.0.0.1:{port}/v1", "backend": "openai"}),
                              ("llamacpp", {"serverUrl": f"http://127.0.0.1:{port}", "backend": "llamacpp"})]:
            client = await lsp_session({**options, "singleLineMaxTokens": 16})
            try:
                shown[name] = await first_item(client)
            finally:
                await end(client)
    finally:
        srv.close()
        await srv.wait_closed()
    # the same engine behind each API, asked the same thing: the same suggestion
    assert shown["ws"] and shown["openai"] == shown["ws"] and shown["llamacpp"] == shown["ws"]


class Recorder:
    """A stand-in for a hosted FIM API: records each request, answers with `answers` in turn."""

    def __init__(self, answers: list[str], delay: float = 0.0):
        self.answers, self.delay = answers, delay
        self.requests: list[dict] = []
        self.aborted = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
            if not head:
                break
            lines = head.decode().split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            self.requests.append({"path": lines[0].split()[1], "headers": headers, "body": body})
            if self.delay:
                try:
                    await asyncio.wait_for(reader.read(1), self.delay)  # b"" when the client hangs up
                    self.aborted.set()
                    break
                except asyncio.TimeoutError:
                    pass
            text = self.answers[min(len(self.requests), len(self.answers)) - 1]
            out = json.dumps({"id": "cmpl-1", "object": "text_completion", "created": 0, "model": body.get("model"),
                              "choices": [{"text": text, "index": 0, "finish_reason": "stop"}],
                              "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(out), out))
            await writer.drain()
        writer.close()


@pytest.fixture
async def recorder():
    servers = []

    async def make(answers, delay=0.0):
        rec = Recorder(answers, delay)
        srv = await asyncio.start_server(rec.handle, "127.0.0.1", 0)
        servers.append(srv)
        return rec, srv.sockets[0].getsockname()[1]

    yield make
    for srv in servers:
        srv.close()


async def test_lsp_on_an_inception_style_api_sends_its_fields_and_checks_the_answer(recorder):
    # the second answer does not parse after "self." (a tree-sitter error): the LSP drops it
    rec, port = await recorder(["y = y", "y = )"])
    client = await lsp_session({"serverUrl": f"http://127.0.0.1:{port}/v1", "backend": "inception"},
                               env={"DIFFILL_API_KEY": "k-123"})
    try:
        assert await first_item(client) == "y = y"
        client.text_document_did_change(types.DidChangeTextDocumentParams(  # elsewhere: not typed-through
            text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=TEXT.replace("x, y", "x, y, z"))]))
        assert await first_item(client) is None
    finally:
        await end(client)
    req = rec.requests[0]
    assert req["path"] == "/v1/fim/completions"
    assert req["headers"]["authorization"] == "Bearer k-123"
    body = req["body"]
    assert body["model"] == "mercury-coder" and body["stream"] is False
    assert body["prompt"].endswith("        self.") and body["suffix"].startswith("\n\n    def label")
    assert body["max_tokens"] == 24  # the end of an ordinary line: singleLineMaxTokens
    assert not {"language", "steps", "threshold"} & set(body)  # nothing a hosted API might refuse


async def test_http_backend_aborts_a_cancelled_request_and_times_out(recorder):
    rec, port = await recorder(["1"], delay=5.0)
    backend = HttpBackend(f"http://127.0.0.1:{port}", "openai", api_key="secret")
    req = InfillRequest(id="r", prefix="x = ", suffix="\n", language="python")
    task = asyncio.ensure_future(backend.infill(req))
    while not rec.requests:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(rec.aborted.wait(), 5)  # the server saw the connection close
    slow = HttpBackend(f"http://127.0.0.1:{port}", "llamacpp", timeout_s=0.3)
    with pytest.raises(BackendError) as e:
        await slow.infill(req)
    assert e.value.code == "timeout"
    assert "secret" not in repr(backend) and "secret" not in backend.name
    await backend.close()
    await slow.close()


async def test_http_backend_errors_are_backend_errors(shipped_engine):
    srv = await start_server(shipped_engine, ServerConfig(port=0, token="t"))
    port = srv.sockets[0].getsockname()[1]
    try:
        with pytest.raises(BackendError) as e:  # no key: the server's own 401 message comes through
            await HttpBackend(f"http://127.0.0.1:{port}", "openai").infill(InfillRequest(id="r", prefix="x", suffix=""))
        assert "401" in str(e.value) and e.value.code == "unauthorized"
        with pytest.raises(BackendError, match="cannot reach"):
            await HttpBackend("http://127.0.0.1:1", "openai").infill(InfillRequest(id="r", prefix="x", suffix=""))
        ok = HttpBackend(f"http://127.0.0.1:{port}", "openai", api_key="t")
        assert (await ok.infill(InfillRequest(id="r", prefix="x = ", suffix="\n", max_tokens=4))).id == "r"
        await ok.close()
    finally:
        srv.close()
        await srv.wait_closed()


def test_endpoint_urls():
    assert endpoint("https://api.inceptionlabs.ai/v1", "inception")[0] == "https://api.inceptionlabs.ai/v1/fim/completions"
    assert endpoint("https://api.inceptionlabs.ai", "inception")[0] == "https://api.inceptionlabs.ai/v1/fim/completions"
    assert endpoint("http://box:8080/", "llamacpp")[0] == "http://box:8080/infill"
    assert endpoint("http://h:1/v1/completions", "openai")[0] == "http://h:1/v1/completions"
    with pytest.raises(ValueError):
        endpoint("ftp://h/", "openai")


async def test_changing_the_backend_setting_takes_effect(recorder):
    rec, port = await recorder(["y = y"])
    client = await lsp_session({"serverUrl": f"http://127.0.0.1:{port}", "backend": "openai"})
    try:
        assert await first_item(client) == "y = y"
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffill": {"serverUrl": f"http://127.0.0.1:{port}", "backend": "llamacpp"}}))
        await first_item(client)
    finally:
        await end(client)
    assert [r["path"] for r in rec.requests] == ["/v1/completions", "/infill"]
