"""Load through the websocket: 1, 4 and 16 concurrent clients against one `diffill serve` on loopback.

Each client opens its own connection and sends single-line infill requests back to back (the single-line
cases of engine_latency.py, `--source heldout` by default: language-server windows of files the model never
trained on; `--source stdlib` for the older cases) for a fixed number of requests. Reports latency
percentiles per concurrency, requests per second, and whether every request got its result (nothing lost).
The server runs in this process on port 0 with the default engine, so the engine's batching of
concurrent requests into shared passes is what is measured.

Run: `python bench/load.py [--requests 48] [--clients 1,4,16] [--source heldout|stdlib] [--out bench/results/load.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import context_sizes, pct, write_results  # noqa: E402
from bench.engine_latency import SOURCES, cases  # noqa: E402


async def client(port: int, work: list[dict], cid: int, lat: list[float]) -> int:
    from websockets.asyncio.client import connect

    got = 0
    async with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
        for i, c in enumerate(work):
            rid = f"c{cid}-{i}"
            t = time.perf_counter()
            await ws.send(json.dumps({"type": "infill", "id": rid, "prefix": c["prefix"], "suffix": c["suffix"],
                                      "language": "python", "max_tokens": 24}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == rid and msg["type"] in ("result", "error", "cancelled"):
                    break
            lat.append((time.perf_counter() - t) * 1000)
            got += msg["type"] == "result"
    return got


async def run(args) -> dict:
    from fim_server.engine import Engine
    from fim_server.server import ServerConfig, start_server

    engine = Engine.load(ROOT / "fim_server" / "models" / "default")
    srv = await start_server(engine, ServerConfig(port=0, max_in_flight=64))
    port = srv.sockets[0].getsockname()[1]
    work = cases(max(args.requests, 8), source=args.source)
    contexts = context_sizes(engine, [(c["prefix"], c["suffix"]) for c in work], 24)
    out = {}
    try:
        # warm-up on two full-size contexts no request shares a token prefix with (a context starts with the suffix)
        await client(port, [{**c, "suffix": "#\n" + c["suffix"]} for c in work[:2]], -1, [])
        for n in args.clients:
            lat: list[float] = []
            per = args.requests // n or 1
            t0 = time.perf_counter()
            got = await asyncio.gather(*(client(port, [work[(k * per + j) % len(work)] for j in range(per)], k, lat)
                                         for k in range(n)))
            wall = time.perf_counter() - t0
            out[str(n)] = {"requests": n * per, "answered": sum(got), "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95),
                           "p99_ms": pct(lat, 99), "requests_per_s": round(n * per / wall, 1)}
            print(n, json.dumps(out[str(n)]), flush=True)
    finally:
        srv.close()
        await srv.wait_closed()
        engine.close()
    return {"source": args.source, "contexts": {"single_line": contexts}, "clients": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level, split over clients")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--source", choices=SOURCES, default="heldout",
                    help="heldout: unseen files, language-server windows (default); stdlib: the older cases")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "load.json")
    args = ap.parse_args()
    args.clients = [int(x) for x in args.clients.split(",")]
    write_results(asyncio.run(run(args)), args.out, "load.py")


if __name__ == "__main__":
    main()
