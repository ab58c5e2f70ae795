"""Wire types of the Diffill websocket protocol (docs/protocol.md) and its one codec, for both sides.

Contract: server side, `parse_client_message` turns one websocket message into a request dataclass or raises
`ProtocolError` with a machine-readable `code` and, when it could be read, the request `id`; the `*_message`
builders make the server's JSON objects. Client side (the language server's remote backend, benches, tests),
`request_message` encodes a request so that `parse_client_message` gives it back unchanged, and
`parse_server_message` decodes the server's answers into the same result dataclasses the engine returns.
Nothing here imports torch or does I/O.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from fim_server.shared.errors import DiffillError, ProtocolError

PROTOCOL_VERSION = 1
_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # a 1 MB file fits even with every character JSON-escaped
MAX_TOKENS_LIMIT = 512
MAX_STEPS_LIMIT = 1024
MAX_ID_CHARS = 128
MAX_REGIONS = 64  # regions in one edit request
MAX_CANDIDATES = 8  # candidates one infill may ask for
MAX_EXTRA = 32  # workspace chunks one request may carry
MAX_WIRE_INT = 2**53  # integers beyond this are out of range for every field (and not exact as JSON numbers)
EDIT_MODES = ("fill", "revise")


@dataclass(frozen=True)
class ExtraChunk:
    """Text from elsewhere in the workspace (another file, another part of this one) for the model to see."""

    path: str  # where it comes from, as the client names it (a workspace-relative path)
    text: str


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
    # test-time compute: denoise this many candidates together (the first as asked, the others sampled) and
    # answer the one that parses and the model finds most likely; 1..MAX_CANDIDATES
    candidates: int = 1
    # with `stream`: drafts are whole lines, each extending the last, and the answer begins with the last one
    # (the engine freezes what it has streamed). The HTTP APIs stream append-only text; not a websocket field
    append_only: bool = False
    # workspace context, most relevant last: placed before the file's own window (fim_server/context.py)
    extra: tuple[ExtraChunk, ...] = ()


@dataclass(frozen=True)
class EditRegion:
    """A span of the document to regenerate. Offsets are str indices (Unicode code points) into the text."""

    start: int
    end: int  # start == end: an insertion point (a hole)
    mode: str = "fill"  # "fill": new text, the span's text is discarded; "revise": re-mask unlikely tokens only
    max_tokens: int = 64  # "fill" only: most tokens the new text may have


@dataclass(frozen=True)
class EditRequest:
    """Regenerate several regions of one document jointly: one run of batched denoising passes for all."""

    id: str
    text: str
    regions: tuple[EditRegion, ...]  # sorted, disjoint
    language: str | None = None
    steps: int | None = None
    threshold: float | None = None
    temperature: float = 0.0
    revise_threshold: float | None = None  # "revise": tokens the model gives less than this are re-masked
    extra: tuple[ExtraChunk, ...] = ()  # as InfillRequest.extra


@dataclass(frozen=True)
class CancelRequest:
    id: str


@dataclass(frozen=True)
class PrefetchRequest:
    """`prefetch`: an infill that is about to come (same fields); its context is prefilled, nothing is answered."""

    infill: InfillRequest


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
    context_tokens: int = 0  # tokens of context the model saw (its prompt)
    prefill_ms: float = 0.0  # of `ms`, the time computing the context's keys/values (0 when all were cached)
    cached_tokens: int = 0  # of `context_tokens`, those whose keys/values came from the context cache


@dataclass(frozen=True)
class RegionResult:
    start: int  # the region as requested
    end: int
    text: str  # its new text (the original text when nothing valid was found: `changed` is False)
    changed: bool
    valid: bool | None  # tree-sitter verdict of the region's candidate (None: no grammar)
    tokens: int
    repair: str | None = None  # as InfillResult, plus "revert": the joint check put the original back
    remasked: int | None = None  # "revise": tokens the model re-masked (0: it found nothing to change)


@dataclass(frozen=True)
class EditResult:
    id: str
    regions: tuple[RegionResult, ...]
    errors_before: int | None  # syntax errors in the document as sent (None: no grammar)
    errors_after: int | None  # ... with every region's new text; never more than errors_before
    forward_passes: int  # batched passes this edit took part in (all regions together), scoring included
    ms: float
    context_truncated: bool = False


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
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_WIRE_INT:
        raise ProtocolError("bad_field", f"field {name!r} is out of range", rid)
    if isinstance(v, str) and _SURROGATE.search(v):
        raise ProtocolError("bad_field", f"field {name!r} holds a lone surrogate (\\ud800-\\udfff): not valid "
                            "Unicode text", rid)
    return v


def reject_constant(name: str) -> None:
    """json.loads' parse_constant: NaN, Infinity and -Infinity are not JSON numbers."""
    raise ValueError(f"{name} is not a JSON number")


