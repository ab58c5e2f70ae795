"""`diffill` command line: `serve` (websocket and HTTP FIM APIs on one port), `complete` (one infill, printed),
`lsp` (the language server, from the lsp package), `train`. `bench` comes with its own issue.
Heavy imports (torch, the model) happen inside the subcommands, so `diffill --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fim_server.shared.languages import language_from_path
from fim_server.shared.paths import DEFAULT_MODEL


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model directory (default: the embedded model)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, mps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    p.add_argument("--threshold", type=float, default=None, help="default confidence threshold tau (0, 1]")
    p.add_argument("--int8", action="store_true",
                   help="int8 Linear layers on CPU: ~1.5x faster, not bit-deterministic across cache hits")
    p.add_argument("--kv-refresh", type=int, default=0, metavar="N",
                   help="published models (Dream, LLaDA...): reuse the prefix's and suffix's keys/values for N "
                        "passes before recomputing them (approximate, faster); 0 (default): every pass is whole")
    p.add_argument("--window", type=int, default=2048, metavar="TOKENS",
                   help="published models: prefix + suffix tokens a request may use (default 2048)")


def _load_engine(a: argparse.Namespace):
    from fim_server.engine import Engine, EngineConfig

    kw = {}
    if a.threshold is not None:
        kw["threshold"] = a.threshold
    if not (a.model / "config.json").exists():
        sys.exit(f"diffill: no model at {a.model} (expected config.json, model.safetensors, tokenizer.json)")
    if a.kv_refresh < 0 or a.window < 64:
        sys.exit("diffill: --kv-refresh must be >= 0 and --window >= 64")
    from fim_server.families import ModelLoadError

    try:
        return Engine.load(a.model, device=a.device, config=EngineConfig(
            threads=a.threads, int8=a.int8, kv_refresh=a.kv_refresh, published_window=a.window, **kw))
    except ModelLoadError as e:
        sys.exit(f"diffill: {e}")


def parse_position(spec: str) -> tuple[Path, int, int]:
    """'path/to/file.py:LINE:COL' (1-based line and column, column in characters) -> parts."""
    try:
        path, line, col = spec.rsplit(":", 2)
        return Path(path), int(line), int(col)
    except ValueError:
        raise SystemExit(f"diffill complete: expected FILE:LINE:COL (1-based), got {spec!r}") from None


def split_at(text: str, line: int, col: int) -> tuple[str, str]:
    """Split text at a 1-based (line, column); raises ValueError with a clear message when out of range."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise ValueError(f"line {line} is out of range: the file has {len(lines)} lines")
    if not 1 <= col <= len(lines[line - 1]) + 1:
        raise ValueError(f"column {col} is out of range: line {line} has {len(lines[line - 1])} characters "
                         f"(columns 1..{len(lines[line - 1]) + 1})")
    offset = sum(len(x) + 1 for x in lines[: line - 1]) + col - 1
    return text[:offset], text[offset:]


def cmd_complete(a: argparse.Namespace) -> int:
    import asyncio
    import time

    from fim_server.shared.protocol import InfillRequest

    path, line, col = parse_position(a.position)
    try:
        text = path.read_text(encoding="utf-8")
        prefix, suffix = split_at(text, line, col)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        print(f"diffill complete: {path}: {e}", file=sys.stderr)
        return 2
    language = a.language or language_from_path(path.name)
    t0 = time.perf_counter()
    engine = _load_engine(a)
    load_ms = (time.perf_counter() - t0) * 1000
    req = InfillRequest(id="cli", prefix=prefix, suffix=suffix, language=language, max_tokens=a.max_tokens,
                        steps=a.steps, threshold=a.threshold)

    async def run():
        await engine.infill(req)  # warm-up: first call pays for allocator and thread start-up
        return await engine.infill(req)  # the second reuses the cached context, as typing would

    async def run_cold():
        return await engine.infill(req)

    res = asyncio.run(run() if a.warm else run_cold())
    engine.close()
    print(res.text)
    verdict = {True: "valid", False: "invalid", None: "not validated (no grammar)"}[res.valid]
    print(f"--- {res.tokens} tokens in {res.forward_passes} forward passes, {res.ms:.1f} ms "
          f"({'warm' if a.warm else 'cold'} context cache); syntax {verdict}"
          f"{', repair: ' + res.repair if res.repair else ''}; model loaded in {load_ms:.0f} ms", file=sys.stderr)
    return 0


