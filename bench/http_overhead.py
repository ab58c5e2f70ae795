"""What the HTTP APIs add over the websocket protocol, for the same requests to the same `diffill serve`.

A `diffill serve` process is started on a free port; for each case (the language server's windows around
held-out files' single-line holes, bench/realfiles.py) the context is first warmed (one request, not
counted), then the same infill is sent over the websocket, over `POST /v1/completions` and over
`POST /infill`, in a rotating order, each client on one kept-alive connection. Per request: the client's
wall time, and the overhead = wall time - the engine's own time (websocket: the answer's `ms`; HTTP: the
`Server-Timing: engine;dur=` header), so engine noise cancels; p50/p95 of each, per path. Target
(issue 16): HTTP adds at most 5 ms at p50 over the websocket.
Also, for n multi-line holes over `/infill`: what append-only streaming costs (the engine freezes the whole
lines it has streamed, so the final check cannot repair them): answers that differ from the same request
not streamed, and answers left invalid, streamed vs not; and how many parts a stream arrived in.

Run: `python bench/http_overhead.py [--n 40] [--out bench/results/http_overhead.json]`
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import pct, write_results  # noqa: E402

MAX_TOKENS = 24  # single-line, as the language server asks


def start_server() -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fim_server.cli", "serve", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 60:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("diffill serve did not become healthy in 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/http_overhead.json")
    a = ap.parse_args()

    from websockets.sync.client import connect

    from bench.realfiles import multi_line_holes, single_line_holes

    holes = single_line_holes(a.n, a.seed)
    proc, port = start_server()
    ws = connect(f"ws://127.0.0.1:{port}/", max_size=None, legacy=True)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ids = iter(range(10**9))

    def over_ws(prefix: str, suffix: str) -> tuple[float, float, str]:
        t0 = time.perf_counter()
        ws.send(json.dumps({"type": "infill", "id": f"w{next(ids)}", "prefix": prefix, "suffix": suffix,
                            "language": "python", "max_tokens": MAX_TOKENS}))
        msg = json.loads(ws.recv())
        wall = (time.perf_counter() - t0) * 1000
        assert msg["type"] == "result", msg
        return wall, msg["ms"], msg["text"]

    def over_http(path: str, body: dict) -> tuple[float, float, str]:
        t0 = time.perf_counter()
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        msg = json.loads(resp.read())
        wall = (time.perf_counter() - t0) * 1000
        assert resp.status == 200, msg
        engine_ms = float(resp.getheader("Server-Timing").partition("dur=")[2])
        return wall, engine_ms, msg["content"] if path == "/infill" else msg["choices"][0]["text"]

    def openai(prefix: str, suffix: str):
        return over_http("/v1/completions", {"model": "default", "prompt": prefix, "suffix": suffix,
                                             "max_tokens": MAX_TOKENS, "language": "python"})

    def infill(prefix: str, suffix: str):
        return over_http("/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": MAX_TOKENS,
                                     "language": "python"})

    paths = {"websocket": over_ws, "openai": openai, "llamacpp": infill}
    wall: dict[str, list[float]] = {k: [] for k in paths}
    over: dict[str, list[float]] = {k: [] for k in paths}
    same = 0
    try:
        for i, h in enumerate(holes):
            prefix, suffix = h.window()
            over_ws(prefix, suffix)  # warm: every path below finds the context cached
            order = list(paths)[i % 3:] + list(paths)[: i % 3]
            texts = {}
            for name in order:
                w, engine_ms, texts[name] = paths[name](prefix, suffix)
                wall[name].append(w)
                over[name].append(w - engine_ms)
            same += len(set(texts.values())) == 1
        streamed_parts, same_final, invalid = [], 0, {"streamed": 0, "not_streamed": 0}
        for h in multi_line_holes(a.n, a.seed):
            prefix, suffix = h.window()
            finals = {}
            for stream in (False, True):  # the same request not streamed, then streamed (append-only)
                conn.request("POST", "/infill", json.dumps({"input_prefix": prefix, "input_suffix": suffix,
                                                            "n_predict": 64, "language": "python", "stream": stream}))
                raw = conn.getresponse().read().decode()
                events = [json.loads(e[6:]) for e in raw.split("\n\n") if e.startswith("data: ")]
                if stream:
                    streamed_parts.append(sum(1 for e in events if e["content"]))
                    finals[stream] = {**events[-1], "content": "".join(e["content"] for e in events)}
                else:
                    finals[stream] = json.loads(raw)
            invalid["streamed"] += finals[True]["valid"] is False
            invalid["not_streamed"] += finals[False]["valid"] is False
            same_final += finals[True]["content"] == finals[False]["content"]
    finally:
        ws.close()
        conn.close()
        proc.terminate()
        proc.wait(10)
    res = {"n": len(holes), "max_tokens": MAX_TOKENS, "same_text_share": round(same / len(holes), 3),
           "multi_line_streams": {"n": a.n, "same_text_as_not_streamed": same_final,
                                  "invalid": invalid,
                                  "text_chunks_p50": pct([float(x) for x in streamed_parts], 50)}}
    for name in paths:
        res[name] = {"wall_p50_ms": round(pct(wall[name], 50), 2), "wall_p95_ms": round(pct(wall[name], 95), 2),
                     "overhead_p50_ms": round(pct(over[name], 50), 2),
                     "overhead_p95_ms": round(pct(over[name], 95), 2)}
    # the target's figure: overhead (wall - engine time) at p50, HTTP minus websocket
    res["http_minus_ws_overhead_p50_ms"] = {
        k: round(res[k]["overhead_p50_ms"] - res["websocket"]["overhead_p50_ms"], 2) for k in ("openai", "llamacpp")}
    write_results(res, a.out, "http_overhead.py")


if __name__ == "__main__":
    main()
