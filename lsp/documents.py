"""Documents as the server holds them: look-up by URI, position checks, language ids. Errors are JSON-RPC
InvalidParams with a message that names the document and the position.

Lines end at \\n, \\r\\n or \\r only, as LSP counts them (`LspTextDocument`, made by `LspWorkspace`): pygls
splits with `str.splitlines`, which also breaks at form feeds, vertical tabs, \\x1c-\\x1e, U+0085, U+2028 and
U+2029, so one of those in a comment shifted every later position and every later incremental change.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.workspace import TextDocument, Workspace

from fim_server.shared.languages import language_from_path

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")  # a line with its break, or the last line without


class LspTextDocument(TextDocument):
    @property
    def lines(self) -> Sequence[str]:
        return tuple(_LINE.findall(self.source))


class LspWorkspace(Workspace):
    def _create_text_document(self, doc_uri: str, source: str | None = None, version: int | None = None,
                              language_id: str | None = None) -> TextDocument:
        return LspTextDocument(doc_uri, source=source, version=version, language_id=language_id,
                               sync_kind=self._sync_kind, position_codec=self.position_codec)


def language_of(doc: TextDocument, uri: str) -> str | None:
    return doc.language_id or language_from_path(uri)


def get_document(workspace, uri: str) -> TextDocument:
    doc = workspace.text_documents.get(uri)
    if doc is None:
        raise JsonRpcInvalidParams(f"unknown document {uri}: send textDocument/didOpen first")
    return doc


def check_position(doc: TextDocument, uri: str, position: types.Position) -> None:
    """Raise InvalidParams unless `position` (client units) lies inside the document."""
    lines = doc.lines
    if position.line < 0 or position.character < 0 or position.line > len(lines) or (
            position.line == len(lines) and position.character > 0):
        raise JsonRpcInvalidParams(f"position {position.line}:{position.character} is outside {uri}")
    if position.line < len(lines):
        line = lines[position.line].rstrip("\r\n")
        if position.character > doc.position_codec.client_num_units(line):
            raise JsonRpcInvalidParams(
                f"character {position.character} is past the end of line {position.line} in {uri}")


def offset_of(doc: TextDocument, uri: str, position: types.Position) -> int:
    """str index of a checked client position."""
    check_position(doc, uri, position)
    return doc.offset_at_position(position)
