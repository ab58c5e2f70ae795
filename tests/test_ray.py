"""`diffill serve --ray` (fim_server/ray_app.py) on a local Ray started here: 2 CPU replicas of the shipped model.
The single-process server's own protocol tests pass against it unchanged; a typed document stays on one replica
and hits its context cache; a replica killed during a request gives that request an error and the next one is
served. Marked `ray` (about a minute): `pytest -m "not ray"` leaves them out; CI runs them."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is in the test extra: pip install -e '.[test]'")

import test_server  # noqa: E402  (the same protocol tests, run against the Ray app)
from websockets.asyncio.client import connect  # noqa: E402

from fim_server.shared.errors import EngineError  # noqa: E402
from fim_server.shared.protocol import EditRegion, EditRequest, InfillRequest  # noqa: E402

pytestmark = pytest.mark.ray

DOC = (
    "import math\n\n\nclass Vector:\n    \"\"\"A 2-d vector.\"\"\"\n\n    def __init__(self, x, y):\n"
    "        self.x = x\n        self.y = y\n\n    def length(self):\n        return math.hypot(self.x, self.y)\n\n"
    "    def scaled(self, k):\n        return Vector(self.x * k, self.y * k)\n\n    def dot(self, other):\n"
    "        return self.x * other.x + self.y * other.y\n\n    def add(self, other):\n        return "
)


@pytest.fixture(scope="module")
def ray_engine(shipped_model_dir):
    from fim_server import ray_app

    engine = ray_app.start(shipped_model_dir, "cpu", replicas=2, num_cpus=1)
    yield engine
    ray_app.shutdown()


@pytest.fixture
async def server(ray_engine):
    from fim_server.server import ServerConfig, start_server

    srv = await start_server(ray_engine, ServerConfig(port=0, max_in_flight=4))
    yield srv, srv.sockets[0].getsockname()[1]
    srv.close()
    await srv.wait_closed()


@pytest.mark.parametrize("check", [test_server.test_infill_result,
                                   test_server.test_streaming_updates_come_before_the_result,
                                   test_server.test_bad_messages_get_errors_and_the_connection_carries_on,
                                   test_server.test_healthz_names_model_and_device])
async def test_the_single_process_protocol_tests_pass(server, check):
    await check(server)


async def test_http_apis_and_edits_are_served(server, ray_engine):
    _, port = server

    def post(path, body):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())

    status, out = await asyncio.to_thread(post, "/v1/completions", {"prompt": DOC, "suffix": "\n", "max_tokens": 16})
    assert status == 200 and out["object"] == "text_completion" and isinstance(out["choices"][0]["text"], str)
    status, out = await asyncio.to_thread(post, "/infill", {"input_prefix": DOC, "input_suffix": "\n"})
    assert status == 200 and isinstance(out["content"], str)
    async with connect(f"ws://127.0.0.1:{port}") as ws:
        await ws.send(json.dumps({"type": "edit", "id": "e", "text": DOC + "\n", "language": "python",
                                  "regions": [{"start": len(DOC), "end": len(DOC), "max_tokens": 16}]}))
        msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
    assert msg["type"] == "edit_result" and msg["id"] == "e" and len(msg["regions"]) == 1


async def test_a_typed_document_stays_on_one_replica_and_its_cache(ray_engine):
    """A typing replay: each keystroke's request goes to the replica that served the document before and
    reuses its cached context (the issue asks >= 90% of requests)."""
    typed = "self.x + other.x"
    served, cached = [], []
    for i in range(1, len(typed) + 1):
        req = InfillRequest(id=f"t{i}", prefix=DOC + typed[:i], suffix="\n", language="python", max_tokens=16)
        res = await ray_engine.infill(req)
        served.append(ray_engine.stats["served_by"][req.id])
        cached.append(res.cached_tokens)
    later = len(served) - 1
    assert sum(s == served[0] for s in served[1:]) >= 0.9 * later, served
    assert sum(c > 0 for c in cached[1:]) >= 0.9 * later, cached


async def test_a_prefetch_goes_to_the_replica_its_request_will_and_is_prefilled_there(ray_engine):
    req = InfillRequest(id="pf", prefix=DOC.replace("Vector", "Point"), suffix="\n", language="python",
                        max_tokens=16)  # a document neither replica has seen
    ray_engine.prefetch(req)
    await asyncio.sleep(2)  # the replica takes the hint and prefills while idle (tens of ms)
    res = await ray_engine.infill(req)
    assert res.cached_tokens == res.context_tokens - 1


async def test_a_replica_killed_mid_request_gives_an_error_and_the_next_request_is_served(ray_engine):
    from ray import serve

    holes = [EditRegion(start=i, end=i, max_tokens=64) for i in range(len(DOC) - 64 * 20, len(DOC), 20)]
    edit = EditRequest(id="long", text=DOC, regions=tuple(holes), language="python")
    job = ray_engine.submit_edit(edit)
    t0 = time.monotonic()
    while "long" not in ray_engine.stats["served_by"]:
        assert time.monotonic() - t0 < 30, "the edit never reached a replica"
        await asyncio.sleep(0.01)
    victim = ray_engine.stats["served_by"]["long"]
    ray.kill(ray.get_actor(f"SERVE_REPLICA::diffill#DiffillReplica#{victim}", namespace="serve"), no_restart=True)
    with pytest.raises(EngineError, match="replica failed"):
        await asyncio.wait_for(job.result(), 60)
    res = await ray_engine.infill(InfillRequest(id="after", prefix=DOC, suffix="\n", language="python"))
    assert isinstance(res.text, str) and ray_engine.stats["served_by"]["after"] != victim
    t0 = time.monotonic()  # Serve replaces the dead replica: the app is back to 2 running replicas
    while True:
        status = serve.status().applications["diffill"].deployments["DiffillReplica"]
        if status.replica_states.get("RUNNING", 0) == 2:
            break
        assert time.monotonic() - t0 < 90, status
        await asyncio.sleep(0.5)
