"""`diffill serve --ray`: the engine as a Ray Serve deployment of N replicas, behind the same front end.

Shape:
- `DiffillReplica` (a Serve deployment) holds one Diffill engine (CPU threads or one GPU each). Its `infill`
  streams `("replica", id)`, then `("update", text)` drafts, then `("result", InfillResult)`, or
  `("error", code, message)`; `edit` the same with an EditResult. Cancelling the call (the caller went away,
  or sent `cancel`) cancels the job in that replica's engine between passes.
- `RayEngine` is what the single-process server's front end (fim_server/server.py, fim_server/web.py) talks
  to instead of an Engine: the same `submit` / `submit_edit` / `Job` contract. So the websocket protocol and
  the HTTP APIs, with their token, Origin rule, size caps, /healthz and errors, are served by the very same
  code; clients (the language server included) cannot tell the difference.
- `CacheAffinityRouter` is a Ray Serve request router (the `RequestRouter` extension point, Ray >= 2.45):
  requests of one document (keyed by the first characters of the prefix window, up to AFFINITY_CHARS, which
  the language server keeps put while a person types: lsp/completer.py `window_start`) go to the replica that
  served it last, where the exact context cache holds its keys/values; a new document goes to the replica
  holding the fewest documents, so each replica's cache holds its share; when the chosen replica's queue is
  full, or it is gone, Ray's own least-loaded choice among the others takes over. No second scheduler.

A replica that dies mid-request gives that request an error (never silence); Serve restarts it and the next
request goes to a live one. Ray and its serve extra are imported only here (`pip install 'diffill[ray]'`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import Counter, OrderedDict
from dataclasses import asdict
from pathlib import Path

from ray import serve
from ray.serve.request_router import PendingRequest, ReplicaID, ReplicaResult, RequestRouter, RunningReplica

from fim_server.shared.errors import Cancelled, DiffillError, EngineError
from fim_server.shared.protocol import EditRequest, InfillRequest

log = logging.getLogger("diffill.ray")

APP = "diffill"
AFFINITY_CHARS = 512  # of the prefix window: stable while typing at its end
MAX_KEYS = 100_000  # documents the router remembers (LRU)


def affinity_key(req) -> str | None:
    """The document a request belongs to, as far as caching goes: its context's first characters, as many as
    the largest power of two within half the prefix (at most AFFINITY_CHARS), so that typing at the end of
    a short document changes the key only when its length doubles."""
    text = req.text if isinstance(req, EditRequest) else getattr(req, "prefix", None)
    if not isinstance(text, str) or not text:
        return None
    n = min(AFFINITY_CHARS, 1 << max(0, (len(text) // 2).bit_length() - 1))
    return hashlib.blake2b(text[:n].encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


class CacheAffinityRouter(RequestRouter):
    """Replica choice: the one that served the document last first, then everyone else least-loaded first."""

    def initialize_state(self, **kwargs) -> None:
        self._owner: OrderedDict[str, ReplicaID] = OrderedDict()
        self._owned: Counter[ReplicaID] = Counter()  # documents each replica holds (of the remembered ones)

    def _key(self, pending: PendingRequest | None) -> str | None:
        if pending is None or not pending.args:
            return None
        return affinity_key(pending.args[0])

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        key = self._key(pending_request)
        owner = self._owner.get(key) if key is not None else None
        first = [r for r in candidate_replicas if r.replica_id == owner]
        if first:
            return [first, [r for r in candidate_replicas if r.replica_id != owner]]
        # a new document (or its replica is gone): the replica holding the fewest documents, so that each
        # replica's context cache holds its share; the others, least loaded first, if that one is full
        fewest = min(candidate_replicas, key=lambda r: self._owned[r.replica_id], default=None)
        if fewest is None:
            return []
        if key is not None:  # counted at once: new documents arriving together spread over the replicas
            self._assign(key, fewest.replica_id)
        return [[fewest], [r for r in candidate_replicas if r is not fewest]]

    def _assign(self, key: str, replica_id: ReplicaID) -> None:
        before = self._owner.get(key)
        if before != replica_id:
            if before is not None:
                self._owned[before] -= 1
            self._owned[replica_id] += 1
        self._owner[key] = replica_id
        self._owner.move_to_end(key)
        while len(self._owner) > MAX_KEYS:
            _, gone = self._owner.popitem(last=False)
            self._owned[gone] -= 1

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID,
                          result: ReplicaResult) -> None:
        key = self._key(pending_request)
        if key is None:
            return
        self._assign(key, replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._owned.pop(replica_id, None)  # its documents go to whoever serves them next


@serve.deployment(name="DiffillReplica")
class DiffillReplica:
    def __init__(self, model: str, device: str, config: dict):
        from fim_server.engine import Engine, EngineConfig

        self.engine = Engine.load(Path(model), device=device, config=EngineConfig(**config))
        self.id = serve.get_replica_context().replica_tag

    async def infill(self, req: InfillRequest):
        """An async generator: ("replica", id), then ("update", draft)*, then the result or an error."""
        yield ("replica", self.id)
        updates: asyncio.Queue = asyncio.Queue()
        job = self.engine.submit(req, on_update=updates.put_nowait if req.stream else None)
        async for item in self._follow(job, updates):
            yield item

    def prefetch(self, req: InfillRequest) -> None:
        self.engine.prefetch(req)

    async def edit(self, req: EditRequest):
        yield ("replica", self.id)
        async for item in self._follow(self.engine.submit_edit(req), None):
            yield item

    async def _follow(self, job, updates: asyncio.Queue | None):
        result = asyncio.ensure_future(job.result())
        try:
            while True:
                if updates is not None:
                    get = asyncio.ensure_future(updates.get())
                    await asyncio.wait([result, get], return_when=asyncio.FIRST_COMPLETED)
                    if get.done():
                        yield ("update", get.result())
                        continue
                    get.cancel()
                    while not updates.empty():
                        yield ("update", updates.get_nowait())
                try:
                    yield ("result", await result)
                except DiffillError as e:
                    yield ("error", e.code, str(e))
                return
        finally:  # the caller went away (Serve cancels this generator): stop the work in the engine
            if not result.done():
                job.cancel()
                result.cancel()

    def describe(self) -> dict:
        return {"model": self.engine.model_name, "device": self.engine.device}


class RayJob:
    def __init__(self, task: asyncio.Task, rid: str):
        self._task, self.id, self._cancelled = task, rid, False

    def cancel(self) -> None:
        self._cancelled = True
        self._task.cancel()

    async def result(self):
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._cancelled:
                raise Cancelled(f"request {self.id} was cancelled", id=self.id) from None
            raise


class RayEngine:
    """The Engine contract the front end uses, served by a Serve deployment's replicas."""

    def __init__(self, handle, model_name: str, device: str):
        self.handle, self.model_name, self.device = handle, model_name, device
        self.stats: dict = {"served_by": {}}  # request id -> replica (the last MAX_KEYS)

    def submit(self, req: InfillRequest, on_update=None, *, owner: object = None) -> RayJob:
        return RayJob(asyncio.get_running_loop().create_task(self._call("infill", req, on_update)), req.id)

    def submit_edit(self, req: EditRequest, *, owner: object = None) -> RayJob:
        return RayJob(asyncio.get_running_loop().create_task(self._call("edit", req, None)), req.id)

    async def infill(self, req: InfillRequest):
        return await self.submit(req).result()

    async def edit(self, req: EditRequest):
        return await self.submit_edit(req).result()

    def prefetch(self, req: InfillRequest) -> None:
        """To the replica the request itself will go to (the router keys both on the document)."""
        self.handle.prefetch.remote(req)

    async def _call(self, method: str, req, on_update):
        gen = getattr(self.handle.options(stream=True), method).remote(req)
        try:
            async for item in gen:
                kind = item[0]
                if kind == "replica":
                    served = self.stats["served_by"]
                    served[req.id] = item[1]
                    while len(served) > MAX_KEYS:
                        served.pop(next(iter(served)))
                elif kind == "update":
                    if on_update is not None:
                        on_update(item[1])
                elif kind == "result":
                    return item[1]
                elif kind == "error":
                    raise DiffillError(item[2], code=item[1], id=req.id)
            raise EngineError("the replica ended the request without an answer", id=req.id)
        except asyncio.CancelledError:
            gen.cancel()
            raise
        except DiffillError:
            raise
        except Exception as e:  # the replica died, or Ray could not reach it: an error, never silence
            raise EngineError(f"replica failed: {type(e).__name__}: {str(e)[:300]}", id=req.id) from None

    async def aclose(self, timeout: float = 5.0) -> None:
        pass  # the deployment is Ray's; `shutdown` removes it

    def close(self, timeout: float = 5.0) -> None:
        pass