def size_over(raw: str | bytes, cap: int) -> int | None:
    """The message's size in UTF-8 bytes when it is over `cap` bytes, else None (a short text, at most 4
    bytes a character, is not encoded to find out)."""
    if isinstance(raw, str):
        if len(raw) * 4 <= cap:
            return None
        raw = raw.encode("utf-8", "surrogatepass")
    return len(raw) if len(raw) > cap else None


def parse_client_message(raw: str | bytes) -> InfillRequest | EditRequest | CancelRequest | PrefetchRequest:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ProtocolError("bad_utf8", f"message is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        msg = json.loads(raw, parse_constant=reject_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, NaN/Infinity, ints of thousands of digits
        raise ProtocolError("bad_json", f"message is not JSON: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_json", "message must be a JSON object")
    rid = msg.get("id") if isinstance(msg.get("id"), str) else None
    mtype = msg.get("type")
    if mtype not in ("infill", "edit", "cancel", "prefetch"):
        raise ProtocolError("unknown_type", f"unknown message type {mtype!r}; expected 'infill', 'edit', "
                            "'cancel' or 'prefetch'", rid)
    rid = _field(msg, "id", (str,), None, required=True)
    if not rid or len(rid) > MAX_ID_CHARS:
        raise ProtocolError("bad_field", f"field 'id' must be 1..{MAX_ID_CHARS} characters", None)
    if mtype == "cancel":
        return CancelRequest(rid)
    language = _field(msg, "language", (str,), rid)
    steps = _field(msg, "steps", (int,), rid)
    if steps is not None and not 1 <= steps <= MAX_STEPS_LIMIT:
        raise ProtocolError("bad_field", f"steps must be 1..{MAX_STEPS_LIMIT}, got {steps}", rid)
    threshold = _probability(msg, "threshold", rid)
    temperature = _field(msg, "temperature", (int, float), rid, default=0.0)
    if not (math.isfinite(temperature) and 0 <= temperature <= 10):
        raise ProtocolError("bad_field", f"temperature must be in [0, 10], got {temperature}", rid)
    extra = _extra(msg, rid)
    if mtype == "edit":
        text = _field(msg, "text", (str,), rid, required=True)
        return EditRequest(id=rid, text=text, regions=_regions(msg, len(text), rid), language=language,
                           steps=steps, threshold=threshold, temperature=float(temperature),
                           revise_threshold=_probability(msg, "revise_threshold", rid), extra=extra)
    prefix = _field(msg, "prefix", (str,), rid, required=True)
    suffix = _field(msg, "suffix", (str,), rid, default="")
    max_tokens = _max_tokens(msg, rid)
    stream = _field(msg, "stream", (bool,), rid, default=False)
    candidates = _field(msg, "candidates", (int,), rid, default=1)
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise ProtocolError("bad_field", f"candidates must be 1..{MAX_CANDIDATES}, got {candidates}", rid)
    req = InfillRequest(id=rid, prefix=prefix, suffix=suffix, language=language, max_tokens=max_tokens,
                        stream=stream, steps=steps, threshold=threshold, temperature=float(temperature),
                        candidates=candidates, extra=extra)
    return PrefetchRequest(req) if mtype == "prefetch" else req


def _extra(msg: dict, rid: str) -> tuple[ExtraChunk, ...]:
    """`extra`: at most MAX_EXTRA objects {path, text} (the message's size cap bounds their text)."""
    raw = _field(msg, "extra", (list,), rid, default=[])
    if len(raw) > MAX_EXTRA:
        raise ProtocolError("bad_field", f"extra holds at most {MAX_EXTRA} chunks, got {len(raw)}", rid)
    out = []
    for i, c in enumerate(raw):
        if not isinstance(c, dict):
            raise ProtocolError("bad_field", f"extra[{i}] must be an object {{path, text}}", rid)
        out.append(ExtraChunk(_field(c, "path", (str,), rid, default=""), _field(c, "text", (str,), rid,
                                                                                 required=True)))
    return tuple(out)


def _probability(msg: dict, name: str, rid: str) -> float | None:
    v = _field(msg, name, (int, float), rid)
    if v is not None and not (0 < v <= 1):
        raise ProtocolError("bad_field", f"{name} must be in (0, 1], got {v}", rid)
    return None if v is None else float(v)


def _max_tokens(msg: dict, rid: str, where: str = "") -> int:
    v = _field(msg, "max_tokens", (int,), rid, default=64)
    if not 1 <= v <= MAX_TOKENS_LIMIT:
        raise ProtocolError("bad_field", f"{where}max_tokens must be 1..{MAX_TOKENS_LIMIT}, got {v}", rid)
    return v


def _regions(msg: dict, n_chars: int, rid: str) -> tuple[EditRegion, ...]:
    """Regions of an edit: 1..MAX_REGIONS objects, inside the text, disjoint (two holes may not share an
    offset), returned sorted by position."""
    raw = _field(msg, "regions", (list,), rid, required=True)
    if not 1 <= len(raw) <= MAX_REGIONS:
        raise ProtocolError("bad_field", f"regions must hold 1..{MAX_REGIONS} regions, got {len(raw)}", rid)
    out = []
    for i, r in enumerate(raw):
        where = f"regions[{i}]."
        if not isinstance(r, dict):
            raise ProtocolError("bad_field", f"regions[{i}] must be an object", rid)
        start = _field(r, "start", (int,), rid, required=True)
        end = _field(r, "end", (int,), rid, required=True)
        if not 0 <= start <= end <= n_chars:
            raise ProtocolError("bad_field", f"{where}start/end must satisfy 0 <= start <= end <= {n_chars} "
                                f"(the text's length in code points), got {start}..{end}", rid)
        mode = _field(r, "mode", (str,), rid, default="fill")
        if mode not in EDIT_MODES:
            raise ProtocolError("bad_field", f"{where}mode must be one of {EDIT_MODES}, got {mode!r}", rid)
        if mode == "revise" and start == end:
            raise ProtocolError("bad_field", f"{where}a 'revise' region must not be empty", rid)
        out.append(EditRegion(start, end, mode, _max_tokens(r, rid, where)))
    out.sort(key=lambda r: (r.start, r.end))
    for a, b in zip(out, out[1:]):
        if b.start < a.end or b.start == a.start:
            raise ProtocolError("bad_field", f"regions {a.start}..{a.end} and {b.start}..{b.end} overlap", rid)
    return tuple(out)


def result_message(r: InfillResult) -> dict:
    return {"type": "result", "id": r.id, "text": r.text, "valid": r.valid, "tokens": r.tokens,
            "forward_passes": r.forward_passes, "ms": r.ms, "repair": r.repair,
            "context_truncated": r.context_truncated, "context_tokens": r.context_tokens,
            "prefill_ms": r.prefill_ms, "cached_tokens": r.cached_tokens, "version": PROTOCOL_VERSION}


def edit_result_message(r: EditResult) -> dict:
    return {"type": "edit_result", "id": r.id,
            "regions": [{"start": g.start, "end": g.end, "text": g.text, "changed": g.changed, "valid": g.valid,
                         "tokens": g.tokens, "repair": g.repair, "remasked": g.remasked} for g in r.regions],
            "errors_before": r.errors_before, "errors_after": r.errors_after,
            "forward_passes": r.forward_passes, "ms": r.ms, "context_truncated": r.context_truncated,
            "version": PROTOCOL_VERSION}


def update_message(rid: str, text: str) -> dict:
    return {"type": "update", "id": rid, "text": text}


def cancelled_message(rid: str) -> dict:
    return {"type": "cancelled", "id": rid}


def error_message(err: DiffillError) -> dict:
    """Any DiffillError as the wire's `error` message: the one mapping of the error hierarchy to websocket."""
    return {"type": "error", "id": err.id, "code": err.code, "message": str(err)}


# ---- client side ---------------------------------------------------------------------------------------------
def request_message(req: InfillRequest | EditRequest | CancelRequest | PrefetchRequest) -> dict:
    """The JSON object for a request; `parse_client_message(json.dumps(request_message(r))) == r`. Fields left
    at their defaults are omitted."""
    if isinstance(req, CancelRequest):
        return {"type": "cancel", "id": req.id}
    if isinstance(req, PrefetchRequest):
        return {**request_message(req.infill), "type": "prefetch"}
    msg: dict[str, Any] = {"type": "edit" if isinstance(req, EditRequest) else "infill", "id": req.id}
    if isinstance(req, EditRequest):
        msg["text"] = req.text
        msg["regions"] = [{"start": r.start, "end": r.end, "mode": r.mode, "max_tokens": r.max_tokens}
                          for r in req.regions]
        optional = ("language", "steps", "threshold", "revise_threshold")
    else:
        msg.update(prefix=req.prefix, suffix=req.suffix, max_tokens=req.max_tokens)
        if req.stream:
            msg["stream"] = True
        if req.candidates != 1:
            msg["candidates"] = req.candidates
        optional = ("language", "steps", "threshold")
    for name in optional:
        if getattr(req, name) is not None:
            msg[name] = getattr(req, name)
    if req.extra:
        msg["extra"] = [{"path": c.path, "text": c.text} for c in req.extra]
    if req.temperature:
        msg["temperature"] = req.temperature
    return msg


@dataclass(frozen=True)
class Update:
    id: str
    text: str  # the streaming draft so far


@dataclass(frozen=True)
class CancelledReply:
    id: str


@dataclass(frozen=True)
class ErrorReply:
    id: str | None
    code: str
    message: str


ServerMessage = InfillResult | EditResult | Update | CancelledReply | ErrorReply


def parse_server_message(raw: str | bytes) -> ServerMessage:
    """One message from the server -> its dataclass. Raises ProtocolError("bad_reply") for anything the
    server could not have sent (not JSON, unknown type, fields missing or of the wrong type)."""
    try:
        msg = json.loads(raw)
        if not isinstance(msg, dict):
            raise TypeError("not an object")
        mtype, rid = msg["type"], msg.get("id")
        if mtype == "result":
            return InfillResult(id=rid, text=msg["text"], valid=msg["valid"], tokens=msg["tokens"],
                                forward_passes=msg["forward_passes"], ms=msg["ms"], repair=msg.get("repair"),
                                context_truncated=msg.get("context_truncated", False),
                                context_tokens=msg.get("context_tokens", 0), prefill_ms=msg.get("prefill_ms", 0.0),
                                cached_tokens=msg.get("cached_tokens", 0))
        if mtype == "edit_result":
            regions = tuple(RegionResult(start=g["start"], end=g["end"], text=g["text"], changed=g["changed"],
                                         valid=g["valid"], tokens=g["tokens"], repair=g.get("repair"),
                                         remasked=g.get("remasked")) for g in msg["regions"])
            return EditResult(id=rid, regions=regions, errors_before=msg["errors_before"],
                              errors_after=msg["errors_after"], forward_passes=msg["forward_passes"],
                              ms=msg["ms"], context_truncated=msg.get("context_truncated", False))
        if mtype == "update":
            return Update(id=rid, text=msg["text"])
        if mtype == "cancelled":
            return CancelledReply(id=rid)
        if mtype == "error":
            return ErrorReply(id=rid, code=msg["code"], message=msg["message"])
        raise ValueError(f"unknown message type {mtype!r}")
    except (ValueError, TypeError, KeyError, RecursionError) as e:
        raise ProtocolError("bad_reply", f"the server sent a message this client cannot read: {e!r}") from None
