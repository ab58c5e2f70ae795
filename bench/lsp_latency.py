"""Latency through the real LSP protocol: spawns `python -m lsp` (stdio, in-process default model).

- single-line: inlineCompletion at cursors inside functions of standard-library files, request to response;
- typing replay: a file is opened cut at a point inside a function, then the next characters are typed one
  at a time, with a didChange and an inlineCompletion per keystroke (an editor without debounce); reports
  what the user waits for after each keystroke and how often the answer continued the previous suggestion.

Run: `python bench/lsp_latency.py [--n 40] [--keystrokes 200] [--out bench/results/lsp.json]`
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

from bench.common import pct, write_results  # noqa: E402


def positions(n: int, seed: int = 0) -> list[tuple[str, int, int]]:
    rng = random.Random(seed)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out = []
    while len(out) < n:
        f = rng.choice(files)
        lines = f.read_text("utf-8", errors="replace").split("\n")
        cands = [i for i, ln in enumerate(lines) if ln.startswith("        ") and len(ln.strip()) > 12]
        if cands:
            i = rng.choice(cands)
            out.append((str(f), i, rng.randint(len(lines[i]) - len(lines[i].lstrip()) + 4, len(lines[i]) - 2)))
    return out


async def request(client, uri: str, line: int, ch: int):
    t = time.perf_counter()
    res = await client.text_document_inline_completion_async(types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=types.Position(line=line, character=ch),
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic)))
    return (time.perf_counter() - t) * 1000, res


async def run(args) -> dict:
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
    single = []
    for k, (path, line, ch) in enumerate(positions(args.n)):
        text = Path(path).read_text("utf-8", errors="replace")
        lines = text.split("\n")
        lines[line] = lines[line][:ch]  # the rest of the line is what the user has not typed yet
        uri = f"file:///bench/s{k}.py"
        client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
            uri=uri, language_id="python", version=1, text="\n".join(lines))))
        ms, _ = await request(client, uri, line, ch)
        single.append(ms)
        client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))
    # typing replay
    path, line, ch = positions(1, seed=7)[0]
    text = Path(path).read_text("utf-8", errors="replace")
    lines = text.split("\n")
    cut = sum(len(x) + 1 for x in lines[:line]) + ch
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
    return {
        "first_completion_after_start_ms": round(first_ms, 1),
        "single_line_ms": {"p50": pct(single, 50), "p95": pct(single, 95), "n": len(single)},
        "typing_ms": {"p50": pct(typing, 50), "p95": pct(typing, 95), "keystrokes": len(typing)},
        "typing_continued_previous_suggestion": continued,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--keystrokes", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "lsp.json")
    args = ap.parse_args()
    res = asyncio.run(run(args))
    write_results(res, args.out, "lsp_latency.py")


if __name__ == "__main__":
    main()