def _autoscale(spec: str | None) -> tuple[int, int] | None:
    if spec is None:
        return None
    try:
        lo, hi = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ValueError(f"--autoscale takes MIN:MAX, got {spec!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"--autoscale needs 1 <= MIN <= MAX, got {spec!r}")
    return lo, hi


def cmd_serve(a: argparse.Namespace) -> int:
    import asyncio
    import logging

    from fim_server.server import ServerConfig, check_exposure, serve
    from fim_server.web import EngineSlot

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    cfg = ServerConfig(host=a.host, port=a.port, allowed_origins=tuple(a.allow_origin), token=a.token,
                       max_in_flight=a.max_in_flight, insecure_no_token=a.insecure_no_token,
                       http_language=a.language)
    try:
        check_exposure(cfg)  # before loading the model: a refused start is immediate
    except ValueError as e:
        print(f"diffill serve: {e}", file=sys.stderr)
        return 2
    if not (a.model / "config.json").exists():
        sys.exit(f"diffill: no model at {a.model} (expected config.json, model.safetensors, tokenizer.json)")
    if a.language is not None:
        from fim_server.shared import syntax

        if not syntax.supported(a.language):
            sys.exit(f"diffill serve: no grammar for --language {a.language!r} (python, javascript, typescript, "
                     "typescriptreact)")
    slot = EngineSlot()  # the server listens while the model loads, answering 503 until it has
    load = _load_engine
    if a.ray:
        try:
            autoscale = _autoscale(a.autoscale)
        except ValueError as e:
            sys.exit(f"diffill serve: {e}")
        if a.replicas < 1:
            sys.exit("diffill serve: --replicas must be >= 1")

        def load(a):
            try:
                from fim_server import ray_app
            except ImportError as e:
                sys.exit(f"diffill serve --ray needs Ray Serve: pip install 'diffill[ray]' ({e})")
            from fim_server.engine import EngineConfig

            kw = {"threshold": a.threshold} if a.threshold is not None else {}
            cfg = EngineConfig(int8=a.int8, kv_refresh=a.kv_refresh, published_window=a.window, **kw)
            return ray_app.start(a.model, a.device, replicas=a.replicas, autoscale=autoscale,
                                 address=a.ray_address, config=ray_app.engine_config(cfg))

    async def main() -> None:
        try:
            await serve(slot, cfg, load=lambda: asyncio.to_thread(load, a))
        finally:
            if slot.engine is not None:
                await slot.engine.aclose()
            if a.ray:
                from fim_server import ray_app

                await asyncio.to_thread(ray_app.shutdown)

    try:
        import uvloop  # Linux/macOS; the plain asyncio loop elsewhere

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    try:
        runner(main())
    except KeyboardInterrupt:
        pass
    except Exception as e:
        print(f"diffill serve: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_train(rest: list[str]) -> int:
    from fim_server.train import train

    sys.argv = ["diffill train", *rest]
    train.main()
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="diffill", description="Diffill: code completion by a diffusion model")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("complete", help="print the infill at FILE:LINE:COL (1-based) and its timing")
    c.add_argument("position", help="FILE:LINE:COL, 1-based; the completion is inserted at that column")
    c.add_argument("--language", default=None, help="language id (default: from the file extension)")
    c.add_argument("--max-tokens", type=int, default=64)
    c.add_argument("--steps", type=int, default=None, help="cap on denoising passes (test-time compute knob)")
    c.add_argument("--warm", action="store_true", help="run twice and report the second (cached context)")
    _engine_args(c)
    s = sub.add_parser("serve", help="run the server: the websocket protocol and the HTTP FIM APIs (/infill, "
                       "/v1/completions, /v1/fim/completions) on one port (docs/protocol.md)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="browser origin allowed to connect (repeatable); browsers are refused by default")
    s.add_argument("--token", default=None, help="require 'Authorization: Bearer TOKEN' (or ?token=); needed to "
                   "listen beyond loopback")
    s.add_argument("--insecure-no-token", action="store_true",
                   help="listen beyond loopback without a token (anyone who reaches the port can use it)")
    s.add_argument("--language", default=None, metavar="LANG",
                   help="language of HTTP requests that name none (editor plugins do not), so their answers get "
                        "the tree-sitter check: python, javascript, typescript, typescriptreact")
    s.add_argument("--ray", action="store_true",
                   help="serve from Ray Serve replicas with cache-affine routing (pip install 'diffill[ray]')")
    s.add_argument("--replicas", type=int, default=2, help="--ray: engine replicas (default 2)")
    s.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="--ray: autoscale between MIN and MAX replicas")
    s.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--ray: the Ray cluster to join (default: start a local one)")
    s.add_argument("--max-in-flight", type=int, default=16,
                   help="concurrent requests per websocket connection, and per HTTP client address")
    _engine_args(s)
    sub.add_parser("train", help="train a model (see `diffill train --help`)", add_help=False)
    from lsp.server import add_arguments  # imports pygls, not torch

    add_arguments(sub.add_parser("lsp", help="run the language server (stdio by default)"))
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return cmd_train(argv[1:])
    a = build_parser().parse_args(argv)
    if a.cmd == "lsp":
        from lsp.server import run

        return run(a)
    return {"complete": cmd_complete, "serve": cmd_serve}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
