"""The inference engine: one worker thread that owns the model, the context cache and the scheduler, and the
lifecycle of every request it is given.

Contract:
- `Engine.load(path, device)` loads a model directory (config.json, model.safetensors, tokenizer.json): Diffill's
  own, or a published diffusion model (fim_server/families.py, decoded by fim_server/bidir.py).
- `engine.submit(req, on_update)` / `engine.submit_edit(req)` must be called inside a running event loop;
  they return a `Job` at once. `await job.result()` gives an `InfillResult` / `EditResult` or raises
  `Cancelled`; `on_update(text)` runs on that event loop with each new streaming draft.
- A job ends exactly once, in one place (`_retire`): with its result, an error, or `Cancelled`. It is
  cancelled by `job.cancel()`, by cancelling whatever awaits its result (the future's done-callback marks
  it), when its event loop has closed, or when the engine closes; a cancelled job takes part in no further
  forward pass. A failure is the failing job's own: the others in its batch go on.
- `await engine.aclose()` never blocks the event loop; `engine.close()` is the blocking form for sync code.
- One worker thread runs every forward pass, so event loops never block on the model. Each iteration it
  admits waiting middles (prefill) while fewer than `max_active` are admitted, then makes ONE batched
  denoising pass over up to `max_batch` of them: concurrent requests share forward passes. Admission and
  batches take owners (connections) in turn (fim_server/scheduler.py), so one client's heavy edits neither
  starve another's ghost text nor grow the engine's memory past `max_active` contexts.
- Edits: several regions of one document regenerated jointly. Each region is a middle whose context is the
  document around it; an edit's middles are admitted together and share every batched pass, so k regions
  cost about as many passes as the slowest one, not the sum. A region that had text is never trimmed: if
  nothing valid comes, its original stays. When the last region finishes, the worker re-parses the whole
  document and reverts regions until it has no more syntax errors than it had (off the event loop).

How one middle is denoised (context, cache, sampler steps, repair) is fim_server/decoder.py; this module
only schedules. The engine knows nothing of the wire protocol beyond its dataclasses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from fim_server.decoder import DecodeConfig, Decoder, Middle
from fim_server.model import FIMDiffusionModel
from fim_server.scheduler import FairScheduler
from fim_server.shared import syntax
from fim_server.shared.errors import Cancelled, DiffillError, EngineError, RequestError
from fim_server.shared.protocol import EditRequest, EditResult, InfillRequest, InfillResult, RegionResult
from fim_server.tokenizer import Tokenizer

log = logging.getLogger("diffill.engine")

__all__ = ["Cancelled", "Engine", "EngineConfig", "EngineError", "Job", "RequestError"]


@dataclass(frozen=True)
class EngineConfig(DecodeConfig):
    """How middles are decoded (DecodeConfig: threshold, slots, repair...) plus how the engine schedules."""

    cache_entries: int = 8  # cached contexts (~6 MB each for the default model at 512 tokens)
    max_batch: int = 16  # middles denoised together in one pass
    # middles admitted (prefilled, holding their context's keys/values) at once: bounds the engine's memory
    # at about max_active x 12 MB (a full 1000-token window of the default model); the rest wait their turn
    max_active: int = 32
    # prefill time one worker iteration may spend admitting while admitted middles wait for their next pass
    admit_budget_s: float = 0.05
    # `candidates: k`: the first candidate is decoded as asked, the others sampled at this temperature (at
    # least), so they differ; bench/RESULTS.md has what k buys
    candidate_temperature: float = 0.7
    threads: int | None = None  # torch CPU threads (None: all cores)
    # int8 dynamic quantisation of the Linear layers on CPU: ~1.5x faster passes on 2 cores, but off by
    # default because activation scales are computed per forward pass, so a context prefilled whole and one
    # extended from the cache (or batched with other requests) give slightly different logits: results stop
    # being deterministic and the cache stops being exact (seen: 'y = x' then 'x = x' for one request).
    int8: bool = False


@dataclass(eq=False)
class _Request:
    """What one caller awaits: an infill (one middle) or an edit (one middle per region)."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    middles: list[Middle]
    t0: float
    on_update: Callable[[str], None] | None = None
    edit: EditRequest | None = None
    owner: object = None  # whom the scheduler is fair between (a connection); None: the request itself
    candidates: bool = False  # an infill's middles are candidates for one answer (`candidates: k`)
    results: list[InfillResult | None] = field(default_factory=list)
    passes: int = 0  # batched passes any of its middles took part in (scoring passes included)
    cancelled: bool = False  # set from any thread; read by the worker before each pass
    done: bool = False  # worker only: set once, by _retire


