"""One error hierarchy for everything Diffill says went wrong, each with a stable machine-readable `code`.

Every transport maps a `DiffillError` in exactly one place: the websocket server through
`protocol.error_message`, the language server through `lsp.errors.to_jsonrpc`. `str(err)` is for humans;
`code` is for programs (docs/protocol.md lists them).
"""

from __future__ import annotations


class DiffillError(Exception):
    """Base class. `code` is stable; `id` names the request when it is known."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, id: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.id = id


class ProtocolError(DiffillError):
    """A message that cannot be acted on (bad JSON, a missing or mistyped field, an unknown id...)."""

    def __init__(self, code: str, message: str, id: str | None = None):
        super().__init__(message, code=code, id=id)


class RequestError(DiffillError):
    """A well-formed request that cannot be served as asked (e.g. a region too long to revise)."""

    code = "bad_field"


class Cancelled(DiffillError):
    """The request was cancelled (by its caller, or because the engine closed) before it finished."""

    code = "cancelled"


class EngineError(DiffillError):
    """The engine failed while serving a request; the engine itself carries on."""

    code = "internal"


class BackendError(DiffillError):
    """A backend could not answer: not loaded, unreachable, or it answered with an error."""

    code = "backend"
