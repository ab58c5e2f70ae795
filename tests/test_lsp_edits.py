"""Multi-line edits end to end over stdio (pytest-lsp), shipped model in-process: one applyEdit per command,
ranges exact, text outside them untouched, no new syntax errors; previews, code actions, bad arguments."""

import ast
import sys

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from fim_server.shared import syntax

URI = "file:///tmp/diffill_test/holes.py"
HOLES = ("def add(a, b):\n    return <FILL_ME>\n\n\n"
         "def label(p):\n    return 'π 🎉 ' + <FILL_ME>\n\n\n"
         "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = <FILL_ME>\n")
BROKEN = "def broken(:\n    pass\n\n\nx = foo(<FILL_ME>\n"  # already has a syntax error before the hole


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "lsp"]))
async def client(lsp_client: LanguageClient):
    lsp_client.applied = []

    @lsp_client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply_edit(params: types.ApplyWorkspaceEditParams):
        lsp_client.applied.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    result = await lsp_client.initialize_session(types.InitializeParams(capabilities=types.ClientCapabilities(
        general=types.GeneralClientCapabilities(position_encodings=[types.PositionEncodingKind.Utf16]),
        workspace=types.WorkspaceClientCapabilities(
            apply_edit=True, workspace_edit=types.WorkspaceEditClientCapabilities(document_changes=True)))))
    lsp_client.caps = result.capabilities
    yield
    await lsp_client.shutdown_session()


def open_doc(client, text, uri=URI, version=1):
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="python", version=version, text=text)))


def run(client, command, args):
    return client.workspace_execute_command_async(types.ExecuteCommandParams(command=command, arguments=[args]))


def pos(text, offset):
    """LSP position (UTF-16) of a str offset."""
    line = text.count("\n", 0, offset)
    col = text[text.rfind("\n", 0, offset) + 1: offset]
    return {"line": line, "character": len(col.encode("utf-16-le")) // 2}


def offset(text, p):
    lines = text.split("\n")
    before = "\n".join(lines[: p.line]) + ("\n" if p.line else "")
    line16 = lines[p.line].encode("utf-16-le")[: 2 * p.character].decode("utf-16-le")
    return len(before) + len(line16)


def apply(text, edits):
    spans = sorted(((offset(text, e.range.start), offset(text, e.range.end), e.new_text) for e in edits),
                   reverse=True)
    for a, b, t in spans:
        text = text[:a] + t + text[b:]
    return text, sorted(spans)


def the_edits(client):
    """The one applyEdit sent: one versioned TextDocumentEdit."""
    assert len(client.applied) == 1
    changes = client.applied[0].edit.document_changes
    assert len(changes) == 1 and changes[0].text_document.uri == URI and changes[0].text_document.version == 1
    return changes[0].edits


async def test_edit_commands_are_advertised(client):
    cmds = client.caps.execute_command_provider.commands
    assert {"diffill.lsp.fillHoles", "diffill.lsp.rewrite", "diffill.lsp.completeBlock"} <= set(cmds)
    assert client.caps.code_action_provider


async def test_fill_holes_is_one_edit_with_exact_ranges_and_nothing_else_touched(client):
    open_doc(client, HOLES)
    res = await run(client, "diffill.lsp.fillHoles", {"uri": URI})
    assert res["applied"] is True, res
    edits = the_edits(client)
    assert res["edits"] == len(edits) >= 1
    new, spans = apply(HOLES, edits)
    markers = [i for i in range(len(HOLES)) if HOLES.startswith("<FILL_ME>", i)]
    for a, b, _ in spans:
        assert a in markers and b == a + len("<FILL_ME>")  # each edit replaces exactly one marker
    # everything outside the replaced markers is byte for byte the same, in order
    rest, at = [], 0
    for a, b, _ in spans:
        rest.append(HOLES[at:a])
        at = b
    rest.append(HOLES[at:])
    pieces_found = 0
    for piece in rest:
        pieces_found = new.index(piece, pieces_found) + len(piece)
    assert syntax.count_errors("python", new) <= syntax.count_errors("python", HOLES)
    for _, _, t in spans:  # a filled hole holds code, not another marker
        assert "<FILL_ME>" not in t and t.strip()


async def test_rewrite_regenerates_whole_lines_only(client):
    text = "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)\n"
    open_doc(client, text)
    a, b = text.index("total = 0") + 2, text.index("+= x")  # mid-line selection: whole lines are taken
    res = await run(client, "diffill.lsp.rewrite",
                    {"uri": URI, "range": {"start": pos(text, a), "end": pos(text, b)}, "all": True})
    if res["applied"]:
        edits = the_edits(client)
        assert len(edits) == 1
        e = edits[0]
        assert (e.range.start.line, e.range.start.character) == (1, 0)
        assert e.range.end.line == 3 and e.range.end.character == len("        total += x")
        new, _ = apply(text, edits)
        assert new.startswith("def mean(xs):\n") and new.endswith("\n    return total / len(xs)\n")
        assert syntax.count_errors("python", new) == 0
    else:
        assert client.applied == [] and "unchanged" in res["message"]


async def test_revise_with_a_confident_model_changes_nothing_it_finds_likely(client):
    text = "import os\n\n\ndef main():\n    print(os.getcwd())\n"
    open_doc(client, text)
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"diffill": {"reviseThreshold": 1e-9}}))
    res = await run(client, "diffill.lsp.rewrite", {"uri": URI, "range": {"start": pos(text, 0),
                                                                          "end": pos(text, len(text) - 1)}})
    assert res["applied"] is False and client.applied == []  # nothing below the threshold: nothing to change
    assert "unchanged" in res["message"]


