"""Latency through the real protocols: spawns `python -m lsp` (stdio, in-process default model), and a
websocket `diffill serve` (in this process, loopback) for the same cases.

Documents (`--source`): `heldout` (default) = files of the packages the model never trained on
(bench/realfiles.py); `stdlib` = this interpreter's standard library, which the model trained on (the cases
of the figures before that). The language server cuts its own windows from the whole document either way
(~4000 characters before the cursor, 1500 after); the JSON records the source and the context sizes.
- single-line, cold: inlineCompletion at a cursor mid-line inside a function whose rest of the line is not
  typed yet (a context the engine has not seen), request to response; warm: the same request again;
- multi-line, cold: heldout: the cursor at the start of a statement in a function body, the statement and
  the next lines not typed yet; stdlib: the cursor on a new indented blank line after a line that opens a
  block (`...:`). Either way the server asks for a multi-line body;
- single-line after a keystroke: the document is opened without the character before that cursor, and after
  a pause that character is typed (didChange), then, after VS Code's 50 ms debounce, inlineCompletion: with
  the language server's `prefetch` on (its default: the change hands the engine the request that will follow)
  and off;
- typing replay: a file is opened cut at a point inside a function, then the next characters are typed one
  at a time, with a didChange and an inlineCompletion per keystroke (an editor without debounce); reports
  what the user waits for after each keystroke and how often the answer continued the previous suggestion;
- websocket: the same single-line (cold, warm) and multi-line contexts as `infill` requests, one at a time,
  with the language server's windows.
p50 / p95 / p99 everywhere (nearest rank).

Run: `python bench/lsp_latency.py [--n 40] [--keystrokes 200] [--source heldout|stdlib] [--out bench/results/lsp.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import sysconfig
import time
from pathlib import Path

from lsprotocol import types
from pytest_lsp import make_test_lsp_client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import context_sizes, pct, write_results  # noqa: E402
from bench.realfiles import lsp_window, multi_line_holes, single_line_holes  # noqa: E402

SOURCES = ("heldout", "stdlib")


def _sample_lines(n: int, seed: int, wanted, then=lambda rng, line: ()) -> list[tuple]:
    """n (file, line index, *then(rng, line)) picked at random among the lines `wanted(line)` of stdlib files."""
    rng = random.Random(seed)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out = []
    while len(out) < n:
        f = rng.choice(files)
        lines = f.read_text("utf-8", errors="replace").split("\n")
        cands = [i for i, ln in enumerate(lines[:-1]) if wanted(ln)]
        if cands:
            i = rng.choice(cands)
            out.append((str(f), i, *then(rng, lines[i])))
    return out


def positions(n: int, seed: int = 0) -> list[tuple[str, int, int]]:
    """(file, line, character): a cursor inside a line of a function body."""
    return _sample_lines(n, seed, lambda ln: ln.startswith("        ") and len(ln.strip()) > 12,
                         lambda rng, ln: (rng.randint(len(ln) - len(ln.lstrip()) + 4, len(ln) - 2),))


def block_positions(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(file, line) of lines inside functions that open a block (end with ':'), with a body after them."""
    return _sample_lines(n, seed, lambda ln: ln.startswith("        ") and ln.rstrip().endswith(":")
                         and not ln.strip().startswith(("#", "else", "try", "finally")))


def stats(xs: list[float]) -> dict:
    return {"p50": pct(xs, 50), "p95": pct(xs, 95), "p99": pct(xs, 99), "n": len(xs)}


def position(text: str, offset: int) -> tuple[int, int]:
    """(line, character) of str index `offset`, the character in UTF-16 code units (the LSP default)."""
    line_start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset), len(text[line_start: offset].encode("utf-16-le")) // 2


async def request(client, uri: str, line: int, ch: int):
    t = time.perf_counter()
    res = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=ch),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
    return (time.perf_counter() - t) * 1000, res


async def in_document(client, uri: str, text: str, offset: int, times: int = 1) -> list[tuple]:
    """Open `text` as `uri`, ask for a completion at `offset` `times` times, close it. -> [(ms, result)]."""
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text=text)))
    out = [await request(client, uri, *position(text, offset)) for _ in range(times)]
    client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))
    return out


