"""The language server end to end over stdio (pytest-lsp), with the shipped model in-process."""

import asyncio
import sys

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

URI = "file:///tmp/diffill_test/point.py"
TEXT = (
    "class Point:\n"
    "    def __init__(self, x, y):\n"
    "        self.x = x\n"
    "        self.\n"
    "\n"
    "    def label(self):\n"
    "        return 'π 🎉 ' + str(self.x)\n"
)


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp"]))
async def client(lsp_client: LanguageClient):
    result = await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(general=types.GeneralClientCapabilities(
            position_encodings=[types.PositionEncodingKind.Utf16])),
        initialization_options={"diffill": {"singleLineMaxTokens": 16}}))
    lsp_client.server_capabilities_seen = result.capabilities
    lsp_client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=URI, language_id="python", version=1, text=TEXT)))
    yield
    await lsp_client.shutdown_session()


def inline(client, line, character, uri=URI):
    return client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=character),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))


async def test_inline_completion_is_advertised_and_answers(client):
    caps = client.server_capabilities_seen
    assert caps.inline_completion_provider is not None
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    res = await inline(client, 3, 13)
    assert len(res.items) == 1
    item = res.items[0]
    assert item.insert_text.strip() and "\n" not in item.insert_text  # end of an ordinary line: one line
    assert item.range.start == item.range.end == types.Position(line=3, character=13)


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp"]))
async def ghost_text_client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(capabilities=types.ClientCapabilities(
        text_document=types.TextDocumentClientCapabilities(  # as vscode-languageclient 11 sends it
            inline_completion=types.InlineCompletionClientCapabilities(dynamic_registration=True)))))
    lsp_client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=URI, language_id="python", version=1, text=TEXT)))
    yield
    await lsp_client.shutdown_session()


def completion(client):
    return client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=3, character=13)))


async def test_completion_fallback_only_for_clients_without_ghost_text(client, ghost_text_client):
    res = await completion(client)
    assert res.items and res.items[0].text_edit.new_text.strip()
    # a completion list would cover the ghost text (VS Code opens it on "." "(" " "): empty
    assert not (await completion(ghost_text_client)).items
    assert len((await inline(ghost_text_client, 3, 13)).items) == 1


async def test_utf16_positions_after_emoji(client):
    line = TEXT.split("\n")[6]
    # the emoji is 2 UTF-16 units: the end of the line in UTF-16 is one more than in code points
    end16 = len(line.encode("utf-16-le")) // 2
    assert end16 == len(line) + 1
    res = await inline(client, 6, end16)
    assert not res.items or res.items[0].range.start.character == end16
    with pytest.raises(Exception, match="past the end of line"):
        await inline(client, 6, end16 + 1)


async def test_unknown_document_and_bad_positions_are_errors(client):
    with pytest.raises(Exception, match="unknown document"):
        await inline(client, 0, 0, uri="file:///nope.py")
    with pytest.raises(Exception, match="outside"):
        await inline(client, 99, 0)


async def test_newer_request_supersedes_older(client):
    first = inline(client, 3, 13)
    second = inline(client, 3, 13)
    a, b = await asyncio.gather(first, second)
    assert not a.items  # superseded: answered empty at once
    assert len(b.items) == 1


async def test_typing_updates_the_document(client):
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=3, character=13), end=types.Position(line=3, character=13)),
            text="y")]))
    res = await inline(client, 3, 14)
    assert len(res.items) <= 1
    if res.items:
        assert res.items[0].range.start == types.Position(line=3, character=14)


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp"]))
async def broken_client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(), initialization_options={"model": "/nonexistent/model"}))
    lsp_client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=URI, language_id="python", version=1, text=TEXT)))
    yield
    await lsp_client.shutdown_session()


async def test_engine_failure_gives_empty_answers_not_a_dead_server(broken_client):
    for _ in range(2):
        res = await inline(broken_client, 3, 13)
        assert not res.items