async def test_complete_block_inserts_after_the_body_and_stays_in_it(client):
    text = "def mean(xs):\n    total = 0\n\n\nprint(mean([1, 2]))\n"
    open_doc(client, text)
    res = await run(client, "diffill.lsp.completeBlock", {"uri": URI, "position": {"line": 1, "character": 4}})
    if res["applied"]:
        (e,) = the_edits(client)
        assert e.range.start == e.range.end == types.Position(line=1, character=13)  # after `total = 0`
        assert e.new_text.startswith("\n    ")
        new, _ = apply(text, [e])
        assert new.startswith("def mean(xs):\n    total = 0\n") and new.endswith("\n\n\nprint(mean([1, 2]))\n")
        for line in e.new_text.split("\n")[1:]:
            assert not line.strip() or line.startswith("    ")  # never leaves the function's body
        assert syntax.count_errors("python", new) == 0
    else:
        assert client.applied == []


async def test_a_file_with_syntax_errors_gets_no_more_of_them(client):
    open_doc(client, BROKEN)
    before = syntax.count_errors("python", BROKEN)
    assert before >= 1
    res = await run(client, "diffill.lsp.fillHoles", {"uri": URI})
    if res["applied"]:
        new, spans = apply(BROKEN, the_edits(client))
        assert syntax.count_errors("python", new) <= before
        assert new.startswith("def broken(:\n    pass\n\n\nx = foo(")
    else:
        assert client.applied == []


async def test_nothing_to_do_applies_nothing_and_says_why(client):
    open_doc(client, "x = 1\n")
    res = await run(client, "diffill.lsp.fillHoles", {"uri": URI})
    assert res == {"applied": False, "edits": 0, "message": res["message"]} and "<FILL_ME>" in res["message"]
    res = await run(client, "diffill.lsp.completeBlock", {"uri": URI, "position": {"line": 0, "character": 0}})
    assert res["applied"] is False and "not inside a block" in res["message"]
    assert client.applied == []


async def test_bad_arguments_are_errors(client):
    open_doc(client, HOLES)
    with pytest.raises(Exception, match="unknown document"):
        await run(client, "diffill.lsp.fillHoles", {"uri": "file:///nope.py"})
    with pytest.raises(Exception, match="outside"):
        await run(client, "diffill.lsp.completeBlock", {"uri": URI, "position": {"line": 99, "character": 0}})
    with pytest.raises(Exception, match="Position"):
        await run(client, "diffill.lsp.rewrite", {"uri": URI, "range": {"start": {"line": "a"}, "end": 3}})
    with pytest.raises(Exception, match="one argument"):
        await run(client, "diffill.lsp.fillHoles", "just a string")
    assert client.applied == []