@dataclass(eq=False)
class _Part:
    """One middle of a request, as the scheduler holds it."""

    request: _Request
    index: int
    middle: Middle

    @property
    def pending(self) -> bool:
        """Still to denoise: neither its request has ended nor this middle has its result."""
        return not self.request.done and self.request.results[self.index] is None


class Job:
    """A submitted request. Cancelling the task that awaits `result()` cancels the job in the engine."""

    def __init__(self, request: _Request, rid: str):
        self._request = request
        self.id = rid

    def cancel(self) -> None:
        self._request.cancelled = True

    async def result(self) -> InfillResult | EditResult:
        return await self._request.future


_CLOSE = None  # queue sentinel
JOINT_ADMISSION = 8  # middles an idle engine admits together regardless of the admission budget
# context tokens the idle worker prefills at a time ahead of requests (Decoder.prefill_ahead): ~10 ms of the
# default model on 2 cores, the longest a request arriving meanwhile waits for it
PREFILL_CHUNK = 64
# seconds idle before the worker gives freed heap back to the OS (_release_memory): after a trim, the next
# request's activations fault their pages in again, ~2.4 ms of a cold single-line request here (measured
# in one process, alternating, 120 each); pauses between keystrokes are shorter than this, a break is not
TRIM_AFTER_S = 2.0