DEBOUNCE_MS = 50  # VS Code's inline-completion debounce (code-server 4.139: InlineCompletionsDebounce 50..50)
PAUSE_S = 0.5  # before each keystroke: the engine has finished what it was doing (a user's pause)


async def after_keystroke(client, uri: str, text: str, offset: int) -> float:
    """Open `text` without the character before `offset`, pause, type it (didChange), wait the editor's
    debounce, ask for a completion at `offset`. -> ms from the request to its answer."""
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text=text[: offset - 1] + text[offset:])))
    await asyncio.sleep(PAUSE_S)
    line, ch = position(text, offset - 1)
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=line, character=ch),
                              end=types.Position(line=line, character=ch)), text=text[offset - 1])]))
    await asyncio.sleep(DEBOUNCE_MS / 1000)
    ms, _ = await request(client, uri, *position(text, offset))
    client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri=uri)))
    return ms


async def run(args) -> dict:
    singles, multis = single_cases(args.n, args.source), multi_cases(args.n, args.source)  # may download first
    client = make_test_lsp_client()
    await client.start_io(sys.executable, "-m", "lsp", cwd=str(ROOT))
    await client.initialize_session(types.InitializeParams(capabilities=types.ClientCapabilities()))
    # warm-up: the engine loads in the background after `initialized`; wait for the first real answer
    uri0 = "file:///bench/warm.py"
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri0, language_id="python", version=1, text="def f(x):\n    return x\n")))
    t0 = time.perf_counter()
    await request(client, uri0, 1, 11)
    first_ms = (time.perf_counter() - t0) * 1000
    single, warm, multi, multi_lines = [], [], [], []
    for k, (text, offset) in enumerate(singles):
        (cold_ms, _), (warm_ms, _) = await in_document(client, f"file:///bench/s{k}.py", text, offset, times=2)
        single.append(cold_ms)
        warm.append(warm_ms)
    # after a keystroke, as an editor asks: didChange, its debounce, then inlineCompletion; with the language
    # server's prefetch on (it hands the engine the request at the change) and off
    keystroke = {}
    for prefetch in (True, False):
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
            settings={"diffill": {"prefetch": prefetch}}))
        keystroke["prefetch" if prefetch else "no_prefetch"] = stats(
            [await after_keystroke(client, f"file:///bench/k{k}-{prefetch}.py", text, offset)
             for k, (text, offset) in enumerate(singles)])
    for k, (text, offset) in enumerate(multis):
        ((ms, res),) = await in_document(client, f"file:///bench/m{k}.py", text, offset)
        multi.append(ms)
        multi_lines.append(res.items[0].insert_text.count("\n") + 1 if res.items else 0)
    # typing replay
    text, cut = typing_start(args.source)
    line, ch = position(text, cut)
    to_type = text[cut: cut + args.keystrokes]
    doc = text[:cut] + text[cut + args.keystrokes:]
    uri = "file:///bench/typing.py"
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text=doc)))
    typing, continued, prev = [], 0, None
    ln, col = line, ch
    for i, c in enumerate(to_type):
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=i + 2),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=types.Position(line=ln, character=col),
                                  end=types.Position(line=ln, character=col)), text=c)]))
        if c == "\n":
            ln, col = ln + 1, 0
        else:
            col += len(c.encode("utf-16-le")) // 2
        ms, res = await request(client, uri, ln, col)
        typing.append(ms)
        now = res.items[0].insert_text if res.items else None
        if prev is not None and now is not None and prev[1:] == now and prev[:1] == c:
            continued += 1
        prev = now
    await client.shutdown_session()
    await client.stop()
    ws, contexts = await websocket(singles, multis)
    return {
        "source": args.source,
        "contexts": contexts,
        "first_completion_after_start_ms": round(first_ms, 1),
        "single_line_ms": stats(single),
        "single_line_warm_ms": stats(warm),
        "single_line_after_keystroke_ms": {**keystroke, "debounce_ms": DEBOUNCE_MS},
        "multi_line_ms": stats(multi),
        "multi_line_lines_shown_mean": round(sum(multi_lines) / max(1, len(multi_lines)), 2),
        "typing_ms": {**stats(typing), "keystrokes": len(typing)},
        "typing_continued_previous_suggestion": continued,
        "websocket": ws,
    }


