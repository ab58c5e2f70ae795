"""The language server against hostile and broken clients: malformed framing, a second TCP connection, bad
params and lifecycle violations, line breaks LSP does not count, CRLF documents.

Most tests run `python -m lsp` on pipes and write raw bytes, since a proper client cannot send what they
need; the server's answers are read with the server's own deframer (lsp/framing.py). These servers never
get `initialized`, so no engine loads and completions answer empty. Every read is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from lsp.completer import Completer
from lsp.config import Settings
from lsp.framing import Body, Deframer, frame
from tests.test_completer import FakeBackend
from tests.test_lsp import TEXT, inline

START = 60.0  # seconds for a fresh server to answer initialize on a busy machine
ANSWER = 20.0  # seconds for any later answer
URI = "file:///tmp/diffill_test/robust.py"
INVALID_REQUEST, INVALID_PARAMS, SERVER_NOT_INITIALIZED = -32600, -32602, -32002


def message(rid, method: str, params=None) -> dict:
    msg = {"jsonrpc": "2.0", "method": method}
    if rid is not None:
        msg["id"] = rid
    if params is not None:
        msg["params"] = params
    return msg


def body(obj: dict) -> bytes:
    return json.dumps(obj).encode()  # NaN and Infinity pass through, as a broken client may send them


def initialize(rid="init") -> dict:
    return message(rid, "initialize", {"processId": None, "rootUri": None, "capabilities": {}})


def did_open(uri: str, text: str) -> dict:
    return message(None, "textDocument/didOpen",
                   {"textDocument": {"uri": uri, "languageId": "python", "version": 1, "text": text}})


def ask(rid, uri: str = URI, line=0, character=0) -> dict:
    return message(rid, "textDocument/inlineCompletion", {
        "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
        "context": {"triggerKind": 1}})


class Wire:
    """One connection to a server: raw bytes out, JSON-RPC messages in (responses kept by id)."""

    def __init__(self, reader: asyncio.StreamReader, writer):
        self.reader, self.writer = reader, writer
        self.deframer = Deframer()
        self.responses: dict = {}  # id -> every response with that id, in order
        self.unanswerable: list[dict] = []  # responses with id null
        self.notifications: list[dict] = []  # from the server, in order

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    def send(self, obj: dict) -> None:
        self.write(frame(body(obj)))

    async def _next(self) -> dict | None:
        """The next message, or None at the end of the stream."""
        while True:
            event = self.deframer.next_event()
            if isinstance(event, Body):
                return json.loads(event.data)
            assert event is None, event  # the server frames correctly
            chunk = await self.reader.read(65536)
            if not chunk:
                return None
            self.deframer.feed(chunk)

    async def answer(self, rid, timeout: float = ANSWER) -> dict:
        async def wait() -> dict:
            while rid not in self.responses:
                msg = await self._next()
                assert msg is not None, f"the server closed the stream before answering {rid!r}"
                if "method" in msg:
                    self.notifications.append(msg)  # a notification or request from the server
                    continue
                if msg.get("id") is None:
                    self.unanswerable.append(msg)
                else:
                    self.responses.setdefault(msg["id"], []).append(msg)
            return self.responses[rid][0]

        return await asyncio.wait_for(wait(), timeout)

    async def until_closed(self, timeout: float = ANSWER) -> None:
        """Wait for the server to end the stream, keeping what it sent before."""
        async def wait() -> None:
            while (msg := await self._next()) is not None:
                self.responses.setdefault(msg.get("id"), []).append(msg)

        try:
            await asyncio.wait_for(wait(), timeout)
        except ConnectionError:  # closed with unread data: a reset
            pass


class Server:
    """`python -m lsp` on pipes."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.wire = Wire(proc.stdout, proc.stdin)

    @classmethod
    async def start(cls, *, initialized: bool = True, stderr=asyncio.subprocess.DEVNULL) -> Server:
        """initialized: initialize, then open URI."""
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "lsp", stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE, stderr=stderr)
        server = cls(proc)
        if initialized:
            server.wire.send(initialize())
            assert "result" in await server.wire.answer("init", START)
            server.wire.send(did_open(URI, "def f(x):\n    return x\n"))
        return server

    async def exit_code(self, timeout: float = ANSWER) -> int:
        return await asyncio.wait_for(self.proc.wait(), timeout)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
