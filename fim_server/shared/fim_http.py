"""The HTTP fill-in-the-middle APIs other editor plugins speak, both sides, torch-free (docs/protocol.md).

Three request shapes map onto one `InfillRequest`:
- llama.cpp's `POST /infill` (llama.vim, llama.vscode): `input_prefix`, `prompt` (appended to the prefix),
  `input_suffix`, `input_extra`, `n_predict`, `stream`, `stop`...
- OpenAI's `POST /v1/completions` with `prompt` + `suffix` (Continue, minuet-ai.nvim, the `openai` SDK), and
  Inception's `POST /v1/fim/completions` (Mercury Coder), which has the same fields and answer.

Contract, server side: `parse_openai` / `parse_infill` turn a request body into a `Call` (the engine request
plus what the API does around it: stop strings, echo, usage) or raise `ApiError` carrying the HTTP status and
the message; `*_response` / `*_chunk` build the answers; `ApiError.body(api)` is the error in that API's own
shape. Fields a diffusion model has no use for (`top_p`, `presence_penalty`, `samplers`, ...) are accepted and
ignored; Diffill's own knobs (`steps`, `threshold`, `language`) are accepted as extra fields.
Client side (the language server's HTTP backends): `client_request` and `client_text`.
Streaming a diffusion model's answer as append-only text is `AppendOnly`'s job.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

from fim_server.shared.errors import DiffillError, ProtocolError
from fim_server.shared.protocol import (
    MAX_CANDIDATES,
    MAX_EXTRA,
    MAX_STEPS_LIMIT,
    MAX_TOKENS_LIMIT,
    ExtraChunk,
    InfillRequest,
    reject_constant,
)

PATHS = {"openai": "/v1/completions", "inception": "/v1/fim/completions", "llamacpp": "/infill"}  # per API
APIS = tuple(PATHS)
MAX_STOPS = 8
MAX_STOP_CHARS = 256
DEFAULT_MAX_TOKENS = 64  # the engine's default; OpenAI's own default (16) cuts most multi-line answers short


@dataclass
class ApiError(Exception):
    """A request the HTTP layer refuses: its status, a message for people, a stable code for programs."""

    status: int
    message: str
    code: str = "invalid_request"
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        if self.status == 403:
            return "permission_error"
        if self.status == 429:
            return "rate_limit_error"
        if self.status == 503:
            return "unavailable_error"
        return "server_error" if self.status >= 500 else "invalid_request_error"

    def body(self, api: str) -> dict:
        """OpenAI's error object (Inception uses it too); llama.cpp's has the status as its `code`."""
        if api == "llamacpp":
            return {"error": {"code": self.status, "message": self.message, "type": self.type}}
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def from_diffill(cls, e: DiffillError) -> ApiError:
        status = {"cancelled": 499, "closed": 503, "internal": 500, "backend": 502}.get(e.code, 400)
        return cls(status, str(e), e.code)


@dataclass(frozen=True)
class Call:
    """One HTTP completion call: the engine request and what the API does around its answer."""

    api: str
    req: InfillRequest
    model: str | None = None
    stops: tuple[str, ...] = ()
    echo: str = ""  # OpenAI `echo`: the prompt, put before the answer
    include_usage: bool = False
    response_fields: tuple[str, ...] = ()  # llama.cpp: answer only these ("timings/prompt_n" is lifted to the top)
    warm_only: bool = False  # llama.cpp `n_predict: 0` (llama.vim warms its cache so): answered empty at once


# ---- server side: requests -----------------------------------------------------------------------------------
def _load(body: bytes) -> dict:
    try:
        msg = json.loads(body.decode("utf-8"), parse_constant=reject_constant)
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not UTF-8 ({e.reason} at byte {e.start})", "bad_utf8") from None
    except (ValueError, RecursionError) as e:
        raise ApiError(400, f"request body is not JSON: {e}", "bad_json") from None
    if not isinstance(msg, dict):
        raise ApiError(400, "request body must be a JSON object", "bad_json")
    return msg


def _get(msg: dict, name: str, types: tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
    v = msg.get(name)
    if v is None:
        if required:
            raise ApiError(400, f"field {name!r} is required", "missing_field", name)
        return default
    if isinstance(v, bool) and bool not in types or not isinstance(v, types):
        want = " or ".join("array" if t is list else "object" if t is dict else t.__name__ for t in types)
        raise ApiError(400, f"field {name!r} must be {want}, got {type(v).__name__}", "bad_field", name)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
        raise ApiError(400, f"field {name!r} must be a finite number", "bad_field", name)
    return v


def _text(msg: dict, name: str, default: str | None = "") -> str:
    v = _get(msg, name, (str,), default, required=default is None)
    _check_unicode(v, name)
    return v


def _check_unicode(v: str, name: str) -> None:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"field {name!r} holds a lone surrogate: not valid Unicode text", "bad_field",
                       name) from None


def _stops(msg: dict, name: str = "stop") -> tuple[str, ...]:
    v = _get(msg, name, (str, list), [])
    stops = [v] if isinstance(v, str) else v
    if len(stops) > MAX_STOPS or not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"{name!r} must be a string or up to {MAX_STOPS} non-empty strings of at most "
                       f"{MAX_STOP_CHARS} characters", "bad_field", name)
    for s in stops:
        _check_unicode(s, name)
    return tuple(stops)


def _max_tokens(msg: dict, name: str) -> int:
    """Over the engine's limit is clamped to it (plugins ask for 256, 500, 1024 without a thought);
    n_predict -1 (llama.cpp's "no limit") is the limit."""
    v = _get(msg, name, (int,), DEFAULT_MAX_TOKENS)
    if v == -1 and name == "n_predict":
        return MAX_TOKENS_LIMIT
    if v == 0 and name == "n_predict":
        return 0
    if v < 1:
        raise ApiError(400, f"{name!r} must be at least 1, got {v}", "bad_field", name)
    return min(v, MAX_TOKENS_LIMIT)


def _knobs(msg: dict, temperature: float) -> dict:
    """Diffill's own fields and the temperature, checked as the websocket protocol checks them."""
    steps = _get(msg, "steps", (int,))
    if steps is not None and not 1 <= steps <= MAX_STEPS_LIMIT:
        raise ApiError(400, f"steps must be 1..{MAX_STEPS_LIMIT}, got {steps}", "bad_field", "steps")
    threshold = _get(msg, "threshold", (int, float))
    if threshold is not None and not 0 < threshold <= 1:
        raise ApiError(400, f"threshold must be in (0, 1], got {threshold}", "bad_field", "threshold")
    if not 0 <= temperature <= 10:
        raise ApiError(400, f"temperature must be in [0, 10], got {temperature}", "bad_field", "temperature")
    language = _get(msg, "language", (str,))
    return {"steps": steps, "threshold": None if threshold is None else float(threshold),
            "temperature": float(temperature), "language": language}


def parse_openai(body: bytes, rid: str, api: str = "openai") -> Call:
    """`POST /v1/completions` (api "openai") or `/v1/fim/completions` ("inception"): same fields."""
    msg = _load(body)
    prompt = _get(msg, "prompt", (str, list), "")
    if isinstance(prompt, list):  # the API allows a batch; one cursor is one prompt
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise ApiError(400, "'prompt' must be a string (or a list of exactly one string): one completion "
                           "per request", "bad_field", "prompt")
        prompt = prompt[0]
    _check_unicode(prompt, "prompt")
    suffix = _text(msg, "suffix")
    if suffix == "<|endoftext|>":  # Continue's Inception provider sends this for an empty suffix
        suffix = ""
    n = _get(msg, "n", (int,), 1)
    if n != 1:
        raise ApiError(400, f"'n' must be 1 (one completion per request), got {n}", "bad_field", "n")
    best_of = _get(msg, "best_of", (int,), 1)  # best of k candidates: what `candidates` does in the engine
    if not 1 <= best_of <= MAX_CANDIDATES:
        raise ApiError(400, f"'best_of' must be 1..{MAX_CANDIDATES}, got {best_of}", "bad_field", "best_of")
    stream = _get(msg, "stream", (bool,), False)
    options = _get(msg, "stream_options", (dict,), {})
    include_usage = _get(options, "include_usage", (bool,), False)
    echo = _get(msg, "echo", (bool,), False)
    model = _get(msg, "model", (str,))
    temperature = _get(msg, "temperature", (int, float), 0.0)
    req = InfillRequest(id=rid, prefix=prompt, suffix=suffix, max_tokens=_max_tokens(msg, "max_tokens"),
                        stream=stream and best_of == 1, append_only=True, candidates=best_of,
                        **_knobs(msg, temperature))
    return Call(api, req, model, _stops(msg), prompt if echo else "", include_usage)


def parse_infill(body: bytes, rid: str) -> Call:
    """llama.cpp's `POST /infill`: the prefix is `input_prefix` + `prompt`."""
    msg = _load(body)
    prefix = _text(msg, "input_prefix") + _text(msg, "prompt")
    suffix = _text(msg, "input_suffix")
    fields = _get(msg, "response_fields", (list,), [])
    if not all(isinstance(f, str) for f in fields):
        raise ApiError(400, "'response_fields' must be a list of strings", "bad_field", "response_fields")
    chunks = _get(msg, "input_extra", (list,), [])
    extra = []
    for i, c in enumerate(chunks):
        if not isinstance(c, dict):
            raise ApiError(400, f"input_extra[{i}] must be an object {{filename, text}}", "bad_field", "input_extra")
        extra.append(ExtraChunk(_text(c, "filename"), _text(c, "text")))
    stream = _get(msg, "stream", (bool,), False)
    temperature = _get(msg, "temperature", (int, float), 0.0)
    n_predict = _max_tokens(msg, "n_predict")
    # llama.vim's ring buffer holds up to `ring_n_chunks` chunks (16 by default, more if set), oldest first:
    # the newest MAX_EXTRA are kept
    req = InfillRequest(id=rid, prefix=prefix, suffix=suffix, max_tokens=max(1, n_predict), stream=stream,
                        append_only=True, extra=tuple(extra[-MAX_EXTRA:]), **_knobs(msg, temperature))
    return Call("llamacpp", req, None, _stops(msg), "", False, tuple(fields), n_predict == 0)


# ---- server side: answers ------------------------------------------------------------------------------------
def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str | None]:
    """-> (text before the earliest stop string, that stop string or None)."""
    best, word = len(text), None
    for s in stops:
        i = text.find(s)
        if 0 <= i < best:
            best, word = i, s
    return text[:best], word


