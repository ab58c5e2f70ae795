"""The Diffill language server (pygls 2): textDocument/inlineCompletion, with textDocument/completion as a
fallback for clients without inline completion; multi-line edit commands live in lsp/edit_commands.py.
A client that advertises `textDocument.inlineCompletion` gets an empty completion list at once: the
suggestion is its ghost text, and a completion list holding it too would cover it (VS Code's suggest
widget opens on the trigger characters).

Contract: one engine (in-process by default, or a `diffill serve` given by `--server` / `serverUrl`),
started at `initialized` so the first completion does not pay for loading it. The handlers here only
translate: document, offset and language in, LSP items out; what to ask and what to show is
lsp/completer.py's (a newer request for a document supersedes the older one; `$/cancelRequest` cancels the
request in the engine; engine failures give an empty answer and a log line). Unknown documents and
out-of-range positions get JSON-RPC InvalidParams errors. textDocument/didClose drops the completer's state
for the document (pygls removes the document itself before calling the handler). With `contextTokens` > 0,
didOpen/didChange/didSave/didClose also keep the index of workspace code (fim_server/shared/workspace.py),
whose best chunks go with each completion as `extra`.

Hostile and broken clients: the JSON-RPC and LSP lifecycle rules (every request answered once, errors for
bad params, requests before initialize or after shutdown, exit codes) are lsp/protocol.py's; reading frames
(lenient headers, a size cap, resynchronising after a malformed frame) is lsp/framing.py's; stdio and TCP
(one client per process) are lsp/transport.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from fim_server.shared.workspace import REINDEX_S, WorkspaceIndex, uri_to_path
from lsp.backend import EmbeddedBackend, RemoteBackend, make_backend
from lsp.completer import Completer
from lsp.config import Settings
from lsp.documents import get_document, language_of, offset_of
from lsp.edit_commands import register_edit_features
from lsp.http_backend import HttpBackend
from lsp.logs import ClientLogHandler
from lsp.protocol import DiffillProtocol, strict_converter
from lsp.transport import serve_stdio, serve_tcp

log = logging.getLogger("diffill.lsp")


class DiffillServer(LanguageServer):
    protocol: DiffillProtocol

    def __init__(self, settings: Settings):
        super().__init__("diffill", "0.1.0", text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
                         protocol_cls=DiffillProtocol, converter_factory=strict_converter)
        self.settings = settings
        self.backend: EmbeddedBackend | RemoteBackend | HttpBackend | None = None
        self.completer = Completer()
        self.index = WorkspaceIndex()  # workspace context (fim_server/shared/workspace.py), while contextTokens > 0
        self.reindex: asyncio.TimerHandle | None = None  # the pending re-index after typing
        self.log_handler: ClientLogHandler | None = None  # logs to the client (run() sets it on stdio)
        self.watcher: asyncio.Task | None = None  # watches the client's process (initialize's processId)
        self.client_shows_ghost_text = False  # set at initialize from the client's capabilities
        self._closing: set[asyncio.Task] = set()  # replaced backends closing (a task needs a reference)

    def make_backend(self) -> None:
        s, old = self.settings, self.backend
        try:
            self.backend = make_backend(s)
        except ValueError as e:  # a URL or backend that cannot work: say so, and complete with nothing
            log.error("diffill: %s", e)
            self.window_show_message(types.ShowMessageParams(types.MessageType.Error, f"Diffill: {e}"))
            self.backend = None
        if self.backend is not None:
            self.backend.start()
        if old is not None:
            task = asyncio.ensure_future(old.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


def initialize(ls: DiffillServer, params: types.InitializeParams) -> None:
    if ls.log_handler is not None:
        ls.log_handler.connected(asyncio.get_running_loop())
    if params.process_id:
        if process_alive(params.process_id):
            ls.watcher = asyncio.ensure_future(watch_client(ls, params.process_id))
        else:  # another PID namespace (a server in a container, say): nothing to watch from here
            log.info("the client's process %d is not visible from here: not watched", params.process_id)
    ls.settings = ls.settings.updated(params.initialization_options)
    folders = params.workspace_folders or []
    root = folders[0].uri if folders else params.root_uri
    ls.index.root = uri_to_path(root) if root else None
    text_document = params.capabilities.text_document
    ls.client_shows_ghost_text = text_document is not None and text_document.inline_completion is not None


def process_alive(pid: int) -> bool:
    """False once `pid` has exited (a zombie counts as exited: its parent has not reaped it yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(pid, 0) said it exists


async def watch_client(ls: DiffillServer, pid: int, every_s: float = 1.0) -> None:
    """LSP: the server exits when the process that started it is gone, even if its stdin stays open (a
    terminal killed with the editor in it can leave the pipe to an orphan)."""
    while process_alive(pid):
        await asyncio.sleep(every_s)
    log.warning("the client's process %d is gone: exiting", pid)
    ls.protocol.stop(1)


def initialized(ls: DiffillServer, params: types.InitializedParams) -> None:
    ls.make_backend()


def did_change_configuration(ls: DiffillServer, params: types.DidChangeConfigurationParams) -> None:
    before = ls.settings
    ls.settings = ls.settings.updated(params.settings)
    if backend_key(before) != backend_key(ls.settings):
        ls.make_backend()
    if ls.settings.context_tokens and not before.context_tokens:  # turned on: index what is open now
        for uri in list(ls.workspace.text_documents):
            index_document(ls, uri)
    elif not ls.settings.context_tokens and before.context_tokens:
        ls.index = WorkspaceIndex(ls.index.root)


def index_document(ls: DiffillServer, uri: str) -> None:
    """(Re)index an opened or saved document and the workspace files it imports."""
    if not ls.settings.context_tokens:
        return
    doc = ls.workspace.text_documents.get(uri)
    if doc is not None:
        ls.index.update(uri, doc.source)
        ls.index.follow_imports(uri, doc.source, language_of(doc, uri))


def did_open(ls: DiffillServer, params: types.DidOpenTextDocumentParams) -> None:
    index_document(ls, params.text_document.uri)


def did_save(ls: DiffillServer, params: types.DidSaveTextDocumentParams) -> None:
    index_document(ls, params.text_document.uri)


def did_change(ls: DiffillServer, params: types.DidChangeTextDocumentParams) -> None:
    uri = params.text_document.uri
    doc = ls.workspace.text_documents.get(uri)
    if doc is None:
        return
    partial = [c for c in params.content_changes if isinstance(c, types.TextDocumentContentChangePartial)]
    if ls.settings.context_tokens:
        ls.index.changed(uri, doc.source, [c.range.start.line for c in partial])
        if ls.reindex is not None:  # debounced: REINDEX_S after the last change
            ls.reindex.cancel()
        ls.reindex = asyncio.get_running_loop().call_later(REINDEX_S, ls.index.refresh)
    if len(partial) == 1 and len(params.content_changes) == 1:  # one edit (not several cursors): typing
        # the text before the change's start is as it was, so its offset there is the new document's too
        offset = doc.offset_at_position(partial[0].range.start) + len(partial[0].text)
        if offset <= len(doc.source):
            ls.completer.warm(uri, doc.source, offset, language_of(doc, uri), ls.settings, ls.backend,
                              extra=workspace_extra(ls, uri, offset))


def backend_key(s: Settings) -> tuple:
    """The settings a backend is made from: a change to any of them makes a new one."""
    return s.server_url, s.model, s.device, s.backend, s.api_key, s.remote_model


def did_close(ls: DiffillServer, params: types.DidCloseTextDocumentParams) -> None:
    ls.completer.forget(params.text_document.uri)
    ls.index.remove(params.text_document.uri)


def workspace_extra(ls: DiffillServer, uri: str, offset: int):
    """(source, (window start, end)) -> the workspace chunks a request at `offset` carries (none while
    contextTokens is 0)."""
    budget = ls.settings.context_tokens * 3  # characters: ~3 per token for code (bytes/token, docs/model.md)

    def extra(source: str, window: tuple[int, int]):
        return ls.index.collect(uri, source, offset, window, budget) if budget else ()

    return extra


async def complete_at(ls: DiffillServer, uri: str, position: types.Position) -> tuple[str, types.Range] | None:
    """-> (text, the empty range at the cursor), or None."""
    doc = get_document(ls.workspace, uri)
    offset = offset_of(doc, uri, position)
    text = await ls.completer.complete(uri, doc.source, offset, language_of(doc, uri), ls.settings, ls.backend,
                                       extra=workspace_extra(ls, uri, offset))
    return None if text is None else (text, types.Range(start=position, end=position))


async def inline_completion(ls: DiffillServer, params: types.InlineCompletionParams) -> types.InlineCompletionList:
    got = await complete_at(ls, params.text_document.uri, params.position)
    if got is None:
        return types.InlineCompletionList(items=[])
    text, rng = got
    return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=text, range=rng)])