async def test_remote_mode_survives_the_server_restarting(shipped_engine, tmp_path):
    from pytest_lsp import make_test_lsp_client

    from fim_server.server import ServerConfig, start_server

    srv = await start_server(shipped_engine, ServerConfig(port=0))
    port = srv.sockets[0].getsockname()[1]
    client = make_test_lsp_client()
    await client.start_io(sys.executable, "-m", "lsp")
    try:
        await client.initialize_session(types.InitializeParams(
            capabilities=types.ClientCapabilities(), initialization_options={"serverUrl": f"ws://127.0.0.1:{port}"}))
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=URI, language_id="python", version=1, text=TEXT)))
        assert len((await inline(client, 3, 13)).items) == 1
        srv.close()
        await srv.wait_closed()
        assert not (await inline(client, 3, 13)).items  # server gone: empty answer, LSP alive
        srv = await start_server(shipped_engine, ServerConfig(port=port))
        assert len((await inline(client, 3, 13)).items) == 1  # reconnected
    finally:
        srv.close()
        await srv.wait_closed()
        await client.shutdown_session()
        await client.stop()


async def test_typing_through_the_suggestion_is_served_from_cache(client):
    first = (await inline(client, 3, 13)).items
    assert first
    shown = first[0].insert_text
    assert len(shown) >= 2
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=URI, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=3, character=13), end=types.Position(line=3, character=13)),
            text=shown[0])]))
    res = await inline(client, 3, 14)
    assert res.items[0].insert_text == shown[1:]


async def test_configuration_changes_take_effect(client):
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"diffill": {"enabled": False}}))
    assert not (await inline(client, 3, 13)).items
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"diffill": {"enabled": True, "languages": ["javascript"]}}))
    assert not (await inline(client, 3, 13)).items  # python is no longer enabled
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"diffill": {"languages": ["python"]}}))
    assert len((await inline(client, 3, 13)).items) == 1



async def test_cancel_request_is_honoured(client):
    # the engine is still loading in a fresh server, so this request is surely in flight when cancelled
    params = types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=URI), position=types.Position(line=3, character=13),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Invoked))
    fut = client.protocol.send_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, params, msg_id="slow-1")
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="slow-1"))
    from pygls.exceptions import JsonRpcRequestCancelled

    with pytest.raises(JsonRpcRequestCancelled):  # answered RequestCancelled (LSP), not completed
        await asyncio.wrap_future(fut)
    assert len((await inline(client, 3, 13)).items) == 1  # and the server carries on


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp"]))
async def utf8_client(lsp_client: LanguageClient):
    result = await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(general=types.GeneralClientCapabilities(
            position_encodings=[types.PositionEncodingKind.Utf8, types.PositionEncodingKind.Utf16]))))
    lsp_client.encoding_seen = result.capabilities.position_encoding
    lsp_client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=URI, language_id="python", version=1, text=TEXT)))
    yield
    await lsp_client.shutdown_session()


async def test_utf8_positions_when_the_client_offers_them(utf8_client):
    assert utf8_client.encoding_seen == types.PositionEncodingKind.Utf8
    line = TEXT.split("\n")[6]
    end8 = len(line.encode("utf-8"))
    res = await inline(utf8_client, 6, end8)
    assert not res.items or res.items[0].range.start.character == end8
    with pytest.raises(Exception, match="past the end of line"):
        await inline(utf8_client, 6, end8 + 1)


async def test_completions_at_several_positions(client):
    uri = "file:///tmp/diffill_test/several.py"
    text = "import sys\n\nx = foo(1\n\nif __name__ == '__main__':\n    print(sys.argv\n"
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text=text)))
    for line, character in ((2, 9), (5, 18), (3, 0)):
        res = await inline(client, line, character, uri=uri)
        if (line, character) != (3, 0):  # an unfinished call: the model closes it
            assert len(res.items) == 1
        for item in res.items:
            assert item.insert_text.strip()
            assert item.range.start == item.range.end == types.Position(line=line, character=character)


async def test_empty_and_huge_documents(client):
    empty, huge = "file:///tmp/diffill_test/empty.py", "file:///tmp/diffill_test/huge.py"
    big = "x = 1\n" * 900_000 + "print(x\n"  # ~5 MB
    for uri, text in ((empty, ""), (huge, big)):
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text=text)))
    res = await inline(client, 0, 0, uri=empty)
    assert len(res.items) <= 1
    res = await inline(client, 900_000, 7, uri=huge)
    assert len(res.items) == 1 and res.items[0].insert_text.startswith(")")


async def test_last_line_without_newline_is_completed(client):
    uri = "file:///tmp/diffill_test/eof.py"
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text="import sys\n\nprint(sys.argv")))
    res = await inline(client, 2, 14, uri=uri)
    assert len(res.items) == 1 and res.items[0].insert_text == ")"