def finish_reason(call: Call, tokens: int, stopped: str | None) -> str:
    """"length" when the model filled every slot it was given without ending the middle."""
    return "length" if stopped is None and tokens >= call.req.max_tokens else "stop"


def usage(result) -> dict:
    return {"prompt_tokens": result.context_tokens, "completion_tokens": result.tokens,
            "total_tokens": result.context_tokens + result.tokens}


def openai_response(call: Call, cid: str, created: int, model: str, text: str, reason: str, result) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"text": call.echo + text, "index": 0, "logprobs": None, "finish_reason": reason}],
            "usage": usage(result)}


def openai_chunk(cid: str, created: int, model: str, text: str, reason: str | None, *,
                 with_usage: bool = False) -> dict:
    chunk = {"id": cid, "object": "text_completion", "created": created, "model": model,
             "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": reason}]}
    if with_usage:  # with include_usage, every chunk but the usage chunk has "usage": null
        chunk["usage"] = None
    return chunk


def openai_usage_chunk(cid: str, created: int, model: str, result) -> dict:
    return {"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [],
            "usage": usage(result)}


def timings(result) -> dict:
    """llama.cpp's timings: prompt = computing the context (prefill), predicted = the denoising passes."""
    prompt_n = result.context_tokens - result.cached_tokens
    predicted_ms = round(max(0.0, result.ms - result.prefill_ms), 2)
    return {"cache_n": result.cached_tokens, "prompt_n": prompt_n, "prompt_ms": result.prefill_ms,
            "prompt_per_token_ms": _per(result.prefill_ms, prompt_n),
            "prompt_per_second": _rate(prompt_n, result.prefill_ms),
            "predicted_n": result.tokens, "predicted_ms": predicted_ms,
            "predicted_per_token_ms": _per(predicted_ms, result.tokens),
            "predicted_per_second": _rate(result.tokens, predicted_ms)}


