"""Completion at a cursor, without LSP: what to ask the backend, and what to show of its answer.

Contract: `await Completer().complete(uri, source, offset, language, settings, backend)` -> the text to
insert at `offset` (a str index into `source`), or None for nothing. It never raises for a backend failure
or for being superseded: both give None (and a log line for a failure), so an editor never shows an error
popup for a completion. Only a cancellation by the client ($/cancelRequest) propagates, so the server answers
RequestCancelled as LSP asks.
Per document it keeps two things, both dropped by `forget(uri)` (the server calls it on didClose):
- the task of its newest request: a newer request for the document cancels it (superseded: the user has
  moved on; clients like Neovim never cancel), and the older one answers None;
- the last suggestion shown: while the user types its first characters (and nothing else changed around
  the cursor) the rest of it is answered at once, without the backend.
The prefix window (`window_start`) stays put while the user types, so the engine's context cache hits.
Line breaks: the engine sees LF only (`to_lf`): the model learned LF text, and a CRLF document's `\\r`s
changed its answers (the same program got other suggestions, or none, with CRLF). The answer comes back in
the document's own line break, so a CRLF user gets what an LF user gets.
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from dataclasses import dataclass
from itertools import count

from fim_server.shared.errors import BackendError, DiffillError
from fim_server.shared.protocol import InfillRequest
from lsp.config import Settings
from lsp.shaping import shape, wants_multiline

log = logging.getLogger("diffill.lsp")

WINDOW_STEP = 1024  # characters
NEAR = 256  # characters either side of the cursor that must be unchanged to type through a suggestion
_BREAK = re.compile(r"\r\n?|\n")  # LSP's line breaks


def to_lf(source: str, offset: int) -> tuple[str, int, str]:
    """-> (`source` with every line break as \\n, `offset` in it, the document's line break (its first one)
    to put back into an answer)."""
    if "\r" not in source:
        return source, offset, "\n"
    return _BREAK.sub("\n", source), len(_BREAK.sub("\n", source[:offset])), _BREAK.search(source).group()


def window_start(source: str, offset: int, chars: int) -> int:
    """Start of the prefix window: at least `chars` before the cursor when the file has them, on a fixed
    grid and snapped to a line start, so it stays put while the user types and the engine's context
    cache keeps hitting (a window that slid with every keystroke would change the context's first tokens)."""
    start = max(0, offset - chars) // WINDOW_STEP * WINDOW_STEP
    if start:
        nl = source.find("\n", start, offset)
        start = nl + 1 if nl >= 0 else start
    return start


@dataclass(frozen=True)
class Shown:
    offset: int  # cursor offset when the suggestion was made
    before: str  # text just before that cursor
    after: str  # text just after it
    text: str  # the suggestion


class Completer:
    def __init__(self) -> None:
        self.in_flight: dict[str, asyncio.Task] = {}  # uri -> the task of its newest request
        self.shown: dict[str, Shown] = {}  # uri -> the last suggestion shown, for typing through it
        self._ids = count()
        self._superseded: weakref.WeakSet[asyncio.Task] = weakref.WeakSet()  # cancelled by us, not the client

    def forget(self, uri: str) -> None:
        """The document is closed: cancel its request in flight and drop what was kept for it."""
        task = self.in_flight.pop(uri, None)
        if task is not None:
            self._superseded.add(task)
            task.cancel()
        self.shown.pop(uri, None)

    def typing_through(self, uri: str, source: str, offset: int) -> str | None:
        """If the user has typed the first characters of the last suggestion (and nothing else changed
        around the cursor), the rest of it."""
        last = self.shown.get(uri)
        if last is None or offset <= last.offset:
            return None
        typed = source[last.offset: offset]
        if not last.text.startswith(typed) or len(typed) >= len(last.text):
            return None
        if source[max(0, last.offset - NEAR): last.offset] != last.before or \
                source[offset: offset + NEAR] != last.after[:NEAR]:
            return None
        return last.text[len(typed):]

    async def complete(self, uri: str, source: str, offset: int, language: str | None, settings: Settings,
                       backend, extra=None) -> str | None:
        """`backend`: anything with `async infill(InfillRequest) -> InfillResult` (lsp/backend.py); `extra`:
        (source, (window start, end)) -> workspace chunks to send along (fim_server/shared/workspace.py), or None."""
        source, offset, line_break = to_lf(source, offset)
        text = await self._complete(uri, source, offset, language, settings, backend, extra)
        return text if text is None or line_break == "\n" else text.replace("\n", line_break)

    def warm(self, uri: str, source: str, offset: int, language: str | None, settings: Settings, backend,
             extra=None) -> None:
        """A change just left the cursor at `offset`, and the editor will ask for a completion there after its
        debounce (50 ms in VS Code, 75 in Diffill's Neovim plugin): hand the backend that request now, so its
        context is prefilled by then (`prefetch`). Nothing when the answer would not need the engine."""
        if backend is None or not settings.prefetch:
            return
        source, offset, _ = to_lf(source, offset)
        if self.typing_through(uri, source, offset) is None and \
                (built := self._request(source, offset, language, settings, extra)) is not None:
            backend.prefetch(built[0])

    def _request(self, source: str, offset: int, language: str | None, settings: Settings,
                 extra=None) -> tuple[InfillRequest, bool] | None:
        """The request a completion at `offset` sends, and whether it asks for several lines; None when
        completion is off there."""
        s = settings
        if not s.enabled or (language and language not in s.languages):
            return None
        start = window_start(source, offset, s.prefix_chars)
        prefix, suffix = source[start:offset], source[offset: offset + s.suffix_chars]
        multiline = wants_multiline(prefix, suffix, language)
        chunks = extra(source, (start, offset + len(suffix))) if extra is not None else ()
        # the last line of a file often has no newline; the model learned files that end with one
        req = InfillRequest(id=f"lsp{next(self._ids)}", prefix=prefix, suffix=suffix or "\n", language=language,
                            max_tokens=s.max_tokens if multiline else s.single_line_max_tokens,
                            steps=s.steps, threshold=s.threshold, candidates=s.candidates, extra=chunks)
        return req, multiline

    async def _complete(self, uri: str, source: str, offset: int, language: str | None, settings: Settings,
                        backend, extra=None) -> str | None:
        s = settings
        if not s.enabled or (language and language not in s.languages):
            return None
        typed_through = self.typing_through(uri, source, offset)
        if typed_through:
            return typed_through
        previous = self.in_flight.get(uri)
        if previous is not None and not previous.done():
            self._superseded.add(previous)
            previous.cancel()  # superseded
        me = asyncio.current_task()
        self.in_flight[uri] = me
        req, multiline = self._request(source, offset, language, settings, extra)
        prefix, suffix = req.prefix, source[offset: offset + s.suffix_chars]
        try:
            if backend is None:
                raise BackendError("no backend yet: the client has not sent initialized")
            res = await backend.infill(req)
        except asyncio.CancelledError:
            if me in self._superseded:
                return None  # a newer request (or closing the document) took its place: answer empty
            raise  # the client cancelled it ($/cancelRequest): the server answers RequestCancelled
        except DiffillError as e:
            log.error("completion failed: %s: %s", e.code, e)
            return None
        except Exception:
            log.exception("completion failed")
            return None
        finally:
            if self.in_flight.get(uri) is me:
                del self.in_flight[uri]
        text = shape(res.text, prefix, suffix, multiline)
        if not text:
            return None
        self.shown[uri] = Shown(offset, source[max(0, offset - NEAR): offset], suffix[:NEAR], text)
        return text
