"""Reliability under hostile and broken websocket and HTTP clients: a bounded fault campaign against a real
`diffill serve` (the shipped model, a subprocess, loopback only). Figures for bench/RESULTS.md "Reliability".

What it sends, and what counts:
- malformed messages of many kinds (bad JSON, wrong types, numbers past range, NaN, lone surrogates, binary
  that is not UTF-8, unknown types, oversize...): each must get an `error` with a code on a connection that
  stays open; "deaf" = no answer within 5 s; "crashes" = the connection or the server went away;
- pipelined cancels: an infill and its cancel in ONE write: each must be answered `cancelled`;
- many clients at once, half of their requests cancelled: every request answered (result or cancelled);
- an abusive connection (edits of 64 holes each, in flight together) beside a normal one typing
  single-line completions: the normal one's p50/p95;
- the server's resident memory before, at the peak of, and after the abuse (VmRSS of its process);
- HTTP: broken requests of many kinds (not HTTP at all, bad framing, huge headers and bodies, bad JSON...),
  each on its own connection, must get the right 4xx status ("deaf" = no answer in 10 s); clients that hang
  up mid-request; then a good request must be answered.
The campaign stops by itself: every loop is bounded in count and time.

Run: `python bench/faults.py [--quick] [--out bench/results/faults.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import pct, write_results  # noqa: E402

CODE = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self."


def malformed() -> list[tuple[str, str | bytes]]:
    """(name, raw message) for each kind of bad input."""
    ok = {"type": "infill", "id": "m", "prefix": "x = ", "suffix": "\n"}

    def j(**kw):
        return json.dumps({**ok, **kw})

    cases = [
        ("not json", "{"), ("empty", ""), ("array", "[1, 2]"), ("null", "null"), ("number", "42"),
        ("string", '"infill"'), ("deep nesting", "[" * 100_000 + "]" * 100_000),
        ("binary not utf-8", b"\xff\xfe\x00bad"), ("unknown type", j(type="complete")), ("no type", '{"id": "m"}'),
        ("no id", json.dumps({"type": "infill", "prefix": "x"})), ("empty id", j(id="")), ("long id", j(id="x" * 500)),
        ("id is a number", j(id=7)), ("no prefix", json.dumps({"type": "infill", "id": "m"})),
        ("prefix is a list", j(prefix=["x"])), ("suffix is a number", j(suffix=3)),
        ("max_tokens 0", j(max_tokens=0)), ("max_tokens huge", j(max_tokens=10**9)),
        ("max_tokens bool", j(max_tokens=True)),
        ("max_tokens float", j(max_tokens=2.5)), ("steps 0", j(steps=0)), ("steps negative", j(steps=-3)),
        ("threshold 0", j(threshold=0)), ("threshold 2", j(threshold=2)), ("threshold string", j(threshold="high")),
        ("temperature negative", j(temperature=-1)), ("temperature 1e400 digits", j()[:-1] + ', "temperature": 1'
                                                      + "0" * 400 + "}"),
        ("int of 5000 digits", j()[:-1] + ', "max_tokens": ' + "9" * 5000 + "}"),
        ("NaN", j()[:-1] + ', "temperature": NaN}'), ("Infinity", j()[:-1] + ', "threshold": Infinity}'),
        ("lone surrogate in prefix", j()[:-1].replace('"x = "', '"x\\ud800"') + "}"),
        ("stream not bool", j(stream="yes")), ("language a number", j(language=5)), ("candidates 99", j(candidates=99)),
        ("cancel unknown id", json.dumps({"type": "cancel", "id": "nothing"})),
        ("cancel without id", json.dumps({"type": "cancel"})),
        ("edit without regions", json.dumps({"type": "edit", "id": "m", "text": "x"})),
        ("edit regions not a list", json.dumps({"type": "edit", "id": "m", "text": "x", "regions": 3})),
        ("edit region outside text", json.dumps({"type": "edit", "id": "m", "text": "x", "regions": [{"start": 0,
                                                                                                     "end": 9}]})),
        ("edit regions overlap", json.dumps({"type": "edit", "id": "m", "text": "abcdef",
                                             "regions": [{"start": 0, "end": 3}, {"start": 2, "end": 4}]})),
        ("edit 65 regions", json.dumps({"type": "edit", "id": "m", "text": "x" * 100,
                                        "regions": [{"start": i, "end": i} for i in range(65)]})),
        ("edit revise empty", json.dumps({"type": "edit", "id": "m", "text": "x",
                                          "regions": [{"start": 0, "end": 0, "mode": "revise"}]})),
        ("edit mode unknown", json.dumps({"type": "edit", "id": "m", "text": "x",
                                          "regions": [{"start": 0, "end": 0, "mode": "erase"}]})),
        ("oversize ascii", j(prefix="x" * (9 * 1024 * 1024))),
        ("oversize multi-byte", j(prefix="é" * (5 * 1024 * 1024))),
    ]
    return cases


async def recv_for(ws, rid, timeout=5.0, any_error=False):
    """The final message for `rid` (with `any_error`, also an error naming any id or none), or None when
    nothing came in time."""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        try:
            msg = json.loads(await asyncio.wait_for(ws.recv(), left))
        except asyncio.TimeoutError:
            return None
        if msg["type"] in ("result", "edit_result", "cancelled", "error") and \
                (msg.get("id") == rid or any_error and msg["type"] == "error"):
            return msg
    return None


async def campaign(url: str, quick: bool, rss) -> dict:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    out: dict = {}
    # 1. malformed messages on one connection
    sent, errors, deaf, crashes = 0, 0, 0, 0
    async with connect(url, max_size=None) as ws:
        for name, raw in malformed():
            sent += 1
            try:
                await ws.send(raw)
                msg = await recv_for(ws, "m", any_error=True)
            except ConnectionClosed:
                crashes += 1
                break
            if msg is None:
                deaf += 1
                print("deaf after:", name, file=sys.stderr)
            elif msg["type"] == "error" and msg.get("code"):
                errors += 1
            else:
                print("not an error:", name, msg["type"], file=sys.stderr)
        await ws.send(json.dumps({"type": "infill", "id": "after", "prefix": CODE, "suffix": "\n"}))
        after = await recv_for(ws, "after", 30)
    out["malformed"] = {"kinds": sent, "coded_errors": errors, "deaf": deaf, "crashes": crashes,
                        "answers_after": after is not None and after["type"] == "result"}
    # 2. pipelined cancels
    n = 8 if quick else 32
    honoured = 0
    async with connect(url) as ws:
        for i in range(n):
            rid = f"p{i}"
            ws.protocol.send_text(json.dumps({"type": "infill", "id": rid, "prefix": CODE + f" # {i}\n",
                                              "max_tokens": 64}).encode())
            ws.protocol.send_text(json.dumps({"type": "cancel", "id": rid}).encode())
            ws.send_data()  # both frames in one write
            msg = await recv_for(ws, rid, 30)
            honoured += msg is not None and msg["type"] == "cancelled"
    out["pipelined_cancels"] = {"sent": n, "cancelled": honoured}
    # 3. many clients, half cancelled
    clients = 8 if quick else 32

    async def client(c: int) -> tuple[int, int]:
        answered = 0
        async with connect(url) as ws:
            for r in range(2):
                rid = f"c{c}r{r}"
                await ws.send(json.dumps({"type": "infill", "id": rid, "prefix": CODE + f"  # {c} {r}\n    ",
                                          "suffix": "\n", "max_tokens": 24}))
                if (c + r) % 2:
                    await ws.send(json.dumps({"type": "cancel", "id": rid}))
                msg = await recv_for(ws, rid, 120)
                answered += msg is not None and msg["type"] in ("result", "cancelled")
        return answered

    got = await asyncio.gather(*(client(c) for c in range(clients)))
    out["load_with_cancels"] = {"clients": clients, "requests": 2 * clients, "answered": sum(got)}
    # 4. an abusive connection beside a normal one; 5. memory
    edits = 4 if quick else 16
    text = "".join(f"def f{i}(x):\n    return \n\n" for i in range(64))
    holes = [{"start": m, "end": m, "max_tokens": 64} for m in
             (i for i in range(len(text)) if text.startswith("return ", i - 7) and text[i] == "\n")]
    rss_before = rss()
    normal_ms: list[float] = []
    peak = rss_before
    async with connect(url, max_size=None) as abuser, connect(url) as normal:
        for e in range(edits):
            await abuser.send(json.dumps({"type": "edit", "id": f"e{e}", "text": text, "regions": holes}))
        for i in range(10 if quick else 30):
            t0 = time.perf_counter()
            await normal.send(json.dumps({"type": "infill", "id": f"n{i}", "prefix": CODE + f"\n# {i}\n" + CODE,
                                          "suffix": "\n", "max_tokens": 16}))
            msg = await recv_for(normal, f"n{i}", 60)
            normal_ms.append((time.perf_counter() - t0) * 1000 if msg else 60_000.0)
            peak = max(peak, rss())
        for e in range(edits):
            await abuser.send(json.dumps({"type": "cancel", "id": f"e{e}"}))
    after = rss()
    # the engine retires the cancelled edits, goes idle and, TRIM_AFTER_S later, returns its memory: wait for
    # that, then until the resident size stops falling
    from fim_server.engine import TRIM_AFTER_S

    settle = time.perf_counter() + TRIM_AFTER_S + 1.0
    for _ in range(20 + int(2 * TRIM_AFTER_S)):
        await asyncio.sleep(0.5)
        now = rss()
        if now >= after - 1 and time.perf_counter() > settle:
            break
        after = min(after, now)
    out["abusive_neighbour"] = {"edits_in_flight": edits, "holes_each": len(holes),
                                "normal_ms": {"p50": pct(normal_ms, 50), "p95": pct(normal_ms, 95),
                                              "n": len(normal_ms)}}
    out["rss_mb"] = {"before": rss_before, "peak": peak, "after": after}
    return out


def http_malformed() -> list[tuple[str, bytes, int]]:
    """(name, raw bytes on a fresh connection, the status expected) for broken HTTP clients."""
    def post(path: str, body: bytes, extra: str = "") -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n").encode() + body

    big = b'{"prompt": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    return [
        ("not http", b"\x16\x03\x01\x02\x00 hello\r\n\r\n", 400),
        ("bad request line", b"GARBAGE\r\n\r\n", 400),
        ("http/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        ("header without colon", b"POST /infill HTTP/1.1\r\nHost x\r\n\r\n", 400),
        ("endless header", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 200_000, 431),
        ("bad content-length", b"POST /infill HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400),
        ("two content-lengths", b"POST /infill HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                b"Content-Length: 3\r\n\r\n{}", 400),
        ("bad chunk size", b"POST /infill HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        ("body over the cap", post("/v1/completions", big), 413),
        ("chunked body over the cap", b"POST /infill HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         + b"".join(b"100000\r\n" + b"a" * 0x100000 + b"\r\n" for _ in range(9)) + b"0\r\n\r\n", 413),
        ("not json", post("/v1/completions", b"{nope"), 400),
        ("json array", post("/infill", b"[1]"), 400),
        ("NaN", post("/v1/completions", b'{"prompt": "x", "temperature": NaN}'), 400),
        ("huge int", post("/v1/completions", b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}"), 400),
        ("lone surrogate", post("/infill", b'{"input_prefix": "\\ud800"}'), 400),
        ("not utf-8", post("/v1/completions", b'{"prompt": "\xff"}'), 400),
        ("deep nesting", post("/v1/completions", b"[" * 100_000 + b"]" * 100_000), 400),
        ("wrong types", post("/v1/fim/completions", b'{"prompt": ["a", "b"], "stop": 5}'), 400),
        ("unknown path", post("/v1/chat/completions", b"{}"), 404),
        ("wrong method", b"PUT /infill HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        ("foreign origin", post("/infill", b"{}", "Origin: https://evil.example\r\n"), 403),
    ]


async def http_campaign(port: int) -> dict:
    """Each broken request on its own connection: it must get its status (never a 5xx, never silence), and
    the server must answer a good request afterwards. Then clients that hang up mid-request."""
    right, wrong, deaf = 0, 0, 0
    for name, raw, want in http_malformed():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(raw)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 10)
        except (asyncio.TimeoutError, ConnectionError):
            line = b""
        finally:
            writer.close()
        if not line:
            deaf += 1
            print("HTTP: no answer to", name, file=sys.stderr)
        elif int(line.split()[1]) == want:
            right += 1
        else:
            wrong += 1
            print("HTTP:", name, "got", line.strip().decode(), "expected", want, file=sys.stderr)
    hung = 0
    for i in range(8):  # hang up after the head, mid-body, and mid-answer
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = json.dumps({"prompt": CODE + f" # {i}", "max_tokens": 64, "stream": True}).encode()
        cut = [0, len(body) // 2, len(body), len(body)][i % 4]
        writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(body), body[:cut]))
        await writer.drain()
        writer.close()
        hung += 1
    good = json.dumps({"prompt": CODE, "suffix": "\n", "max_tokens": 16}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(good), good))
    answered = b" 200 " in await asyncio.wait_for(reader.readline(), 60)
    writer.close()
    return {"kinds": len(http_malformed()), "right_status": right, "wrong_status": wrong, "deaf": deaf,
            "hung_up_mid_request": hung, "answers_after": answered}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer clients and edits (CI)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "faults.json")
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fim_server.cli", "serve", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("diffill serve did not come up") from None
                time.sleep(0.1)

        def rss() -> float:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
            return 0.0

        t0 = time.time()
        res = asyncio.run(campaign(f"ws://127.0.0.1:{port}", a.quick, rss))
        res["http"] = asyncio.run(http_campaign(port))
        res["server_alive"] = proc.poll() is None
        res["wall_s"] = round(time.time() - t0, 1)
        res["quick"] = a.quick
    finally:
        proc.terminate()
        proc.wait(10)
    write_results(res, a.out, "faults.py")


if __name__ == "__main__":
    main()