def _per(ms: float, n: int) -> float:
    return round(ms / n, 3) if n else 0.0


def _rate(n: int, ms: float) -> float:
    return round(n / ms * 1000, 2) if ms else 0.0


def infill_response(call: Call, model: str, text: str, stopped: str | None, result) -> dict:
    limit = stopped is None and result.tokens >= call.req.max_tokens
    full = {"index": 0, "content": text, "stop": True, "model": model, "tokens_predicted": result.tokens,
            "tokens_evaluated": result.context_tokens, "tokens_cached": result.cached_tokens,
            "truncated": result.context_truncated, "stop_type": "word" if stopped else "limit" if limit else "eos",
            "stopping_word": stopped or "", "timings": timings(result), "valid": result.valid}
    return select_fields(full, call.response_fields)


def select_fields(full: dict, fields: tuple[str, ...]) -> dict:
    """llama.cpp's `response_fields`: only the fields named; a path "a/b" is answered as a top-level key
    "a/b" (how llama.vim reads timings). None named: everything."""
    if not fields:
        return full
    out = {}
    for path in fields:
        v: Any = full
        for part in path.split("/"):
            if not isinstance(v, dict) or part not in v:
                break
            v = v[part]
        else:
            out[path] = v
    return out


def infill_chunk(text: str, tokens: int = 0) -> dict:
    return {"index": 0, "content": text, "stop": False, "tokens_predicted": tokens}