class Engine:
    RequestError = RequestError

    def __init__(self, model: FIMDiffusionModel, tokenizer: Tokenizer, *, name: str = "model",
                 device: str = "cpu", config: EngineConfig = EngineConfig(), decoder: Decoder | None = None):
        self.model, self.tok, self.model_name, self.device, self.config = model, tokenizer, name, device, config
        self.decoder = decoder or Decoder(model, tokenizer, device=device, config=config,
                                          cache_entries=config.cache_entries)
        self.stats = self.decoder.stats  # prefill_tokens, reused_tokens, denoise_passes
        # jobs, prefetch hints (an InfillRequest: Decoder.warm) and _CLOSE, for the worker
        self._queue: queue.SimpleQueue[_Request | InfillRequest | None] = queue.SimpleQueue()
        self._lock = threading.Lock()  # closed-check + enqueue are one step, so nothing lands after _CLOSE
        self._thread: threading.Thread | None = None
        self._closed = False
        self.idle = threading.Event()  # set while the worker has no job and nothing to prefill ahead (tests wait on it)
        self.idle.set()

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", config: EngineConfig = EngineConfig()) -> Engine:
        from fim_server import families

        path = Path(path)
        if families.detect(path) is not None:  # a published diffusion model (Dream, LLaDA...): fim_server.bidir
            from fim_server import bidir

            model, tok, decoder = bidir.load(path, device=device, config=config)
            return cls(model, tok, name=path.resolve().name, device=device, config=config, decoder=decoder)
        model = FIMDiffusionModel.load(path, device=device)
        if config.int8 and device == "cpu":
            model = quantize_int8(model)
        tok = Tokenizer.from_file(path / "tokenizer.json")
        if tok.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"{path}: tokenizer has {tok.vocab_size} ids, model only {model.cfg.vocab_size}")
        return cls(model, tok, name=path.resolve().name, device=device, config=config)

    def clear_cache(self) -> None:
        """Forget every cached context (benchmarks measuring cold requests). Waits until the engine is idle
        (no job, nothing to prefill ahead): call it from sync code with nothing else submitting."""
        self.idle.wait(30)
        self.decoder.clear_cache()

    def build_context(self, prefix: str, suffix: str, max_tokens: int, heal: str = "off", extra=()):
        """See fim_server.context.build_context, with this engine's tokenizer, window and suffix share."""
        return self.decoder.build_context(prefix, suffix, max_tokens, heal, extra)

    # ---- public API (event-loop side) ---------------------------------------------------------------
    def submit(self, req: InfillRequest, on_update: Callable[[str], None] | None = None, *,
               owner: object = None) -> Job:
        """`owner`: whom to be fair between (the server passes its connection); None: this request alone.
        With `req.candidates` > 1, that many middles are denoised together and the best answers (see
        `best_candidate`); streaming updates are then not sent."""
        if req.candidates <= 1:
            return self._submit([Middle(req=req)], req.id, on_update=on_update if req.stream else None,
                                owner=owner)
        sampled = max(req.temperature, self.config.candidate_temperature)
        middles = [Middle(req=req if i == 0 else replace(req, id=f"{req.id}#{i}", temperature=sampled))
                   for i in range(req.candidates)]
        return self._submit(middles, req.id, owner=owner, candidates=True)

    def submit_edit(self, req: EditRequest, *, owner: object = None) -> Job:
        """Regenerate `req.regions` of `req.text` jointly (see the module docstring). Raises RequestError at
        once for a region that cannot be served (too long to revise)."""
        middles = [self.decoder.region(req, i) for i in range(len(req.regions))]
        return self._submit(middles, req.id, edit=req, owner=owner)

    def prefetch(self, req: InfillRequest) -> None:
        """A hint that `req` (or one much like it) is about to come: its context is prefilled while the engine
        is idle (Decoder.warm). Nothing is answered; a closed engine ignores it. Any thread."""
        with self._lock:
            if not self._closed:
                self._enqueue(req)

    async def infill(self, req: InfillRequest) -> InfillResult:
        return await self.submit(req).result()

    async def edit(self, req: EditRequest) -> EditResult:
        return await self.submit_edit(req).result()

    def _submit(self, middles: list[Middle], rid: str, *, on_update=None, edit: EditRequest | None = None,
                owner: object = None, candidates: bool = False) -> Job:
        loop = asyncio.get_running_loop()
        request = _Request(loop=loop, future=loop.create_future(), middles=middles, t0=time.perf_counter(),
                           on_update=on_update, edit=edit, results=[None] * len(middles), owner=owner,
                           candidates=candidates)
        # the caller gave up (its task was cancelled, or wait_for timed out): no pass is spent on it any more
        request.future.add_done_callback(lambda f: f.cancelled() and setattr(request, "cancelled", True))
        with self._lock:
            if self._closed:
                raise EngineError("the engine is closed", code="closed", id=rid)
            self._enqueue(request)
        return Job(request, rid)

    def _enqueue(self, item: _Request | InfillRequest) -> None:
        """Hand `item` to the worker, starting it the first time. With self._lock held."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="diffill-engine", daemon=True)
            self._thread.start()
        self.idle.clear()
        self._queue.put(item)

    def _shutdown(self) -> threading.Thread | None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_CLOSE)
            return self._thread

    def close(self, timeout: float = 5.0) -> None:
        """Cancel every job and stop the worker; blocks up to `timeout` s for it. Not from an event loop."""
        thread = self._shutdown()
        if thread is not None:
            thread.join(timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """`close` for event-loop code: the wait for the worker happens in a thread."""
        thread = self._shutdown()
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout)

    # ---- worker ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        # All model compute happens on this thread, with its own OpenMP pool sized here (the setting is per
        # calling thread; MKL_NUM_THREADS=1 from fim_server/__init__ would otherwise leave it at 1). Measured
        # on 2 cores: a denoising pass 2.9 ms with two threads here, 5.3 ms with one, and 8 ms with two if
        # another thread's pool is also live, which is why the main thread must not run model compute.
        torch.set_num_threads(self.config.threads or os.cpu_count() or 1)
        with torch.inference_mode():  # every tensor the worker makes is an inference tensor
            self._loop()

    def _loop(self) -> None:
        sched: FairScheduler[_Part] = FairScheduler(self.config.max_batch, self.config.max_active)
        failures = 0  # errors in a row that no job was tied to
        while True:
            closing = False
            try:
                incoming = []
                if sched.empty() and not self.decoder.work_ahead:
                    self.idle.set()
                    try:
                        incoming.append(self._queue.get(timeout=TRIM_AFTER_S))
                    except queue.Empty:
                        _release_memory()
                        incoming.append(self._queue.get())
                    failures = 0
                while True:
                    try:
                        incoming.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                closing = _CLOSE in incoming
                jobs = [r for r in incoming if isinstance(r, _Request)]
                hints = [r for r in incoming if isinstance(r, InfillRequest)]
                if hints and not jobs:  # a request already here prefills its own context: hints wait for none
                    self._warm(hints[-1])  # the newest hint supersedes the older ones
                for r in jobs:
                    sched.add(_owner(r), [_Part(r, i, m) for i, m in enumerate(r.middles)])
                if sched.empty() and not closing:
                    if self.decoder.work_ahead:  # idle: a chunk of a context queued ahead (Decoder.warm)
                        self.decoder.prefill_ahead(PREFILL_CHUNK)
                    continue
                if closing:
                    for p in sched.parts():
                        self._retire(p.request, exc=Cancelled("the engine closed", id=_rid(p.request)))
                    self.idle.set()
                    return
                sched.prune(lambda p: p.pending and self._alive(p.request))
                self._admit_some(sched)
                if sched.n_active:
                    self._advance(sched.batch())
                sched.prune(lambda p: p.pending)
            except Exception as e:  # a bug here must not spin: everything in flight ends with the error
                log.exception("engine worker error")
                parts = sched.parts()
                for p in parts:
                    self._retire(p.request, exc=EngineError(f"engine error: {type(e).__name__}: {e}"))
                sched = FairScheduler(self.config.max_batch, self.config.max_active)
                if closing:
                    self.idle.set()
                    return
                if not parts:
                    # tied to no job (the idle work: prefilling ahead): drop that work, so the loop does not
                    # meet the same error again at once, and pause a little in case it does anyway
                    self._forget_ahead()
                    failures += 1
                    time.sleep(min(0.5, 0.001 * 2 ** failures))
                continue
            failures = 0

    def _forget_ahead(self) -> None:
        try:
            self.decoder.clear_cache()
        except Exception:
            log.exception("clearing the context cache failed")

    def _warm(self, req: InfillRequest) -> None:
        try:
            self.decoder.warm(req)
        except Exception:  # a hint: its failure is logged and costs nobody anything
            log.exception("prefetching %s failed", req.id)

    def _admit_some(self, sched: FairScheduler[_Part]) -> None:
        """Prefill waiting middles, owners in turn, while there is room. When middles already admitted are
        waiting for their next pass, admitting stops once `admit_budget_s` is spent (mid-request if need be:
        the rest waits for the next iteration), so a heavy edit's prefills delay others' passes by at most
        about that much. An engine with nothing admitted takes up to JOINT_ADMISSION middles of a request at
        once whatever the time (a small edit's regions then share every pass)."""
        t0, admitted = time.perf_counter(), 0
        others_waiting = sched.n_active > 0
        for group in sched.admissions():
            for k, p in enumerate(group):
                if (others_waiting or admitted >= JOINT_ADMISSION) and \
                        time.perf_counter() - t0 > self.config.admit_budget_s:
                    sched.put_back(_owner(p.request), group[k:])
                    return
                admitted += 1
                if not (p.pending and self._alive(p.request)):
                    continue
                m = p.middle
                try:
                    p.request.passes += self.decoder.admit(m)
                    if m.revise_threshold is not None and self.decoder.finished(m):
                        self._part_done(p.request, p.index, m)  # the model found nothing to change there
                    else:
                        sched.activate(_owner(p.request), p)
                except Exception as e:  # a bad request must not take the worker down
                    log.exception("admitting %s failed", m.req.id)
                    self._retire(p.request, exc=_as_error(e, m.req.id))
            others_waiting = sched.n_active > 0

    def _alive(self, request: _Request) -> bool:
        """False for a request that has ended or must end now (cancelled, or its event loop is gone)."""
        if request.done:
            return False
        if request.cancelled or request.loop.is_closed():
            self._retire(request, exc=Cancelled(f"request {_rid(request)} was cancelled", id=_rid(request)))
            return False
        return True

    def _advance(self, batch: list[_Part]) -> None:
        """One batched pass over `batch`, then one sampler step for each; a failure is its own part's."""
        middles = [p.middle for p in batch]
        # a middle just admitted brings its first pass (made with its prefill, counted there)
        ran = {id(p.request): p.request for p in batch if p.middle.first_logits is None}
        try:
            logits = self.decoder.forward(middles)
        except Exception:
            if len(batch) == 1:
                raise
            log.exception("batched pass failed; running its %d middles one by one", len(batch))
            for p in batch:
                self._advance([p])
            return
        for request in ran.values():
            request.passes += 1
        for p, part_logits in zip(batch, logits):
            if not p.pending:
                continue  # another middle of the same edit failed in this step
            try:
                draft = self.decoder.commit(p.middle, part_logits)
                if draft is not None and p.request.on_update is not None:
                    self._deliver(p.request, p.request.on_update, draft)
                if self.decoder.finished(p.middle):
                    self._part_done(p.request, p.index, p.middle)
            except Exception as e:
                log.exception("denoising %s failed", p.middle.req.id)
                self._retire(p.request, exc=_as_error(e, p.middle.req.id))

    def _part_done(self, request: _Request, index: int, m: Middle) -> None:
        request.results[index] = self.decoder.result(m, request.t0)
        self.decoder.release(m)
        if any(r is None for r in request.results):
            return
        if request.edit is not None:
            result = compose_edit(request.edit, request.middles, request.results, request.passes, request.t0,
                                  names=self.config.revise_names)
        elif request.candidates:
            best = best_candidate(request.middles, request.results)
            result = replace(request.results[best], id=request.middles[0].req.id, forward_passes=request.passes)
        else:
            result = request.results[0]
        self._retire(request, result=result)

    # ---- the one place a job ends ------------------------------------------------------------------------
    def _retire(self, request: _Request, *, result: object = None, exc: BaseException | None = None) -> None:
        if request.done:
            return
        request.done = True
        for m in request.middles:
            self.decoder.release(m)
        if exc is not None:
            self._deliver(request, request.future.set_exception, exc)
        else:
            self._deliver(request, request.future.set_result, result)

    def _deliver(self, request: _Request, fn, *args) -> None:
        def go():
            if not request.future.done():
                fn(*args)

        try:
            request.loop.call_soon_threadsafe(go)
        except RuntimeError:  # the caller's event loop has closed: nobody is waiting any more
            if not request.done:
                self._retire(request, exc=Cancelled("event loop closed", id=_rid(request)))


def best_candidate(middles: list[Middle], outs: list[InfillResult]) -> int:
    """Index of the candidate to answer: one that parses (or has no grammar), then one with text, then the
    highest mean log-likelihood the model gave its tokens as it committed them; ties go to the first."""
    return max(range(len(outs)), key=lambda i: (outs[i].valid is not False, bool(outs[i].text.strip()),
                                                  middles[i].mean_logprob, -i))


def compose_edit(req: EditRequest, middles: list[Middle], outs: list[InfillResult], passes: int,
                 t0: float, names: bool = True) -> EditResult:
    """An edit's answer from its regions' results: a region whose candidate is invalid, or that would only
    delete text the user had written, keeps its original; so does a rewritten ("revise") region that would
    introduce a name used nowhere else in the file or drop one the file still uses (`names`,
    syntax.rewrite_breaks_names); then regions are reverted until the document has no more syntax errors
    than it had."""
    texts, repairs = [], [out.repair for out in outs]
    for i, (r, m, out) in enumerate(zip(req.regions, middles, outs)):
        empty = not out.text.strip() and m.original.strip()
        text = m.original if out.valid is False or empty else out.text
        if names and m.revise_threshold is not None and text != m.original:
            why = syntax.rewrite_breaks_names(req.language, req.text, r.start, r.end, text)
            if why:  # a rewrite must not rename things or leave a use dangling
                log.info("edit %s: region %d..%d kept: the rewrite %s", req.id, r.start, r.end, why)
                text, repairs[i] = m.original, "names"
        texts.append(text)
    spans = [(r.start, r.end) for r in req.regions]
    keep, before, after = syntax.revert_until_no_worse(req.language, req.text, spans, texts)
    regions = []
    for r, m, out, text, kept, repair in zip(req.regions, middles, outs, texts, keep, repairs):
        text = text if kept else m.original
        regions.append(RegionResult(start=r.start, end=r.end, text=text, changed=text != m.original,
                                    valid=out.valid, tokens=out.tokens, repair=repair if kept else "revert",
                                    remasked=m.remasked))
    return EditResult(id=req.id, regions=tuple(regions), errors_before=before, errors_after=after,
                      forward_passes=passes, ms=round((time.perf_counter() - t0) * 1000, 2),
                      context_truncated=any(o.context_truncated for o in outs))


def _release_memory() -> None:
    """Give freed heap back to the OS once the worker has been idle for TRIM_AFTER_S (glibc keeps it
    otherwise: after a burst of large edits the process stayed ~1 GB above its baseline). Linux/glibc only;
    elsewhere nothing."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _owner(request: _Request) -> object:
    return request if request.owner is None else request.owner


def _rid(request: _Request) -> str:
    return request.edit.id if request.edit is not None else request.middles[0].req.id


def _as_error(e: Exception, rid: str) -> Exception:
    """Errors as the caller sees them: Diffill's own pass through, anything else is an EngineError."""
    if isinstance(e, DiffillError):
        return e
    return EngineError(f"engine error: {type(e).__name__}: {e}", id=rid)


def quantize_int8(model: FIMDiffusionModel) -> FIMDiffusionModel:
    """int8 weights, fp32 activations for every nn.Linear (the embedding / unembedding stays fp32)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager API warns that it is moving to torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
