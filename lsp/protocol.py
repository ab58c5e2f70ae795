"""pygls' LanguageServerProtocol with the JSON-RPC and LSP lifecycle rules it leaves out, and LSP line breaks.

Contract: every request gets exactly one response, and `receive(body)` handles one framed message body
(lsp/transport.py reads the frames). What pygls 2.1 does otherwise, and what is done here instead:
- a request whose params do not fit its method (a negative or non-integer position, NaN, `params` missing or
  of the wrong type): pygls raises from its JSON object hook and the read loop only logs it, so the client
  waits forever. Here it is answered InvalidParams naming the field (`$.params.position.line`); a request
  whose id is unusable (an object, a list) gets InvalidRequest with id null. Integers are strict: cattrs
  would take 1.5, true or "0" for 1, 1 and 0.
- a body that is not JSON, or JSON that is not a JSON-RPC 2.0 message: ParseError / InvalidRequest, id null.
- a request before `initialize`: ServerNotInitialized (-32002), not a traceback from the missing workspace;
  notifications before it are dropped, except `exit` (LSP).
- a second `initialize`: InvalidRequest; pygls would make a new workspace and forget every open document.
- a request after `shutdown`: InvalidRequest; pygls drops it without an answer.
- `exit`: pygls calls sys.exit, which its I/O loop swallows, so the process always ended with 0. Here it
  sets `exit_code` (0 after shutdown, else 1: LSP) and the transport ends; an end of input without `exit`
  gives the same code.
- documents split lines only at \\n, \\r\\n and \\r (lsp/documents.py), for positions and for changes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import cattrs
from lsprotocol import types
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcParseError,
    JsonRpcServerNotInitialized,
)
from pygls.protocol import LanguageServerProtocol, default_converter, lsp_method
from pygls.protocol.json_rpc import RPCError, RPCNotification, RPCRequest, RPCResponse

from lsp.documents import LspWorkspace

log = logging.getLogger("diffill.lsp")

_JSON = json.JSONDecoder()
_JSON_SPACE = " \t\r\n"


def _strict_int(value: Any, _type: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _strict_bool(value: Any, _type: type) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected a boolean, got {value!r}")
    return value


def strict_converter() -> cattrs.Converter:
    converter = default_converter()
    converter.register_structure_hook(int, _strict_int)
    converter.register_structure_hook(bool, _strict_bool)  # else bool (an int subclass) would take the int hook
    return converter


@dataclass(frozen=True)
class Unreadable:
    """A request that could not be structured: answered `error`, its handler never runs."""

    id: int | str | None
    error: JsonRpcException


def _request_id(data: Any) -> int | str | None:
    rid = data.get("id") if isinstance(data, dict) else None
    return rid if isinstance(rid, (int, str)) and not isinstance(rid, bool) else None


class DiffillProtocol(LanguageServerProtocol):
    def __init__(self, server, converter):
        super().__init__(server, converter)
        self.exit_code: int | None = None  # set by `exit`: the transport stops reading
        self.reader: asyncio.Task | None = None  # the transport's read loop (`stop` cancels it)
        self._initialize_received = False

    def stop(self, code: int) -> None:
        """End the session now, as if the client had sent `exit` (its process is gone, say)."""
        if self.exit_code is None:
            self.exit_code = code
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()

    def final_exit_code(self) -> int:
        """The process's exit code once the client is done: `exit`'s, or as if it had sent `exit` now."""
        if self.exit_code is not None:
            return self.exit_code
        return 0 if self._shutdown else 1

    def receive(self, body: bytes) -> bytes:
        """Handle one message body. -> the bytes after its JSON value: the body's frame declared more bytes
        than the message had, so they are the start of the next frame."""
        try:
            text = body.decode("utf-8")
            value, end = _JSON.raw_decode(text, len(text) - len(text.lstrip(_JSON_SPACE)))
        except ValueError as e:  # not UTF-8, not JSON
            log.warning("unreadable message body (%d bytes): %s", len(body), e)
            self._reply_error(None, JsonRpcParseError(f"Parse Error: {e}"))
            return b""
        rest = text[end:] if text[end:].strip(_JSON_SPACE) else ""
        if rest:
            log.warning("a message was %d bytes shorter than its Content-Length", len(rest.encode()))
        try:
            message = self.structure_message(value) if isinstance(value, dict) else value
        except JsonRpcException as e:  # a notification or response that does not fit its method
            log.warning("dropped a message that does not fit its method: %s", e.message)
        else:
            self.handle_message(message)
        return rest.encode()

    def structure_message(self, data: dict[str, Any]):
        try:
            return super().structure_message(data)
        except JsonRpcException as e:
            if "method" not in data or "id" not in data:
                raise  # not a request: there is nobody to answer
            rid = _request_id(data)
            if rid is None:
                return Unreadable(None, JsonRpcInvalidRequest("Invalid Request: id must be a string or an integer"))
            cause = e.__cause__
            detail = "params is required" if "params" not in data else \
                "; ".join(cattrs.transform_error(cause)) if isinstance(cause, cattrs.BaseValidationError) else \
                str(cause or e.message)
            return Unreadable(rid, JsonRpcInvalidParams(f"Invalid Params for {data['method']}: {detail}"))

    def handle_message(self, message) -> None:
        if isinstance(message, Unreadable):
            self._reply_error(message.id, message.error)
            return
        if not isinstance(message, (RPCRequest, RPCNotification, RPCResponse, RPCError)) or \
                message.jsonrpc != self.VERSION:
            self._reply_error(_request_id(message) if isinstance(message, dict) else getattr(message, "id", None),
                              JsonRpcInvalidRequest("Invalid Request: not a JSON-RPC 2.0 message"))
            return
        method = getattr(message, "method", None)
        if isinstance(message, RPCRequest):
            refusal = self._refusal(method)
            if refusal is not None:
                self._reply_error(message.id, refusal)
                return
            self._initialize_received = self._initialize_received or method == types.INITIALIZE
        elif method is not None and not self._initialize_received and method != types.EXIT:
            log.info("dropped %s: it came before initialize", method)
            return
        super().handle_message(message)

    def _refusal(self, method: str) -> JsonRpcException | None:
        if not self._initialize_received and method != types.INITIALIZE:
            return JsonRpcServerNotInitialized(f"{method} before initialize")
        if self._initialize_received and method == types.INITIALIZE:
            return JsonRpcInvalidRequest("initialize was already received")
        if self._shutdown:
            return JsonRpcInvalidRequest(f"{method} after shutdown: only exit is accepted")
        return None

    def _reply_error(self, msg_id: int | str | None, error: JsonRpcException) -> None:
        if msg_id is None:  # pygls' converter would drop the id; JSON-RPC wants "id": null
            self._send_data({"jsonrpc": self.VERSION, "id": None,
                             "error": {"code": error.code, "message": error.message}})
        else:
            self._send_response(msg_id, error=error.to_response_error())

    @lsp_method(types.INITIALIZE)
    def lsp_initialize(self, params: types.InitializeParams):
        result = yield from super().lsp_initialize(params)
        ws = self._workspace  # pygls makes a plain Workspace; documents need LSP line breaks
        self._workspace = LspWorkspace(ws.root_uri, self._server._text_document_sync_kind,
                                       list(ws.folders.values()), ws.position_encoding)
        return result

    @lsp_method(types.EXIT)
    def lsp_exit(self, *args) -> None:
        self.exit_code = 0 if self._shutdown else 1