async def test_inline_edit_previews_without_applying(client):
    open_doc(client, HOLES)
    res = await client.protocol.send_request_async("diffill/inlineEdit", {
        "textDocument": {"uri": URI}, "position": {"line": 0, "character": 0}})
    assert client.applied == []
    assert res.edits, "a file with holes gets a preview"  # pygls hands custom results over as namedtuples
    for e in res.edits:
        assert (e.textDocument.uri, e.textDocument.version) == (URI, 1)
        start = offset(HOLES, e.range.start)
        assert HOLES.startswith("<FILL_ME>", start) and offset(HOLES, e.range.end) == start + len("<FILL_ME>")
        assert e.text.strip() and "<FILL_ME>" not in e.text


async def test_code_actions_offer_the_edits(client):
    open_doc(client, HOLES)
    acts = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=URI),
        range=types.Range(start=types.Position(line=9, character=8), end=types.Position(line=10, character=4)),
        context=types.CodeActionContext(diagnostics=[])))
    # lsprotocol's client-side hook reads any object with a "command" key as a Command and stringifies the
    # CodeAction's nested command (a client-side quirk; the JSON on the wire is a CodeAction): unwrap it
    titles = {}
    for a in acts:
        if isinstance(a, types.CodeAction):
            titles[a.title] = a.command.command
        else:
            titles[a.title] = ast.literal_eval(a.command)["command"]
    assert titles["Diffill: fill 3 holes"] == "diffill.lsp.fillHoles"
    assert titles["Diffill: rewrite selected lines"] == "diffill.lsp.rewrite"
    assert titles["Diffill: complete block"] == "diffill.lsp.completeBlock"


