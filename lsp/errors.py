"""The one mapping of Diffill's errors to JSON-RPC errors (the websocket's is `protocol.error_message`).

Contract: `to_jsonrpc(err)` keys on the stable `err.code`, so an error means the same whether the in-process
engine raised it or a `diffill serve` sent it: a request the user could change (a field out of range, e.g. a
region too long to revise; a document over the size cap) is InvalidParams, a cancelled one RequestCancelled,
anything else InternalError. The message is kept, and `data` carries the code for programs.
Completions never go through here: they answer empty instead of showing an error.
"""

from __future__ import annotations

from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcRequestCancelled,
)

from fim_server.shared.errors import DiffillError

INVALID_PARAMS_CODES = frozenset({"bad_field", "missing_field", "too_large"})


def to_jsonrpc(err: DiffillError) -> JsonRpcException:
    if err.code in INVALID_PARAMS_CODES:
        cls = JsonRpcInvalidParams
    elif err.code == "cancelled":
        cls = JsonRpcRequestCancelled
    else:
        cls = JsonRpcInternalError
    return cls(str(err), data={"code": err.code})