def start(model: Path, device: str = "cpu", *, replicas: int = 2, autoscale: tuple[int, int] | None = None,
          address: str | None = None, config: dict | None = None, affinity: bool = True,
          num_cpus: float | None = None) -> RayEngine:
    """Connect to Ray (`address`; None: start a local one), deploy the replicas and return their engine."""
    import os

    import ray
    from ray.serve.config import RequestRouterConfig

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    serve.start(proxy_location="Disabled")  # the front end is Diffill's own (same protocol, same checks)
    gpu = str(device).startswith("cuda")
    n_min, n_max = autoscale or (replicas, replicas)
    cpus = num_cpus if num_cpus is not None else (0.5 if gpu else max(1.0, (os.cpu_count() or 1) / max(1, n_max)))
    config = dict(config or {})
    if not gpu:
        config.setdefault("threads", max(1, int(cpus)))
    options: dict = {"ray_actor_options": {"num_cpus": cpus, "num_gpus": 1 if gpu else 0},
                     "max_ongoing_requests": 64, "health_check_period_s": 2, "health_check_timeout_s": 10}
    if autoscale:
        options["autoscaling_config"] = {"min_replicas": n_min, "max_replicas": n_max,
                                         "target_ongoing_requests": 8}
    else:
        options["num_replicas"] = replicas
    if affinity:
        options["request_router_config"] = RequestRouterConfig(request_router_class=CacheAffinityRouter)
    app = DiffillReplica.options(**options).bind(str(model), device, config)
    handle = serve.run(app, name=APP, route_prefix=None)
    info = handle.describe.remote().result()
    return RayEngine(handle, info["model"], info["device"])


def shutdown() -> None:
    import ray

    serve.delete(APP)
    serve.shutdown()
    ray.shutdown()


def engine_config(cfg) -> dict:
    """An EngineConfig as the keyword arguments a replica rebuilds it from."""
    return asdict(cfg)
