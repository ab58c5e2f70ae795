"""Documents as the server holds them: look-up by URI, position checks, language ids. Errors are JSON-RPC
InvalidParams with a message that names the document and the position."""

from __future__ import annotations

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.workspace import TextDocument

from fim_server.shared.languages import language_from_path


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