def _offset(lines: list[str], line: int, ch: int) -> int:
    return sum(len(x) + 1 for x in lines[:line]) + ch


def single_cases(n: int, source: str = "heldout") -> list[tuple[str, int]]:
    """(document, cursor offset): the rest of the cursor's line is what the user has not typed yet."""
    if source == "heldout":
        return [(h.document, h.start) for h in single_line_holes(n)]
    out = []
    for path, line, ch in positions(n):
        lines = Path(path).read_text("utf-8", errors="replace").split("\n")
        lines[line] = lines[line][:ch]
        out.append(("\n".join(lines), _offset(lines, line, ch)))
    return out


def multi_cases(n: int, source: str = "heldout") -> list[tuple[str, int]]:
    """(document, cursor offset) where the server asks for a multi-line answer. heldout: the start of a
    statement, it and the next lines not typed yet; stdlib: a new blank line, indented one level, after a
    block-opening line."""
    if source == "heldout":
        return [(h.document, h.start) for h in multi_line_holes(n)]
    out = []
    for path, line in block_positions(n):
        lines = Path(path).read_text("utf-8", errors="replace").split("\n")
        indent = len(lines[line]) - len(lines[line].lstrip()) + 4
        lines.insert(line + 1, " " * indent)
        out.append(("\n".join(lines), _offset(lines, line + 1, indent)))
    return out


def typing_start(source: str) -> tuple[str, int]:
    """(the whole file, offset inside a function) where the typing replay starts."""
    if source == "heldout":
        h = single_line_holes(1, seed=7)[0]
        return h.text, h.start
    path, line, ch = positions(1, seed=7)[0]
    text = Path(path).read_text("utf-8", errors="replace")
    return text, _offset(text.split("\n"), line, ch)


async def websocket(singles: list[tuple[str, int]], multis: list[tuple[str, int]]) -> tuple[dict, dict]:
    """The same contexts as `infill` requests to a `diffill serve` on loopback, one at a time, with the
    language server's windows. -> (latencies, context sizes of the single- and multi-line cases)."""
    import json

    from websockets.asyncio.client import connect

    from fim_server.engine import Engine
    from fim_server.server import ServerConfig, start_server

    engine = Engine.load(ROOT / "fim_server" / "models" / "default")
    srv = await start_server(engine, ServerConfig(port=0))
    out: dict = {}
    single_windows = [lsp_window(text, offset) for text, offset in singles]
    multi_windows = [lsp_window(text, offset) for text, offset in multis]
    contexts = {"single_line": context_sizes(engine, single_windows, 24),
                "multi_line": context_sizes(engine, multi_windows, 64)}
    try:
        async with connect(f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}") as ws:
            async def ask(i: str, prefix: str, suffix: str, max_tokens: int) -> float:
                t = time.perf_counter()
                await ws.send(json.dumps({"type": "infill", "id": i, "prefix": prefix, "suffix": suffix or "\n",
                                          "language": "python", "max_tokens": max_tokens}))
                msg = json.loads(await ws.recv())
                assert msg["type"] == "result", msg
                return (time.perf_counter() - t) * 1000

            await ask("warmup", "def f(x):\n    return ", "\n", 8)
            cold, warm, multi = [], [], []
            for k, (prefix, suffix) in enumerate(single_windows):
                cold.append(await ask(f"c{k}", prefix, suffix, 24))
                warm.append(await ask(f"w{k}", prefix, suffix, 24))
            for k, (prefix, suffix) in enumerate(multi_windows):
                multi.append(await ask(f"m{k}", prefix, suffix, 64))
            out = {"single_line_ms": stats(cold), "single_line_warm_ms": stats(warm), "multi_line_ms": stats(multi)}
    finally:
        srv.close()
        await srv.wait_closed()
        engine.close()
    return out, contexts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--keystrokes", type=int, default=200)
    ap.add_argument("--source", choices=SOURCES, default="heldout",
                    help="heldout: files the model never trained on (default); stdlib: the older cases")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lsp.json")
    args = ap.parse_args()
    res = asyncio.run(run(args))
    write_results(res, args.out, "lsp_latency.py")


if __name__ == "__main__":
    main()