async def test_remote_backend_edits_through_a_diffill_serve(shipped_engine):
    from fim_server.server import ServerConfig, start_server
    from fim_server.shared.protocol import EditRegion, EditRequest
    from lsp.backend import RemoteBackend

    srv = await start_server(shipped_engine, ServerConfig(port=0))
    backend = RemoteBackend(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
    try:
        text = "def add(a, b):\n    return \n"
        res = await backend.edit(EditRequest("r", text, (EditRegion(26, 26),), language="python"))
        local = await shipped_engine.edit(EditRequest("l", text, (EditRegion(26, 26),), language="python"))
        assert res.regions[0].text == local.regions[0].text and res.id == "r"
    finally:
        await backend.close()
        srv.close()
        await srv.wait_closed()


async def scripted_session(tiny_model, tokenizer, answer: str):
    """A `diffill serve` whose engine answers every region with `answer`, and a language server using it: the
    applied paths tested whatever the shipped model would write. -> (client, close)."""
    from pytest_lsp import make_test_lsp_client

    from fim_server.server import ServerConfig, start_server
    from tests.fakes import scripted_engine, text_script

    engine = scripted_engine(tokenizer, text_script(tokenizer, answer))
    srv = await start_server(engine, ServerConfig(port=0))
    client = make_test_lsp_client()
    client.applied = []

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply_edit(params: types.ApplyWorkspaceEditParams):
        client.applied.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    await client.start_io(sys.executable, "-m", "lsp")
    await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(workspace=types.WorkspaceClientCapabilities(
            apply_edit=True, workspace_edit=types.WorkspaceEditClientCapabilities(document_changes=True))),
        initialization_options={"serverUrl": f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"}))

    async def close():
        await client.shutdown_session()
        await client.stop()
        srv.close()
        await srv.wait_closed()
        engine.close()

    return client, close


MEAN = "def mean(xs):\n    total = 0\n\n\nprint(mean([1, 2]))\n"


async def test_complete_block_applies_the_body_and_cuts_what_leaves_it(tiny_model, tokenizer):
    client, close = await scripted_session(
        tiny_model, tokenizer, "\n    for x in xs:\n        total += x\n    return total / len(xs)\nprint(2)")
    try:
        open_doc(client, MEAN)
        res = await run(client, "diffill.lsp.completeBlock", {"uri": URI, "position": {"line": 1, "character": 4}})
        assert res["applied"] is True and res["edits"] == 1, res
        (e,) = the_edits(client)
        assert e.range.start == e.range.end == types.Position(line=1, character=13)
        assert e.new_text == "\n    for x in xs:\n        total += x\n    return total / len(xs)"
        new, _ = apply(MEAN, [e])
        assert new == MEAN.replace("total = 0\n", "total = 0" + e.new_text + "\n")
        assert syntax.count_errors("python", new) == 0
    finally:
        await close()


async def test_regenerated_lines_replace_exactly_those_lines(tiny_model, tokenizer):
    text = "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)\n"
    client, close = await scripted_session(tiny_model, tokenizer, "\n    total = sum(xs)")
    try:
        open_doc(client, text)
        res = await run(client, "diffill.lsp.rewrite", {"uri": URI, "all": True, "range": {
            "start": {"line": 1, "character": 6}, "end": {"line": 3, "character": 3}}})
        assert res["applied"] is True, res
        (e,) = the_edits(client)
        assert (e.range.start.line, e.range.start.character, e.range.end.line) == (1, 0, 3)
        assert e.range.end.character == len("        total += x") and e.new_text == "    total = sum(xs)"
        new, _ = apply(text, [e])
        assert new == "def mean(xs):\n    total = sum(xs)\n    return total / len(xs)\n"
    finally:
        await close()


async def test_an_answer_that_would_break_the_file_is_not_applied(tiny_model, tokenizer):
    client, close = await scripted_session(tiny_model, tokenizer, "\n    total = (((")
    try:
        open_doc(client, MEAN)
        res = await run(client, "diffill.lsp.rewrite", {"uri": URI, "all": True, "range": {
            "start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 5}}})
        assert res["applied"] is False and "no valid edit" in res["message"] and client.applied == []
    finally:
        await close()


class TypingBackend:
    """A backend whose edit lets the user type a line at the top of the file while it works."""

    def __init__(self, doc):
        self.doc = doc

    async def edit(self, req):
        from fim_server.shared.protocol import EditResult, RegionResult

        self.doc.apply_change(types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0)),
            text="# typed meanwhile\n"))
        self.doc.version += 1
        regions = tuple(RegionResult(r.start, r.end, "x", True, True, 1) for r in req.regions)
        return EditResult(req.id, regions, 0, 0, forward_passes=1, ms=1.0)


def fake_server(text):
    """What the edit handlers use of a language server: workspace, settings, backend, capabilities."""
    from types import SimpleNamespace

    from pygls.workspace import Workspace

    from lsp.config import Settings

    workspace = Workspace(None)
    workspace.put_text_document(types.TextDocumentItem(uri=URI, language_id="python", version=1, text=text))
    doc = workspace.get_text_document(URI)
    applied = []

    async def apply_edit(params):
        applied.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    return SimpleNamespace(workspace=workspace, settings=Settings(), backend=TypingBackend(doc), applied=applied,
                           client_capabilities=types.ClientCapabilities(), workspace_apply_edit_async=apply_edit)


async def test_typing_during_an_edit_keeps_positions_on_the_planned_text_and_applies_nothing():
    from lsp.edit_commands import FILL_HOLES, compute, execute

    ls = fake_server(HOLES)
    c = await compute(ls, FILL_HOLES, {"uri": URI})
    assert c.version == 1 and len(c.edits) == 3
    for e in c.edits:  # positions in the text the edit was planned on, not the one typed meanwhile
        start = offset(HOLES, e.range.start)
        assert HOLES.startswith("<FILL_ME>", start) and offset(HOLES, e.range.end) == start + len("<FILL_ME>")
    ls = fake_server(HOLES)
    res = await execute(ls, FILL_HOLES, ({"uri": URI},))
    assert res["applied"] is False and "changed while" in res["message"] and ls.applied == []


class FailingBackend:
    def __init__(self, error):
        self.error = error

    async def edit(self, req):
        raise self.error


async def test_an_engine_failure_in_a_command_is_a_jsonrpc_error_that_says_why():
    from pygls.exceptions import JsonRpcInternalError, JsonRpcInvalidParams

    from fim_server.shared.errors import BackendError, EngineError
    from lsp.edit_commands import FILL_HOLES, execute

    ls = fake_server(HOLES)
    ls.backend = FailingBackend(BackendError("region 0..900 has 500 tokens; 'revise' takes at most 384",
                                             code="bad_field"))
    with pytest.raises(JsonRpcInvalidParams, match="has 500 tokens"):  # the user can pick a shorter range
        await execute(ls, FILL_HOLES, ({"uri": URI},))
    ls.backend = FailingBackend(EngineError("out of memory"))
    with pytest.raises(JsonRpcInternalError, match="out of memory"):
        await execute(ls, FILL_HOLES, ({"uri": URI},))
    assert ls.applied == []
