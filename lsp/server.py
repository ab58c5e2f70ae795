"""The Diffill language server (pygls 2): textDocument/inlineCompletion, with textDocument/completion as a
fallback for clients without inline completion; multi-line edit commands live in lsp/edit_commands.py.

Contract: one engine (in-process by default, or a `diffill serve` given by `--server` / `serverUrl`),
started at `initialized` so the first completion does not pay for loading it. A newer request for a
document supersedes the older one still in flight (Neovim never cancels), and `$/cancelRequest` cancels
the request in the engine. Engine failures give an empty answer and a log line; unknown documents and
out-of-range positions get JSON-RPC InvalidParams errors.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass
from itertools import count

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from fim_server.shared.protocol import InfillRequest
from lsp.backend import BackendError, EmbeddedBackend, RemoteBackend
from lsp.config import Settings
from lsp.documents import get_document, language_of, offset_of
from lsp.edit_commands import register_edit_features
from lsp.shaping import shape, wants_multiline

log = logging.getLogger("diffill.lsp")


@dataclass(frozen=True)
class Shown:
    offset: int  # cursor offset when the suggestion was made
    before: str  # text just before that cursor
    after: str  # text just after it
    text: str  # the suggestion


class DiffillServer(LanguageServer):
    def __init__(self, settings: Settings):
        super().__init__("diffill", "0.1.0", text_document_sync_kind=types.TextDocumentSyncKind.Incremental)
        self.settings = settings
        self.backend = None
        self.in_flight: dict[str, asyncio.Task] = {}  # uri -> the task of its newest request
        self.ids = count()
        self.shown: dict[str, Shown] = {}  # uri -> the last suggestion shown, for typing through it

    def typing_through(self, uri: str, source: str, offset: int) -> str | None:
        """If the user has typed the first characters of the last suggestion (and nothing else changed
        around the cursor), the rest of it, at once and without the engine."""
        last = self.shown.get(uri)
        if last is None or offset <= last.offset:
            return None
        typed = source[last.offset: offset]
        if not last.text.startswith(typed) or len(typed) >= len(last.text):
            return None
        if source[max(0, last.offset - 256): last.offset] != last.before or \
                source[offset: offset + 256] != last.after[:256]:
            return None
        return last.text[len(typed):]

    def make_backend(self):
        s = self.settings
        self.backend = RemoteBackend(s.server_url) if s.server_url else EmbeddedBackend(s.model, s.device)
        self.backend.start()


def build(settings: Settings = Settings()) -> DiffillServer:
    server = DiffillServer(settings)

    @server.feature(types.INITIALIZE)
    def initialize(ls: DiffillServer, params: types.InitializeParams) -> None:
        ls.settings = ls.settings.updated(params.initialization_options)

    @server.feature(types.INITIALIZED)
    def initialized(ls: DiffillServer, params: types.InitializedParams) -> None:
        ls.make_backend()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: DiffillServer, params: types.DidChangeConfigurationParams) -> None:
        before = ls.settings
        ls.settings = ls.settings.updated(params.settings)
        if (before.server_url, before.model, before.device) != (ls.settings.server_url, ls.settings.model,
                                                                ls.settings.device):
            old = ls.backend
            ls.make_backend()
            if old is not None:
                asyncio.ensure_future(old.close())

    async def complete_at(ls: DiffillServer, uri: str, position: types.Position) -> tuple[str, types.Range] | None:
        doc = get_document(ls.workspace, uri)
        offset = offset_of(doc, uri, position)
        s = ls.settings
        language = language_of(doc, uri)
        if not s.enabled or (language and language not in s.languages):
            return None
        source = doc.source
        start = window_start(source, offset, s.prefix_chars)
        prefix, suffix = source[start:offset], source[offset: offset + s.suffix_chars]
        typed_through = ls.typing_through(uri, source, offset)
        if typed_through:
            return typed_through, types.Range(start=position, end=position)
        multiline = wants_multiline(prefix, suffix, language)
        previous = ls.in_flight.get(uri)
        if previous is not None and not previous.done():
            previous.cancel()  # superseded: the user has moved on
        me = asyncio.current_task()
        ls.in_flight[uri] = me
        # the last line of a file often has no newline; the model learned files that end with one
        req = InfillRequest(id=f"lsp{next(ls.ids)}", prefix=prefix, suffix=suffix or "\n", language=language,
                            max_tokens=s.max_tokens if multiline else s.single_line_max_tokens,
                            steps=s.steps, threshold=s.threshold)
        try:
            res = await ls.backend.infill(req)
        except asyncio.CancelledError:
            return None
        except BackendError as e:
            log.error("completion failed: %s", e)
            return None
        except Exception:
            log.exception("completion failed")
            return None
        finally:
            if ls.in_flight.get(uri) is me:
                del ls.in_flight[uri]
        text = shape(res.text, prefix, suffix, multiline)
        if not text:
            return None
        ls.shown[uri] = Shown(offset, source[max(0, offset - 256): offset], suffix[:256], text)
        return text, types.Range(start=position, end=position)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: DiffillServer, params: types.InlineCompletionParams):
        got = await complete_at(ls, params.text_document.uri, params.position)
        if got is None:
            return types.InlineCompletionList(items=[])
        text, rng = got
        return types.InlineCompletionList(items=[types.InlineCompletionItem(insert_text=text, range=rng)])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[".", "(", " "]))
    async def completion(ls: DiffillServer, params: types.CompletionParams):
        got = await complete_at(ls, params.text_document.uri, params.position)
        if got is None:
            return types.CompletionList(is_incomplete=True, items=[])
        text, rng = got
        label = text.split("\n", 1)[0].strip() or text.strip()
        item = types.CompletionItem(label=label, kind=types.CompletionItemKind.Snippet, detail="diffill",
                                    text_edit=types.TextEdit(range=rng, new_text=text),
                                    insert_text_format=types.InsertTextFormat.PlainText)
        return types.CompletionList(is_incomplete=True, items=[item])

    register_edit_features(server)

    @server.feature(types.SHUTDOWN)
    async def shutdown(ls: DiffillServer, params) -> None:
        if ls.backend is not None:
            await ls.backend.close()

    return server


WINDOW_STEP = 1024  # characters


def window_start(source: str, offset: int, chars: int) -> int:
    """Start of the prefix window: at least `chars` before the cursor when the file has them, on a fixed
    grid and snapped to a line start, so it stays put while the user types and the engine's context
    cache keeps hitting (a window that slid with every keystroke would change the context's first tokens)."""
    start = max(0, offset - chars) // WINDOW_STEP * WINDOW_STEP
    if start:
        nl = source.find("\n", start, offset)
        start = nl + 1 if nl >= 0 else start
    return start


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tcp", action="store_true", help="listen on TCP instead of stdio")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=2087)
    p.add_argument("--server", default=None, help="ws://host:port of a `diffill serve` (default: in-process)")
    p.add_argument("--model", default=None, help="model directory for the in-process engine")
    p.add_argument("--device", default="cpu")
    p.add_argument("--log-file", default=None, help="log here instead of stderr")


def run(a: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        **({"filename": a.log_file} if a.log_file else {"stream": sys.stderr}))
    logging.getLogger("pygls").setLevel(logging.WARNING)  # pygls logs every message at INFO
    server = build(Settings(server_url=a.server, model=a.model, device=a.device))
    if a.tcp:
        server.start_tcp(a.host, a.port)
    else:
        server.start_io()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="diffill lsp", description="Diffill language server")
    add_arguments(p)
    return run(p.parse_args(argv))
