"""`diffill serve --ray` against the single-process engine (issue: "Beyond one machine").

    python bench/ray_serve.py --clients 1 4 16 --keystrokes 8

Each client replays typing in its own real file (bench/realfiles.py single-line holes in the held-out
packages: the language server's window, then one request per keystroke of the hole's text, awaiting each
answer before the next keystroke). Configurations, each on a fresh engine: the single-process engine; Ray
Serve with 1 replica (what Ray adds per request); 2 replicas with Diffill's cache-affine router; 2 replicas
with Ray's default router (power of two choices). Reported per configuration and client count: requests/s,
latency p50/p95 (ms, end to end from the engine interface the front end uses); for every keystroke after
a document's first, the share of its context found in the serving replica's cache (mean), the share of
requests that found at least half of it there ("cache hit"), and the prefill time p50.

On this project's machine (2 CPU cores) two replicas cannot be faster than one process: they split the same
two cores. What this measures there is Ray's cost per request and whether affinity keeps the cache hits.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import pct, write_results  # noqa: E402
from bench.realfiles import single_line_holes  # noqa: E402


async def replay(engine, clients: int, keystrokes: int, holes, tag: str) -> dict:
    lat, hits, n, reuse, prefill = [], 0, 0, [], []

    async def client(c: int) -> None:
        nonlocal hits, n
        from fim_server.shared.protocol import InfillRequest

        h = holes[c % len(holes)]
        prefix, suffix = h.window()
        for k in range(keystrokes):
            typed = h.truth[:k]
            req = InfillRequest(id=f"{tag}-{c}-{k}", prefix=prefix + typed, suffix=suffix, language="python",
                                max_tokens=24)
            t = time.perf_counter()
            res = await engine.infill(req)
            lat.append((time.perf_counter() - t) * 1000)
            n += 1
            if k > 0:  # the first request of a document cannot find it cached
                share = res.cached_tokens / max(1, res.context_tokens)
                reuse.append(share)
                hits += share >= 0.5
                prefill.append(res.prefill_ms)

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": n, "req_per_s": round(n / wall, 2), "p50_ms": pct(lat, 50),
            "p95_ms": pct(lat, 95), "cache_hit_share": round(hits / max(1, len(reuse)), 3),
            "reused_context_share": round(sum(reuse) / max(1, len(reuse)), 3), "prefill_ms_p50": pct(prefill, 50)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--keystrokes", type=int, default=8)
    ap.add_argument("--configs", nargs="+", default=["single", "ray1", "ray2-affinity", "ray2-default"])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ray_serve.json")
    a = ap.parse_args()

    from fim_server import ray_app
    from fim_server.engine import Engine
    from fim_server.shared.paths import DEFAULT_MODEL

    holes = single_line_holes(max(a.clients), seed=3)
    res: dict = {"keystrokes": a.keystrokes, "configs": {}}
    for cfg in a.configs:
        t0 = time.perf_counter()
        if cfg == "single":
            engine = Engine.load(DEFAULT_MODEL)
        else:
            engine = ray_app.start(DEFAULT_MODEL, "cpu", replicas=1 if cfg == "ray1" else 2,
                                   affinity=cfg != "ray2-default")
        start_s = round(time.perf_counter() - t0, 1)
        rows = []
        for c in a.clients:
            rows.append(asyncio.run(replay(engine, c, a.keystrokes, holes, f"{cfg}{c}")))
            print(cfg, rows[-1], flush=True)
        res["configs"][cfg] = {"start_s": start_s, "rows": rows}
        if cfg == "single":
            engine.close()
        else:
            ray_app.shutdown()
    write_results(res, a.out, "ray_serve.py")


if __name__ == "__main__":
    main()
