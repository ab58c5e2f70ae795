"""Wire types of the Diffill websocket protocol (docs/protocol.md), shared by server, clients and tests.

Contract: `parse_client_message` turns one websocket message into a request dataclass or raises
`ProtocolError` with a machine-readable `code` and, when it could be read, the request `id`; the `*_message`
builders make the server's JSON objects. Nothing here imports torch or does I/O.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a 1 MB file fits even with every character JSON-escaped
MAX_TOKENS_LIMIT = 512
MAX_STEPS_LIMIT = 1024
MAX_ID_CHARS = 128


@dataclass(frozen=True)
class InfillRequest:
    id: str
    prefix: str
    suffix: str
    language: str | None = None
    max_tokens: int = 64  # 1..MAX_TOKENS_LIMIT
    stream: bool = False
    steps: int | None = None  # cap on denoising passes; None = engine default (as many as needed)
    threshold: float | None = None  # confidence threshold tau in (0, 1]; None = engine default
    temperature: float = 0.0  # 0 = greedy, deterministic


@dataclass(frozen=True)
class CancelRequest:
    id: str


@dataclass(frozen=True)
class InfillResult:
    id: str
    text: str
    valid: bool | None  # tree-sitter verdict; None = no grammar for the language
    tokens: int
    forward_passes: int
    ms: float
    repair: str | None = None  # None, "remask", "trim" or "drop"
    context_truncated: bool = False


class ProtocolError(Exception):
    """A message the server cannot act on. `code` is stable; str(self) is for humans."""

    def __init__(self, code: str, message: str, id: str | None = None):
        super().__init__(message)
        self.code = code
        self.id = id


def _field(msg: dict, name: str, types: tuple[type, ...], rid: str | None, *, required: bool = False,
           default: Any = None) -> Any:
    if name not in msg or msg[name] is None:
        if required:
            raise ProtocolError("missing_field", f"field {name!r} is required", rid)
        return default
    v = msg[name]
    # bool is a subclass of int in Python, never a number on the wire
    if isinstance(v, bool) and bool not in types or not isinstance(v, types):
        want = " or ".join(t.__name__ for t in types)
        raise ProtocolError("bad_field", f"field {name!r} must be {want}, got {type(v).__name__}", rid)
    return v


def parse_client_message(raw: str | bytes) -> InfillRequest | CancelRequest:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError("bad_utf8", f"message is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        msg = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("bad_json", f"message is not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", "message must be a JSON object")
    rid = msg.get("id") if isinstance(msg.get("id"), str) else None
    mtype = msg.get("type")
    if mtype not in ("infill", "cancel"):
        raise ProtocolError("unknown_type", f"unknown message type {mtype!r}; expected 'infill' or 'cancel'", rid)
    rid = _field(msg, "id", (str,), None, required=True)
    if not rid or len(rid) > MAX_ID_CHARS:
        raise ProtocolError("bad_field", f"field 'id' must be 1..{MAX_ID_CHARS} characters", None)
    if mtype == "cancel":
        return CancelRequest(rid)
    prefix = _field(msg, "prefix", (str,), rid, required=True)
    suffix = _field(msg, "suffix", (str,), rid, default="")
    language = _field(msg, "language", (str,), rid)
    max_tokens = _field(msg, "max_tokens", (int,), rid, default=64)
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise ProtocolError("bad_field", f"max_tokens must be 1..{MAX_TOKENS_LIMIT}, got {max_tokens}", rid)
    stream = _field(msg, "stream", (bool,), rid, default=False)
    steps = _field(msg, "steps", (int,), rid)
    if steps is not None and not 1 <= steps <= MAX_STEPS_LIMIT:
        raise ProtocolError("bad_field", f"steps must be 1..{MAX_STEPS_LIMIT}, got {steps}", rid)
    threshold = _field(msg, "threshold", (int, float), rid)
    if threshold is not None and not (0 < threshold <= 1):
        raise ProtocolError("bad_field", f"threshold must be in (0, 1], got {threshold}", rid)
    temperature = _field(msg, "temperature", (int, float), rid, default=0.0)
    if not (math.isfinite(temperature) and 0 <= temperature <= 10):
        raise ProtocolError("bad_field", f"temperature must be in [0, 10], got {temperature}", rid)
    return InfillRequest(id=rid, prefix=prefix, suffix=suffix, language=language, max_tokens=max_tokens,
                         stream=stream, steps=steps, threshold=None if threshold is None else float(threshold),
                         temperature=float(temperature))


def result_message(r: InfillResult) -> dict:
    return {"type": "result", "id": r.id, "text": r.text, "valid": r.valid, "tokens": r.tokens,
            "forward_passes": r.forward_passes, "ms": r.ms, "repair": r.repair,
            "context_truncated": r.context_truncated, "version": PROTOCOL_VERSION}


def update_message(rid: str, text: str) -> dict:
    return {"type": "update", "id": rid, "text": text}


def cancelled_message(rid: str) -> dict:
    return {"type": "cancelled", "id": rid}


def error_message(err: ProtocolError) -> dict:
    return {"type": "error", "id": err.id, "code": err.code, "message": str(err)}