async def start():
    servers: list[Server] = []

    async def _start(**kw) -> Server:
        servers.append(await Server.start(**kw))
        return servers[-1]

    yield _start
    for s in servers:
        s.kill()
        await s.proc.wait()


# --- framing (issue item 6) ---

MALFORMED = {  # name -> a frame for the request with id "bad"
    "Content-Length 0 followed by the body": lambda b: b"Content-Length: 0\r\n\r\n" + b,
    "no Content-Length": lambda b: b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\n\r\n" + b,
    "a length shorter than the body": lambda b: b"Content-Length: %d\r\n\r\n" % (len(b) - 10) + b,
    "a length longer than the body": lambda b: b"Content-Length: %d\r\n\r\n" % (len(b) + 10) + b,
    "a non-numeric length": lambda b: b"Content-Length: many\r\n\r\n" + b,
    "a negative length": lambda b: b"Content-Length: -5\r\n\r\n" + b,
    "a line that is not a header": lambda b: b"hello\r\n" + frame(b),
    "a header without a blank line after it": lambda b: b"Content-Length: %d\r\n" % len(b) + b,
    "a body that is not JSON": lambda b: frame(b"{not json"),
}
LENIENT = {  # name -> a frame a client may send and mean
    "a lower-case header name": lambda b: b"content-length: %d\r\n\r\n" % len(b) + b,
    "LF-only line ends": lambda b: b"Content-Length: %d\n\n" % len(b) + b,
    "two spaces after the colon": lambda b: b"Content-Length:  %d\r\n\r\n" % len(b) + b,
}


async def test_the_server_answers_again_after_each_malformed_framing(start):
    server = await start()
    for i, (name, make) in enumerate(MALFORMED.items()):
        server.wire.write(make(body(ask("bad"))))
        server.wire.send(ask(f"after{i}"))
        try:
            await server.wire.answer(f"after{i}")
        except asyncio.TimeoutError:
            pytest.fail(f"no answer after {name}")


async def test_header_names_are_case_insensitive_and_spacing_is_lenient(start):
    server = await start()
    for name, make in LENIENT.items():
        server.wire.write(make(body(ask(name))))
        assert "result" in await server.wire.answer(name), name


async def test_a_huge_content_length_is_not_allocated(start):
    server = await start()
    server.wire.write(b"Content-Length: 100000000000\r\n\r\n" + body(ask("huge")))
    server.wire.send(ask(1))
    assert "result" in await server.wire.answer(1)


