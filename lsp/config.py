"""Settings, from `initializationOptions` and `workspace/didChangeConfiguration` (key "diffill" or flat).

Unknown keys are ignored and mistyped values keep their defaults (logged), so a client's typo never stops
completions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields, replace
from typing import Any

log = logging.getLogger("diffill.lsp")

BACKENDS = ("openai", "inception", "llamacpp")  # the HTTP FIM APIs (fim_server.shared.fim_http.APIS)


@dataclass(frozen=True)
class Settings:
    enabled: bool = True
    server_url: str | None = None  # ws://host:port of a `diffill serve`, or an http(s):// FIM API; None = in-process
    backend: str | None = None  # for http(s) URLs: "openai", "inception" or "llamacpp" (default "openai")
    api_key: str | None = field(default=None, repr=False)  # http(s) backends; else env DIFFILL_API_KEY; never logged
    remote_model: str | None = None  # the `model` field sent to http(s) backends (inception: "mercury-coder")
    model: str | None = None  # model directory for the in-process engine; None = the embedded default
    device: str = "cpu"
    max_tokens: int = 64  # multi-line completions
    single_line_max_tokens: int = 24  # mid-line: the rest of the line
    steps: int | None = None
    threshold: float | None = None
    candidates: int = 1  # test-time compute: candidates denoised together, the most likely valid one shown (1..8)
    revise_threshold: float | None = None  # rewrite: re-mask tokens the model gives less than this (engine: 0.5)
    languages: tuple[str, ...] = ("python", "javascript", "javascriptreact", "typescript", "typescriptreact")
    prefix_chars: int = 4000  # text sent before the cursor (the engine cuts to its token window)
    suffix_chars: int = 1500
    # workspace context (fim_server/shared/workspace.py): tokens of other code sent with each completion;
    # 0 = none. Off by default: the shipped model was not trained on it (bench/workspace_context.py)
    context_tokens: int = 0
    # on each typed change, tell the backend the completion request that will follow (lsp/completer.py, warm)
    prefetch: bool = True

    def updated(self, options: Any) -> Settings:
        if not isinstance(options, dict):
            return self
        opts = options.get("diffill", options)
        if not isinstance(opts, dict):
            return self
        kw: dict[str, Any] = {}
        for f in fields(self):
            key = f.name
            camel = "".join(w.capitalize() if i else w for i, w in enumerate(key.split("_")))
            if key not in opts and camel not in opts:
                continue
            v = opts.get(key, opts.get(camel))
            default = getattr(self, key)
            if key == "languages" and isinstance(v, list) and all(isinstance(x, str) for x in v):
                kw[key] = tuple(v)
            elif v is None and key in ("server_url", "model", "steps", "threshold", "revise_threshold", "backend",
                                       "api_key", "remote_model"):
                kw[key] = None
            elif isinstance(default, bool) and isinstance(v, bool):
                kw[key] = v
            elif key == "context_tokens" and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 4096:
                kw[key] = v
            elif key == "candidates" and not (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 8):
                log.warning("ignoring setting %s=%r (an integer 1..8)", key, v)
            elif isinstance(default, int) and not isinstance(default, bool) and isinstance(v, int) \
                    and not isinstance(v, bool) and v > 0:
                kw[key] = v
            elif key in ("steps",) and isinstance(v, int) and not isinstance(v, bool) and v > 0:
                kw[key] = v
            elif key in ("threshold", "revise_threshold") and isinstance(v, (int, float)) \
                    and not isinstance(v, bool) and 0 < v <= 1:
                kw[key] = float(v)
            elif key == "backend" and v not in BACKENDS:
                log.warning("ignoring setting backend=%r (one of %s)", v, ", ".join(BACKENDS))
            elif key in ("server_url", "model", "device", "backend", "api_key", "remote_model") and isinstance(v, str):
                kw[key] = v or None if key != "device" else v
            elif key == "api_key":
                log.warning("ignoring setting api_key (a string expected)")  # its value is never logged
            else:
                log.warning("ignoring setting %s=%r (wrong type or range)", key, v)
        return replace(self, **kw)