def models_response(model: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": created, "owned_by": "diffill"}]}


class AppendOnly:
    """A diffusion model's draft as append-only text (docs/protocol.md, "Streaming over HTTP").

    The engine's draft is the committed text up to the first still-masked slot; it grows as passes commit
    tokens. `delta(draft)` is what to send now: the new part of the draft, never text a stop string could
    still claim (the last len(longest stop) - 1 characters wait). `end(final)` is the rest, or None when the
    final answer does not extend what was sent: the tree-sitter check re-masked or trimmed text already on
    the wire, which append-only text cannot take back."""

    def __init__(self, stops: tuple[str, ...] = ()):
        self.stops = stops
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.sent = ""
        self.stopped = False

    def delta(self, draft: str) -> str:
        if self.stopped:
            return ""
        text, word = cut_at_stop(draft, self.stops)
        if word is None:
            text = text[: max(0, len(text) - self.hold)]
        else:
            self.stopped = True
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new

    def end(self, final: str) -> str | None:
        if not final.startswith(self.sent):
            return None
        rest, self.sent = final[len(self.sent):], final
        return rest


def created_now() -> int:
    return int(time.time())


# ---- client side (the language server's HTTP backends) -------------------------------------------------------
def client_request(api: str, req: InfillRequest, model: str | None) -> tuple[str, dict]:
    """-> (path, JSON body) asking `api` for `req`'s middle, not streamed."""
    if api == "llamacpp":
        body: dict[str, Any] = {"input_prefix": req.prefix, "input_suffix": req.suffix, "prompt": "",
                                "n_predict": req.max_tokens, "stream": False, "cache_prompt": True,
                                "temperature": req.temperature}
        if req.extra:
            body["input_extra"] = [{"filename": c.path, "text": c.text} for c in req.extra]
    elif api in ("openai", "inception"):
        body = {"prompt": req.prefix, "suffix": req.suffix, "max_tokens": req.max_tokens, "stream": False,
                "temperature": req.temperature}
        model = model or ("mercury-coder" if api == "inception" else None)
        if model:
            body["model"] = model
    else:
        raise ValueError(f"unknown HTTP API {api!r}; expected one of {APIS}")
    # Diffill's own knobs: a diffill server uses them, others ignore unknown fields (hosted APIs may not:
    # they are sent only when set)
    for name in ("language", "steps", "threshold"):
        if getattr(req, name) is not None and api != "inception":
            body[name] = getattr(req, name)
    return PATHS[api], body


def client_text(api: str, status: int, raw: bytes) -> tuple[str, int]:
    """A server's answer -> (the middle's text, tokens). Raises ProtocolError("bad_reply") for an answer of
    the wrong shape, and DiffillError with the server's message for an error status."""
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        if status >= 400:
            raise DiffillError(f"HTTP {status}: {raw[:200].decode('utf-8', 'replace')}", code="backend") from None
        raise ProtocolError("bad_reply", f"answer is not JSON: {raw[:80]!r}") from None
    if status >= 400:
        err = msg.get("error") if isinstance(msg, dict) else None
        message = err.get("message") if isinstance(err, dict) else None
        code = err.get("code") if isinstance(err, dict) and isinstance(err.get("code"), str) else "backend"
        raise DiffillError(f"HTTP {status}: {message or str(msg)[:200]}", code=code)
    try:
        if api == "llamacpp":
            return str(msg["content"]), int(msg.get("tokens_predicted") or 0)
        choice = msg["choices"][0]
        tokens = (msg.get("usage") or {}).get("completion_tokens") or 0
        return str(choice["text"]), int(tokens)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ProtocolError("bad_reply", f"answer has no completion text: {str(msg)[:200]}") from None