async def test_a_document_over_the_size_cap_is_not_opened(start):
    from fim_server.shared.protocol import MAX_MESSAGE_BYTES

    big = "file:///tmp/diffill_test/big.py"
    server = await start()
    server.wire.send(did_open(big, "x = 1\n" * (MAX_MESSAGE_BYTES // 6 + 1)))  # skipped, never read in whole
    server.wire.send(ask(1, big))
    reply = await server.wire.answer(1)
    assert reply["error"]["code"] == INVALID_PARAMS and "unknown document" in reply["error"]["message"]


# --- TCP: one client per process (issue item 7) ---

async def start_tcp() -> tuple[asyncio.subprocess.Process, int, asyncio.Task]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "lsp", "--tcp", "--port", "0",
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)

    async def port() -> int:
        while line := await proc.stderr.readline():
            if m := re.search(rb"listening on [\d.]+:(\d+)", line):
                return int(m.group(1))
        raise AssertionError("the server ended without logging its port")

    try:
        bound = await asyncio.wait_for(port(), START)
    except BaseException:
        proc.kill()
        raise

    async def drain() -> None:
        while await proc.stderr.read(65536):
            pass

    return proc, bound, asyncio.ensure_future(drain())


@pytest.fixture
async def tcp_server():
    proc, port, drain = await start_tcp()
    yield proc, port
    if proc.returncode is None:
        proc.kill()
    await proc.wait()
    await drain


async def connect(port: int) -> Wire:
    return Wire(*await asyncio.open_connection("127.0.0.1", port))


async def test_tcp_closes_a_second_connection_while_one_is_connected(tcp_server):
    proc, port = tcp_server
    first = await connect(port)
    first.send(initialize())
    await first.answer("init", START)
    first.send(did_open(URI, "SECRET = 'hunter2'\n"))
    second = await connect(port)
    second.send(ask("leak", character=6))  # the first client's document, never opened here
    await second.until_closed()
    assert "leak" not in second.responses
    first.send(ask(1, character=6))
    assert "result" in await first.answer(1)  # the first client is still served, on its own connection


async def test_tcp_process_exits_when_its_client_disconnects(tcp_server):
    proc, port = tcp_server
    client = await connect(port)
    client.send(initialize())
    await client.answer("init", START)
    client.writer.close()
    assert await asyncio.wait_for(proc.wait(), ANSWER) == 1  # like stdio's end: 1, as no shutdown came first


# --- every request gets exactly one response (issue item 8) ---

BAD_POSITIONS = [{"line": -1, "character": 0}, {"line": 0, "character": -1}, {"line": 1.5, "character": 0},
                 {"line": 0, "character": 0.5}, {"line": float("nan"), "character": 0},
                 {"line": 0, "character": float("inf")}, {"line": "0", "character": 0},
                 {"line": True, "character": 0}, {"line": 0, "character": None}, {"line": 2 ** 53, "character": 0},
                 [0, 0], {"line": 0}]


def bad_requests() -> list[dict]:
    doc = {"uri": URI}
    params = [p for pos in BAD_POSITIONS for p in (
        ("textDocument/inlineCompletion", {"textDocument": doc, "position": pos, "context": {"triggerKind": 1}}),
        ("textDocument/completion", {"textDocument": doc, "position": pos}),
        ("diffill/inlineEdit", {"textDocument": doc, "position": pos}),
        ("workspace/executeCommand", {"command": "diffill.lsp.completeBlock", "arguments": [{**doc, "position": pos}]}),
    )]
    params += [(method, p) for p in [None, [1, 2], "x", 3, {"position": {"line": 0, "character": 0}}]
               for method in ("textDocument/inlineCompletion", "textDocument/completion", "textDocument/codeAction",
                              "workspace/executeCommand")]  # params missing (None), of the wrong type, incomplete
    return [message(f"bad{i}", method, p) for i, (method, p) in enumerate(params)]


async def test_every_request_with_bad_params_gets_one_invalid_params_error(start):
    server = await start()
    reqs = bad_requests()
    for req in reqs:
        server.wire.send(req)
    server.wire.send(ask("last"))
    await server.wire.answer("last")  # answered after every error above (those are sent as they are read)
    got = {r["id"]: [m.get("error", {}).get("code") for m in server.wire.responses.get(r["id"], [])] for r in reqs}
    assert got == {r["id"]: [INVALID_PARAMS] for r in reqs}


async def test_a_request_before_initialize_gets_server_not_initialized(start):
    server = await start(initialized=False)
    server.wire.send(ask(1))
    reply = await server.wire.answer(1, START)
    assert reply["error"]["code"] == SERVER_NOT_INITIALIZED and "data" not in reply["error"]  # no traceback


async def test_a_second_initialize_is_refused_and_forgets_nothing(start):
    server = await start()  # URI is open
    server.wire.send(initialize("again"))
    assert (await server.wire.answer("again"))["error"]["code"] == INVALID_REQUEST
    server.wire.send(ask(2))
    assert "result" in await server.wire.answer(2)  # the document is still open


async def test_a_request_after_shutdown_gets_invalid_request(start):
    server = await start()
    server.wire.send(message(1, "shutdown"))
    await server.wire.answer(1)
    server.wire.send(ask(2))
    assert (await server.wire.answer(2))["error"]["code"] == INVALID_REQUEST


async def test_the_exit_code_says_whether_shutdown_came_first(start):
    rude, polite = await start(), await start()
    rude.wire.send(message(None, "exit"))
    polite.wire.send(message(1, "shutdown"))
    await polite.wire.answer(1)
    polite.wire.send(message(None, "exit"))
    assert (await rude.exit_code(), await polite.exit_code()) == (1, 0)


# --- line breaks (issue item 9) ---

NOT_LINE_BREAKS = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]


async def test_positions_count_only_lsp_line_breaks(start):
    server = await start()
    for i, ch in enumerate(NOT_LINE_BREAKS):
        uri = f"file:///tmp/diffill_test/sep{i}.py"
        # LSP: 2 lines; str.splitlines: 3, and line 1 would be only a line break
        server.wire.send(did_open(uri, f"# section{ch}two\nresult_of_the_day = 1\n"))
        server.wire.send(ask(uri, uri, line=1, character=len("result_of_the_day = 1")))
        assert "result" in await server.wire.answer(uri), repr(ch)


async def test_the_engine_sees_lf_and_the_answer_keeps_the_documents_line_break():
    backend = FakeBackend(text="\n    return x\n")
    source = "def f(x):\r\n\r\nprint(f(1))\r\n"
    text = await Completer().complete(URI, source, len("def f(x):"), "python", Settings(), backend)
    req = backend.requests[0]
    assert "\r" not in req.prefix + req.suffix
    assert req.prefix == "def f(x):" and req.suffix.startswith("\n\nprint(f(1))\n")
    assert text == "\r\n    return x"


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp"]))
async def model_client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(), initialization_options={"diffill": {"singleLineMaxTokens": 16}}))
    yield
    await lsp_client.shutdown_session()


