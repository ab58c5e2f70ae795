"""Engine latency, parallelism and memory on this machine's CPU: the fim_server targets.

Cases (`--source`), each with the cursor inside a function body:
- `heldout` (default): files of the packages the model never trained on, cut as the language server sends
  them: ~4000 characters before the cursor and 1500 after, which the engine cuts to its token window
  (bench/realfiles.py);
- `stdlib`: the cases of the figures before that (bench/RESULTS.md): this interpreter's standard library, a
  fixed sorted sample, 1-2 KB of context around the cursor; the model trained on these files.
The JSON records the source and the context sizes (characters sent, tokens the engine kept). Measured:
- single-line: cursor mid-line, the engine completes the rest of the line (max_tokens 24);
  "cold" = a context never seen, "typing" = the same cursor one keystroke later (the previous context is
  cached, as when a user types);
- multi-line: cursor at the start of a statement, max_tokens 64; tokens committed per forward pass;
- exact match of the single-line middle against the file's real rest-of-line (quality at a glance; the
  real quality numbers come from the HumanEval-infilling bench);
- `diffill serve` time to a healthy /healthz; peak resident memory of this process.

Run: `python bench/engine_latency.py [--n 60] [--source heldout|stdlib] [--threshold 0.9]
[--out bench/results/engine.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import socket
import statistics
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import context_sizes, pct, write_results  # noqa: E402

SOURCES = ("heldout", "stdlib")


def cases(n: int, seed: int = 0, source: str = "heldout") -> list[dict]:
    """n cases: single-line (prefix, prev_prefix, suffix, truth) and multi-line (ml_prefix, ml_suffix, ml_truth).
    prev_prefix is the same cursor one character earlier (the cold request)."""
    if source == "heldout":
        from bench.realfiles import cases as heldout_cases

        return heldout_cases(n, seed)
    if source != "stdlib":
        raise ValueError(f"unknown case source {source!r}: one of {SOURCES}")
    return stdlib_cases(n, seed)


def stdlib_cases(n: int, seed: int = 0) -> list[dict]:
    """Cursor positions inside function bodies of stdlib files, 1-2 KB of context around each."""
    rng = random.Random(seed)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out: list[dict] = []
    while len(out) < n:
        text = rng.choice(files).read_text("utf-8", errors="replace")
        lines = text.split("\n")
        cands = [i for i, ln in enumerate(lines) if ln.startswith("        ") and len(ln.strip()) > 12
                 and not ln.strip().startswith(("#", '"', "'"))]
        if not cands:
            continue
        i = rng.choice(cands)
        line_start = sum(len(x) + 1 for x in lines[:i])
        ln = lines[i]
        indent = len(ln) - len(ln.lstrip())
        cut = rng.randint(indent + 4, len(ln) - 2)
        cur = line_start + cut
        before = rng.randint(1000, 1600)
        after = rng.randint(200, 500)
        eol = line_start + len(ln)  # the middle is the rest of the line; the suffix starts at its newline
        k = min(len(lines) - 1, i + rng.randint(2, 4))  # multi-line: the statement and the next lines
        ml_end = sum(len(x) + 1 for x in lines[:k]) + len(lines[k])
        prefix = text[max(0, cur - before): cur]
        out.append({"prefix": prefix, "prev_prefix": prefix[:-1], "suffix": text[eol: eol + after],
                    "truth": ln[cut:], "ml_prefix": text[max(0, line_start + indent - before): line_start + indent],
                    "ml_suffix": text[ml_end: ml_end + after],
                    "ml_truth": text[line_start + indent: ml_end]})
    return out


async def run(args) -> dict:
    from fim_server.engine import Engine, EngineConfig
    from fim_server.shared.protocol import InfillRequest

    t0 = time.perf_counter()
    cfg = EngineConfig()
    eng = Engine.load(args.model, config=EngineConfig(
        threshold=args.threshold or cfg.threshold, eom_threshold=args.eom_threshold or cfg.eom_threshold,
        initial_slots=args.initial_slots or cfg.initial_slots, int8=args.int8,
        cold_window=cfg.cold_window if args.cold_window is None else args.cold_window))
    load_ms = (time.perf_counter() - t0) * 1000
    cs = cases(args.n, source=args.source)
    # warm-up on a full-size context that shares no token with any case's (a context starts with the suffix)
    await eng.infill(InfillRequest(id="warmup", prefix=cs[0]["prefix"], suffix="#\n" + cs[0]["suffix"], max_tokens=8))
    single_cold, single_typing, exact, tpp_single, cold_tokens, typing_tokens = [], [], 0, [], [], []
    for i, c in enumerate(cs):
        # cold: a context the cache has never seen (after a pause: the engine has nothing left to do)
        await asyncio.to_thread(eng.idle.wait, 30)
        r = await eng.infill(InfillRequest(id=f"s{i}", prefix=c["prev_prefix"], suffix=c["suffix"],
                                           language="python", max_tokens=24))
        single_cold.append(r.ms)
        cold_tokens.append(r.context_tokens)
        # typing: one more character typed; the previous context is in the cache, its full window too once
        # the engine had ~70 ms idle after the cold request (a keystroke comes later than that)
        await asyncio.to_thread(eng.idle.wait, 30)
        r = await eng.infill(InfillRequest(id=f"t{i}", prefix=c["prefix"], suffix=c["suffix"],
                                           language="python", max_tokens=24))
        single_typing.append(r.ms)
        typing_tokens.append(r.context_tokens)
        exact += r.text.strip() == c["truth"].strip()
        if r.tokens:
            tpp_single.append(r.tokens / max(1, r.forward_passes))
    multi_ms, multi_tok, multi_fp = [], [], []
    for i, c in enumerate(cs):
        await asyncio.to_thread(eng.idle.wait, 30)
        r = await eng.infill(InfillRequest(id=f"m{i}", prefix=c["ml_prefix"], suffix=c["ml_suffix"],
                                           language="python", max_tokens=64))
        multi_ms.append(r.ms)
        multi_tok.append(r.tokens)
        multi_fp.append(r.forward_passes)
    contexts = {"single_line": context_sizes(eng, [(c["prefix"], c["suffix"]) for c in cs], 24),
                "multi_line": context_sizes(eng, [(c["ml_prefix"], c["ml_suffix"]) for c in cs], 64)}
    eng.close()
    return {
        "source": args.source,
        "contexts": contexts,
        "model_load_ms": round(load_ms, 1),
        "single_line_cold_ms": {"p50": pct(single_cold, 50), "p95": pct(single_cold, 95)},
        # the context the engine used (Decoder.cold_window on cold requests, the full window once grown)
        "single_line_context_tokens": {"cold": round(statistics.mean(cold_tokens), 1),
                                       "typing": round(statistics.mean(typing_tokens), 1)},
        "single_line_typing_ms": {"p50": pct(single_typing, 50), "p95": pct(single_typing, 95)},
        "single_line_exact_match": round(exact / len(cs), 3),
        "multi_line_ms": {"p50": pct(multi_ms, 50), "p95": pct(multi_ms, 95)},
        "multi_line_tokens_mean": round(statistics.mean(multi_tok), 1),
        "multi_line_tokens_per_forward_pass": round(sum(multi_tok) / max(1, sum(multi_fp)), 2),
        "single_line_tokens_per_forward_pass": round(statistics.mean(tpp_single), 2) if tpp_single else 0.0,
    }


def serve_health_seconds(model: Path) -> float | None:
    """Start `diffill serve` on a free port and time the first 200 from /healthz."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "fim_server.cli", "serve", "--port", str(port), "--model",
                             str(model)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < 30:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.02)
        return None
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "fim_server" / "models" / "default")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--source", choices=SOURCES, default="heldout",
                    help="heldout: unseen files, language-server windows (default); stdlib: the older cases")
    ap.add_argument("--threshold", type=float, default=None, help="default: the engine's")
    ap.add_argument("--eom-threshold", type=float, default=None, help="default: the engine's")
    ap.add_argument("--initial-slots", type=int, default=None, help="default: the engine's")
    ap.add_argument("--int8", action="store_true", help="int8 dynamic quantisation of Linear layers")
    ap.add_argument("--cold-window", type=int, default=None, help="default: the engine's (0: full window always)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    args = ap.parse_args()
    res = asyncio.run(run(args))
    res["serve_healthy_s"] = serve_health_seconds(args.model)
    res["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    from fim_server.engine import EngineConfig

    d = EngineConfig()
    res["engine"] = {"threshold": args.threshold or d.threshold, "eom_threshold": args.eom_threshold or d.eom_threshold,
                     "initial_slots": args.initial_slots or d.initial_slots, "int8": args.int8,
                     "cold_window": d.cold_window if args.cold_window is None else args.cold_window}
    res["cases"] = args.n
    write_results(res, args.out, "engine_latency.py")


if __name__ == "__main__":
    main()