async def completion(ls: DiffillServer, params: types.CompletionParams) -> types.CompletionList:
    if ls.client_shows_ghost_text:
        return types.CompletionList(is_incomplete=False, items=[])
    got = await complete_at(ls, params.text_document.uri, params.position)
    if got is None:
        return types.CompletionList(is_incomplete=True, items=[])
    text, rng = got
    label = text.split("\n", 1)[0].strip() or text.strip()
    item = types.CompletionItem(label=label, kind=types.CompletionItemKind.Snippet, detail="diffill",
                                text_edit=types.TextEdit(range=rng, new_text=text),
                                insert_text_format=types.InsertTextFormat.PlainText)
    return types.CompletionList(is_incomplete=True, items=[item])


async def shutdown(ls: DiffillServer, params) -> None:
    if ls.backend is not None:
        await ls.backend.close()


def build(settings: Settings = Settings()) -> DiffillServer:
    server = DiffillServer(settings)
    server.feature(types.INITIALIZE)(initialize)
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(did_change_configuration)
    server.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)  # runs after pygls's own removal of the document
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)  # these run after pygls has updated the document
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(types.TEXT_DOCUMENT_DID_SAVE)(did_save)
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())(inline_completion)
    server.feature(types.TEXT_DOCUMENT_COMPLETION,
                   types.CompletionOptions(trigger_characters=[".", "(", " "]))(completion)
    register_edit_features(server)
    server.feature(types.SHUTDOWN)(shutdown)
    return server


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tcp", action="store_true",
                   help="listen on TCP instead of stdio, for ONE client: further connections are closed while it "
                        "is connected, and the process exits when it disconnects (like stdio). No "
                        "authentication: keep --host on loopback")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2087, help="TCP port; 0 picks a free one (logged)")
    p.add_argument("--server", default=None,
                   help="ws://host:port of a `diffill serve`, or the http(s):// URL of a FIM API (default: in-process)")
    p.add_argument("--backend", choices=("openai", "inception", "llamacpp"), default=None,
                   help="the API an http(s) --server speaks (default openai: /v1/completions with suffix); the key "
                        "comes from the apiKey setting or DIFFILL_API_KEY")
    p.add_argument("--remote-model", default=None, help="the `model` name sent to an http(s) --server")
    p.add_argument("--model", default=None, help="model directory for the in-process engine")
    p.add_argument("--device", default="cpu")
    p.add_argument("--log-file", default=None,
                   help="log here (default: to the client as window/logMessage on stdio, to stderr with --tcp)")


def run(a: argparse.Namespace) -> int:
    server = build(Settings(server_url=a.server, model=a.model, device=a.device, backend=a.backend,
                            remote_model=a.remote_model))
    fmt = "%(asctime)s %(name)s %(levelname)s %(message)s"
    if a.log_file:
        logging.basicConfig(level=logging.INFO, format=fmt, filename=a.log_file)
    elif a.tcp:  # nobody reads our stderr as the client's log: keep it (it says which port was bound)
        logging.basicConfig(level=logging.INFO, format=fmt, stream=sys.stderr)
    else:  # stdio: to the client, as window/logMessage at each record's level (lsp/logs.py)
        server.log_handler = ClientLogHandler(server)
        logging.basicConfig(level=logging.INFO, handlers=[server.log_handler])
    logging.getLogger("pygls").setLevel(logging.WARNING)  # pygls logs every message at INFO
    if a.tcp:
        return serve_tcp(server.protocol, a.host, a.port)
    return serve_stdio(server.protocol)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffill lsp", description="Diffill language server")
    add_arguments(p)
    return run(p.parse_args(argv))