async def test_a_crlf_document_gets_the_suggestions_of_its_lf_twin(model_client):
    lf_uri, crlf_uri = "file:///tmp/diffill_test/lf.py", "file:///tmp/diffill_test/crlf.py"
    for uri, text in ((lf_uri, TEXT), (crlf_uri, TEXT.replace("\n", "\r\n"))):
        model_client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text=text)))
    for line, character in ((3, 13), (4, 0)):
        lf = (await inline(model_client, line, character, uri=lf_uri)).items
        crlf = (await inline(model_client, line, character, uri=crlf_uri)).items
        assert lf, (line, character)
        assert [i.insert_text for i in crlf] == [i.insert_text.replace("\n", "\r\n") for i in lf], (line, character)


# --- the server's logs and its client's process (issue: the editors, for real) ---

async def test_logs_reach_the_client_as_log_messages_and_nothing_reaches_stderr(start):
    server = await start(initialized=False, stderr=asyncio.subprocess.PIPE)
    server.wire.send(initialize())
    assert "result" in await server.wire.answer("init", START)
    server.wire.send(message(None, "initialized", {}))
    server.wire.send(message(None, "workspace/didChangeConfiguration",
                             {"settings": {"diffill": {"maxTokens": "lots"}}}))
    server.wire.send(did_open(URI, "def f(x):\n    return x\n"))
    server.wire.send(ask("q", line=1, character=12))
    assert "result" in await server.wire.answer("q", START)  # the engine loaded (and said so) first
    server.wire.send(message("down", "shutdown"))
    await server.wire.answer("down")
    server.wire.send(message(None, "exit"))
    assert await server.exit_code() == 0
    logs = [(n["params"]["type"], n["params"]["message"]) for n in server.wire.notifications
            if n["method"] == "window/logMessage"]
    assert any(kind == 2 and "max_tokens" in text for kind, text in logs), logs  # a warning, as a warning
    assert any(kind == 3 and "engine loaded" in text for kind, text in logs), logs  # information, as such
    assert await server.proc.stderr.read() == b""  # Neovim files every stderr line as an [ERROR]


async def test_the_server_exits_when_its_clients_process_is_gone(start):
    client = await asyncio.create_subprocess_exec("sleep", "60")
    server = await start(initialized=False)
    server.wire.send(message("init", "initialize", {"processId": client.pid, "rootUri": None, "capabilities": {}}))
    assert "result" in await server.wire.answer("init", START)
    await asyncio.sleep(1.5)
    assert server.proc.returncode is None  # serving while its client lives
    client.kill()
    await client.wait()
    assert await server.exit_code(10) == 1  # though its stdin is still open


async def test_a_process_id_not_visible_from_here_is_not_watched(start):
    """An editor on the host and the server in a container: the editor's pid does not exist here."""
    server = await start(initialized=False)
    server.wire.send(message("init", "initialize", {"processId": 2**22 + 12345, "rootUri": None, "capabilities": {}}))
    assert "result" in await server.wire.answer("init", START)
    await asyncio.sleep(2.5)
    assert server.proc.returncode is None
    server.wire.send(message("down", "shutdown"))
    assert "result" in await server.wire.answer("down")
