"""The inference engine: owns the model, one worker thread, the context cache and the scheduler.

Contract:
- `Engine.load(path, device)` loads a model directory (config.json, model.safetensors, tokenizer.json).
- `engine.submit(req, on_update)` must be called inside a running event loop; it returns a `Job` at once.
  `await job.result()` gives an `InfillResult` or raises `Cancelled`; `on_update(text)` runs on that event
  loop with each new streaming draft. `job.cancel()` takes effect before the job's next denoising step.
- One worker thread runs every forward pass, so the event loop never blocks on the model. Each iteration
  it admits new jobs (prefill), then makes ONE batched denoising pass over the middles of all active jobs:
  concurrent requests share forward passes.
- Context cache: the causal context's keys/values are kept for the last few contexts; a new request reuses
  the longest common token prefix of any cached context and computes only the rest (a user typing).
- Syntax (fim_server.shared.syntax): a finished candidate that adds a syntax error is repaired once by re-masking
  the tokens around the error and denoising again; if still invalid it is trimmed to its longest valid run
  of whole lines; else dropped (empty text, valid False).
- Edits (`engine.submit_edit(req)` -> `EditJob`): several regions of one document regenerated jointly. Each
  region is a job whose context is the document around it (the other regions as sent); the region jobs are
  admitted together and share every batched pass, so k regions cost about as many passes as the slowest
  one, not the sum. A "revise" region starts from its own tokens: one scoring pass (tokens masked in
  strided groups, every token scored with its neighbours in view) finds the tokens the model finds
  unlikely, only those are re-masked, and the region keeps its token count. A region that had text is
  never trimmed: if nothing valid comes, its original stays. Finally the whole document is re-parsed and
  regions are reverted until it has no more syntax errors than it had.

The engine knows the tokenizer's special ids and nothing of the wire protocol beyond its dataclasses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fim_server import sampler
from fim_server.model import KV, FIMDiffusionModel, context_slot_mask
from fim_server.shared import syntax
from fim_server.shared.protocol import EditRequest, EditResult, InfillRequest, InfillResult, RegionResult
from fim_server.tokenizer import Tokenizer

log = logging.getLogger("diffill.engine")


PREFIX_CUT_STEP = 64  # tokens: the prefix window's left edge moves in steps this size while typing
MAX_REVISE_TOKENS = 384  # a "revise" region's tokens (+ its context) must fit the model's window


class Cancelled(Exception):
    """The job was cancelled before it finished."""


class RequestError(ValueError):
    """The request is well formed but cannot be served as asked (e.g. a region too long to revise)."""


@dataclass(frozen=True)
class EngineConfig:
    # Defaults picked by bench/engine_latency.py sweeps on the shipped model (README, "Measured"):
    threshold: float = 0.8  # confidence tau: lower commits more per pass (faster), higher is more careful
    eom_threshold: float = 0.6  # commit the leftmost <eom> this likely at once (cuts the padding after it)
    initial_slots: int = 8  # first block of masked slots; extended in blocks of this size, up to max_tokens
    suffix_share: float = 0.25  # part of the context budget the suffix may take when both sides are long
    cache_entries: int = 8  # cached contexts (~6 MB each for the default model at 512 tokens)
    max_batch: int = 16  # jobs denoised together in one pass
    repair: bool = True  # tree-sitter check, re-mask repair, trim, drop
    # "revise" edits re-mask the tokens whose probability (each scored with its neighbours in view) is below
    # this: below even odds, the model would more likely write something else there.
    revise_threshold: float = 0.5
    revise_groups: int = 4  # scoring pass: token j is masked in row j % groups, so each sees 3/4 of the rest
    threads: int | None = None  # torch CPU threads (None: torch's default)
    # int8 dynamic quantisation of the Linear layers on CPU: ~1.5x faster passes on 2 cores, but off by
    # default because activation scales are computed per forward pass, so a context prefilled whole and one
    # extended from the cache (or batched with other requests) give slightly different logits: results stop
    # being deterministic and the cache stops being exact (seen: 'y = x' then 'x = x' for one request).
    int8: bool = False


@dataclass
class _Group:
    """The region jobs of one edit: they are admitted together and their batched passes are counted once."""

    passes: int = 0


@dataclass
class _Slot:
    """Per-job state, touched only by the worker thread (except `cancelled`)."""

    req: InfillRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    on_update: Callable[[str], None] | None
    t0: float
    cancelled: bool = False
    ctx_ids: list[int] = field(default_factory=list)
    ctx_kv: KV | None = None
    cached_tokens: int = 0
    context_truncated: bool = False
    window_prefix: str = ""
    window_suffix: str = ""
    slots: torch.Tensor | None = None  # (M,) live middle
    ended: bool = False
    steps: int = 0
    repair: str | None = None
    repaired_once: bool = False
    verdict: syntax.Verdict | None = None  # of the current finished candidate, so it is parsed once
    last_draft: str = ""
    group: _Group | None = None  # set for the regions of an edit
    original: str = ""  # edit regions: the region's text as sent
    revise_threshold: float | None = None  # set for "revise" regions: keep the token count, re-mask unlikely
    original_ids: list[int] = field(default_factory=list)  # "revise" regions: the original's tokens
    remasked: int | None = None


class Job:
    def __init__(self, slot: _Slot):
        self._slot = slot
        self.id = slot.req.id

    def cancel(self) -> None:
        self._slot.cancelled = True

    async def result(self) -> InfillResult:
        return await self._slot.future


class EditJob:
    """An edit in flight: one region job per region, answered together as an `EditResult`."""

    def __init__(self, req: EditRequest, slots: list[_Slot], group: _Group):
        self.req, self._slots, self._group = req, slots, group
        self.id = req.id

    def cancel(self) -> None:
        for s in self._slots:
            s.cancelled = True

    async def result(self) -> EditResult:
        try:
            outs: list[InfillResult] = await asyncio.gather(*(s.future for s in self._slots))
        except BaseException:
            self.cancel()
            raise
        req = self.req
        texts = []
        for s, out in zip(self._slots, outs):
            # an answer that would only delete a region the user had written is no answer
            empty = not out.text.strip() and s.original.strip()
            texts.append(s.original if out.valid is False or empty else out.text)
        spans = [(r.start, r.end) for r in req.regions]
        keep, before, after = syntax.revert_until_no_worse(req.language, req.text, spans, texts)
        regions = []
        for r, s, out, text, kept in zip(req.regions, self._slots, outs, texts, keep):
            repair = out.repair if kept else "revert"
            text = text if kept else s.original
            regions.append(RegionResult(start=r.start, end=r.end, text=text, changed=text != s.original,
                                        valid=out.valid, tokens=out.tokens, repair=repair, remasked=s.remasked))
        return EditResult(id=req.id, regions=tuple(regions), errors_before=before, errors_after=after,
                          forward_passes=self._group.passes,
                          ms=round((time.perf_counter() - self._slots[0].t0) * 1000, 2),
                          context_truncated=any(o.context_truncated for o in outs))


class Engine:
    Cancelled = Cancelled
    RequestError = RequestError

    def __init__(self, model: FIMDiffusionModel, tokenizer: Tokenizer, *, name: str = "model",
                 device: str = "cpu", config: EngineConfig = EngineConfig()):
        self.model, self.tok, self.model_name, self.device, self.config = model, tokenizer, name, device, config
        self._queue: queue.SimpleQueue[list[_Slot] | None] = queue.SimpleQueue()
        self._cache: OrderedDict[tuple[int, ...], KV] = OrderedDict()
        self._thread: threading.Thread | None = None
        self._closed = False
        # counters for benchmarks and tests: context tokens computed vs reused from the cache, passes made
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "denoise_passes": 0}
        self._batch_kv: tuple[list[_Slot], KV] | None = None  # see _batched_context
        self._banned = torch.tensor(sorted(tokenizer.special_ids - {tokenizer.eom_id}))

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", config: EngineConfig = EngineConfig()) -> Engine:
        path = Path(path)
        if config.threads:
            torch.set_num_threads(config.threads)
        model = FIMDiffusionModel.load(path, device=device)
        if config.int8 and device == "cpu":
            model = quantize_int8(model)
        tok = Tokenizer.from_file(path / "tokenizer.json")
        if tok.vocab_size > model.cfg.vocab_size:
            raise ValueError(f"{path}: tokenizer has {tok.vocab_size} ids, model only {model.cfg.vocab_size}")
        return cls(model, tok, name=path.resolve().name, device=device, config=config)

    # ---- public API (event-loop side) ---------------------------------------------------------------
    def submit(self, req: InfillRequest, on_update: Callable[[str], None] | None = None) -> Job:
        if self._closed:
            raise RuntimeError("engine is closed")
        loop = asyncio.get_running_loop()
        slot = _Slot(req=req, loop=loop, future=loop.create_future(), on_update=on_update, t0=time.perf_counter())
        self._ensure_worker()
        self._queue.put([slot])
        return Job(slot)

    def submit_edit(self, req: EditRequest) -> EditJob:
        """Regenerate `req.regions` of `req.text` jointly (see the module docstring). Inside an event loop."""
        if self._closed:
            raise RuntimeError("engine is closed")
        loop = asyncio.get_running_loop()
        group, slots, t0 = _Group(), [], time.perf_counter()
        for i, r in enumerate(req.regions):
            original = req.text[r.start: r.end]
            revise_threshold, max_tokens, ids = None, r.max_tokens, []
            if r.mode == "revise":
                ids = self.tok.encode(original)
                n = len(ids)
                if n > MAX_REVISE_TOKENS:
                    raise RequestError(f"region {r.start}..{r.end} has {n} tokens; 'revise' takes at most "
                                       f"{MAX_REVISE_TOKENS}")
                revise_threshold = req.revise_threshold or self.config.revise_threshold
                max_tokens = n + 1  # its own tokens and the <eom> after them
            sub = InfillRequest(id=f"{req.id}#{i}", prefix=req.text[: r.start], suffix=req.text[r.end:],
                                language=req.language, max_tokens=max_tokens, steps=req.steps,
                                threshold=req.threshold, temperature=req.temperature)
            slots.append(_Slot(req=sub, loop=loop, future=loop.create_future(), on_update=None, t0=t0,
                               group=group, original=original, revise_threshold=revise_threshold,
                               original_ids=ids))
        self._ensure_worker()
        self._queue.put(slots)
        return EditJob(req, slots, group)

    async def edit(self, req: EditRequest) -> EditResult:
        return await self.submit_edit(req).result()

    async def infill(self, req: InfillRequest) -> InfillResult:
        return await self.submit(req).result()

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)

    def _ensure_worker(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="diffill-engine", daemon=True)
            self._thread.start()

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
        active: list[_Slot] = []
        while True:
            try:
                items = [self._queue.get()] if not active else []
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                incoming = [s for item in items if item is not None for s in item]
                if None in items:
                    for s in active + incoming:
                        self._fail(s, Cancelled("engine closed"))
                    return
                for s in incoming:
                    if s.cancelled:
                        self._fail(s, Cancelled(s.req.id))
                        continue
                    try:
                        self._admit(s)
                        if s.revise_threshold is not None and self._finished(s):
                            self._finish(s)  # the model found nothing to change in a revised region
                        else:
                            active.append(s)
                    except Exception as e:  # a bad request must not take the worker down
                        log.exception("admitting %s failed", s.req.id)
                        self._fail(s, e)
                still = []
                for s in active:
                    if s.cancelled:
                        self._fail(s, Cancelled(s.req.id))
                    else:
                        still.append(s)
                active = still
                if not active:
                    continue
                batch = active[: self.config.max_batch]
                try:
                    self._step(batch)
                except Exception as e:
                    log.exception("denoising step failed")
                    for s in batch:
                        self._fail(s, e)
                    active = [s for s in active if s not in batch]
                    continue
                done = [s for s in batch if self._finished(s)]
                for s in done:
                    self._finish(s)
                # fairness: jobs beyond max_batch go first next time
                rest = [s for s in active if s not in batch]
                active = rest + [s for s in batch if s not in done]
            except Exception:  # pragma: no cover - the worker itself must survive
                log.exception("engine worker error")

    def _deliver(self, s: _Slot, fn, *args) -> None:
        def go():
            if not s.future.done():
                fn(*args)
        s.loop.call_soon_threadsafe(go)

    def _fail(self, s: _Slot, exc: BaseException) -> None:
        self._deliver(s, s.future.set_exception, exc)

    # ---- admission: context tokens, cache reuse, prefill -------------------------------------------------
    def build_context(self, prefix: str, suffix: str, max_tokens: int) -> tuple[list[int], bool, str, str]:
        """See `build_context` (module level), with this engine's tokenizer, window and suffix share."""
        return build_context(self.tok, prefix, suffix, max_tokens, self.model.cfg.max_seq_len,
                             self.config.suffix_share)

    def _admit(self, s: _Slot) -> None:
        req = s.req
        s.ctx_ids, s.context_truncated, s.window_prefix, s.window_suffix = self.build_context(
            req.prefix, req.suffix, req.max_tokens)
        s.ctx_kv, s.cached_tokens = self._prefill(s.ctx_ids)
        if s.revise_threshold is not None:
            s.slots = self._revise_slots(s)
        else:
            s.slots = torch.full((min(self.config.initial_slots, req.max_tokens),), self.tok.mask_id,
                                 dtype=torch.long)

    def _revise_slots(self, s: _Slot) -> torch.Tensor:
        """The region's own tokens + a committed <eom>, with the tokens the model finds unlikely re-masked.

        One pass scores every token: row g of a (G, M) batch masks the tokens j with j % G == g, so each
        token's probability is read with the other (G-1)/G of the region in view (a strided pseudo-likelihood;
        with everything masked at once a token far from the edges would see nothing of its neighbours)."""
        tok = self.tok
        ids = torch.tensor(s.original_ids + [tok.eom_id], dtype=torch.long)  # (M,)
        n, G = ids.numel() - 1, max(1, min(self.config.revise_groups, ids.numel() - 1))
        j = torch.arange(ids.numel())
        masked = (j[None, :] % G == torch.arange(G)[:, None]) & (j[None, :] < n)  # (G, M)
        rows = torch.where(masked, tok.mask_id, ids[None, :])
        T = len(s.ctx_ids)
        pos = (T + j)[None].expand(G, -1)
        ctx = [(k.expand(G, -1, -1, -1), v.expand(G, -1, -1, -1)) for k, v in s.ctx_kv]
        h = self.model.denoise_hidden(rows.to(self.device), pos.to(self.device), ctx, mask=None)  # (G, M, D)
        logits = self.model.logits(h[masked.to(self.device)]).float().cpu()  # (n, V), ordered by (g, j)
        logits[:, self._banned] = float("-inf")
        order = masked.nonzero()[:, 1]  # the token index of each logits row
        prob = torch.softmax(logits, dim=-1).gather(-1, ids[order][:, None])[:, 0]
        unlikely = order[prob < s.revise_threshold]
        self.stats["denoise_passes"] += 1
        s.group.passes += 1
        s.steps += 1
        s.remasked = int(unlikely.numel())
        ids[unlikely] = tok.mask_id
        return ids

    def _prefill(self, ids: list[int]) -> tuple[KV, int]:
        key = tuple(ids)
        best, best_len = None, 0
        for k in self._cache:
            n = _common_prefix(k, key)
            if n > best_len:
                best, best_len = k, n
        best_len = min(best_len, len(ids) - 1)  # always recompute at least <fim_middle>
        x = torch.tensor([ids[best_len:]], device=self.device)
        if best is not None and best_len > 0:
            past = [(k[:, :, :best_len], v[:, :, :best_len]) for k, v in self._cache[best]]
            self._cache.move_to_end(best)
            kv = self.model.prefill(x, past=past)
        else:
            best_len = 0
            kv = self.model.prefill(x)
        self.stats["prefill_tokens"] += len(ids) - best_len
        self.stats["reused_tokens"] += best_len
        self._cache[key] = kv
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_entries:
            self._cache.popitem(last=False)
        return kv, best_len

    # ---- one batched denoising pass ----------------------------------------------------------------------
    def _step(self, batch: list[_Slot]) -> None:
        tok, model = self.tok, self.model
        self.stats["denoise_passes"] += 1
        for g in {id(s.group): s.group for s in batch if s.group is not None}.values():
            g.passes += 1
        if len(batch) == 1:
            s = batch[0]
            T = len(s.ctx_ids)
            slots = s.slots[None]
            pos = torch.arange(T, T + slots.shape[1])[None]
            h = model.denoise_hidden(slots.to(self.device), pos.to(self.device), s.ctx_kv, mask=None)
            per_job = [h[0]]
        else:
            t_ctx = max(len(s.ctx_ids) for s in batch)
            m = max(s.slots.numel() for s in batch)
            B = len(batch)
            slots = torch.full((B, m), tok.pad_id, dtype=torch.long)
            pos = torch.zeros(B, m, dtype=torch.long)
            for b, s in enumerate(batch):
                slots[b, : s.slots.numel()] = s.slots
                pos[b] = len(s.ctx_ids) + torch.arange(m)
            past = self._batched_context(batch, t_ctx)
            mask = context_slot_mask(torch.tensor([len(s.ctx_ids) for s in batch]),
                                     torch.tensor([s.slots.numel() for s in batch]), t_ctx, m)
            h = model.denoise_hidden(slots.to(self.device), pos.to(self.device), past, mask.to(self.device))
            per_job = [h[b, : s.slots.numel()] for b, s in enumerate(batch)]
        # logits at masked slots only, one unembedding for the whole batch
        sel = [(s.slots == tok.mask_id).to(self.device) for s in batch]
        hm = torch.cat([hj[sj] for hj, sj in zip(per_job, sel)])
        logits = model.logits(hm).float().cpu()  # (N_total, V)
        logits[:, self._banned] = float("-inf")  # only text or <eom> may be committed
        off = 0
        for s, sj in zip(batch, sel):
            n = int(sj.sum())
            if s.revise_threshold is not None:
                logits[off: off + n, tok.eom_id] = float("-inf")  # a revised region keeps its token count
            self._commit(s, logits[off: off + n])
            off += n

    def _batched_context(self, batch: list[_Slot], t_ctx: int) -> KV:
        """The jobs' context KV right-padded to t_ctx and stacked (B, H, t_ctx, Dh) per layer; rebuilt only
        when the batch's membership changes, since contexts are fixed while a job denoises."""
        if self._batch_kv is not None and len(self._batch_kv[0]) == len(batch) and \
                all(a is b for a, b in zip(self._batch_kv[0], batch)):  # identity, not id(): ids get reused
            return self._batch_kv[1]
        past = []
        for layer in range(self.model.cfg.n_layers):
            ks, vs = [], []
            for s in batch:
                k, v = s.ctx_kv[layer]
                ks.append(torch.nn.functional.pad(k, (0, 0, 0, t_ctx - k.shape[2])))
                vs.append(torch.nn.functional.pad(v, (0, 0, 0, t_ctx - v.shape[2])))
            past.append((torch.cat(ks), torch.cat(vs)))
        self._batch_kv = (list(batch), past)
        return past

    def _commit(self, s: _Slot, logits: torch.Tensor) -> None:
        req, tok = s.req, self.tok
        threshold = req.threshold if req.threshold is not None else self.config.threshold
        n_masked = logits.shape[0]
        steps_left = None if req.steps is None else req.steps - s.steps
        gen = None
        if req.temperature > 0:
            gen = torch.Generator().manual_seed(zlib.crc32(f"{req.id}:{s.steps}".encode()))
        s.slots, _ = sampler.denoise_step(
            s.slots, logits, mask_id=tok.mask_id, threshold=threshold,
            min_commit=sampler.min_commit_for(n_masked, steps_left), temperature=req.temperature, generator=gen,
            eom_id=tok.eom_id, eom_threshold=self.config.eom_threshold)
        s.steps += 1
        s.slots, s.ended = sampler.apply_eom(s.slots, tok.eom_id)
        extra = sampler.needs_extension(s.slots, mask_id=tok.mask_id, ended=s.ended, max_tokens=req.max_tokens)
        if extra:
            grow = min(extra, self.config.initial_slots)
            s.slots = torch.cat([s.slots, torch.full((grow,), tok.mask_id, dtype=torch.long)])
        if s.on_update is not None and req.stream:
            draft = tok.decode(sampler.middle_tokens(s.slots, mask_id=tok.mask_id, eom_id=tok.eom_id))
            if draft != s.last_draft:
                s.last_draft = draft
                self._deliver(s, s.on_update, draft)

    def _finished(self, s: _Slot) -> bool:
        if bool((s.slots == self.tok.mask_id).any()):
            return False
        if not self.config.repair or s.repaired_once:
            return True
        verdict = s.verdict = self._verdict(s)
        if verdict.valid is not False or not verdict.error_spans:
            return True
        # repair: re-mask the tokens that overlap the error spans (and one token either side), denoise again
        ids = self._middle_ids(s)
        spans = self.tok.token_char_spans(ids)
        hit = set()
        for a, b in verdict.error_spans:
            for i, (ta, tb) in enumerate(spans):
                if ta < max(b, a + 1) and tb > a:
                    hit.update((i - 1, i, i + 1))
        hit = {i for i in hit if 0 <= i < len(ids)}
        s.repaired_once = True
        if not hit:
            return True
        s.repair = "remask"
        s.verdict = None  # the candidate is about to change
        idx = torch.tensor(sorted(hit))
        s.slots[idx] = self.tok.mask_id
        return False

    def _middle_ids(self, s: _Slot) -> list[int]:
        return sampler.middle_tokens(s.slots, mask_id=self.tok.mask_id, eom_id=self.tok.eom_id)

    def _verdict(self, s: _Slot) -> syntax.Verdict:
        return syntax.check(s.req.language, s.window_prefix, self.tok.decode(self._middle_ids(s)), s.window_suffix)

    def _finish(self, s: _Slot) -> None:
        text = self.tok.decode(self._middle_ids(s))
        valid: bool | None = None
        repair = s.repair
        if self.config.repair and syntax.supported(s.req.language):
            verdict = s.verdict or self._verdict(s)
            valid = verdict.valid
            if not valid:
                # a region that had text is never cut short: the caller keeps the original instead
                trimmed = None if s.original else \
                    syntax.trim_to_valid_lines(s.req.language, s.window_prefix, text, s.window_suffix)
                if trimmed is not None:
                    text, valid, repair = trimmed, True, "trim"
                else:
                    text, valid, repair = "", False, "drop"
        res = InfillResult(id=s.req.id, text=text, valid=valid, tokens=len(self._middle_ids(s)),
                           forward_passes=s.steps, ms=round((time.perf_counter() - s.t0) * 1000, 2),
                           repair=repair, context_truncated=s.context_truncated)
        self._deliver(s, s.future.set_result, res)
        s.ctx_kv = None  # the cache keeps what is worth keeping


def build_context(tok: Tokenizer, prefix: str, suffix: str, max_tokens: int, max_seq_len: int,
                  suffix_share: float = 0.25) -> tuple[list[int], bool, str, str]:
    """Context ids `<suf> suffix <pre> prefix <mid>` within the model's window, keeping the text nearest
    the cursor (end of prefix, start of suffix). -> (ids, truncated, prefix window, suffix window).

    The cut points stay put while the user types at the cursor, so the context cache keeps hitting:
    the suffix's share does not depend on the prefix's length once the window is full, and the prefix
    is cut in steps of PREFIX_CUT_STEP tokens (and its text in steps of 2048 characters), not one token
    per keystroke. Measured before this: every keystroke in a file longer than the window missed the
    cache and paid a full prefill (~40 ms of a ~70 ms request)."""
    budget = max_seq_len - min(max_tokens + 1, 128) - 3
    # bound tokenizer work on huge documents (no token is shorter than one character), at stable cuts
    start = max(0, len(prefix) - budget * 8) // 2048 * 2048
    if start:
        nl = prefix.find("\n", start)
        start = nl + 1 if 0 <= nl < start + 256 else start
    p_text, s_text = prefix[start:], suffix[: budget * 8]
    p_ids, s_ids = tok.encode_batch([p_text, s_text])
    truncated = start > 0 or len(s_text) < len(suffix)
    if len(p_ids) + len(s_ids) > budget:
        truncated = True
        room = (budget - len(p_ids)) // PREFIX_CUT_STEP * PREFIX_CUT_STEP  # moves every STEP tokens
        s_ids = s_ids[: min(len(s_ids), max(int(budget * suffix_share), room))]
        over = len(p_ids) - (budget - len(s_ids))
        if over > 0:
            drop = -(-over // PREFIX_CUT_STEP) * PREFIX_CUT_STEP  # ceil(over / STEP) * STEP
            p_ids = p_ids[drop:]
    ids = [tok.suffix_id, *s_ids, tok.prefix_id, *p_ids, tok.middle_id]
    p_win = tok.decode(p_ids) if truncated else prefix
    s_win = tok.decode(s_ids) if truncated else suffix
    return ids, truncated, p_win, s_win


def quantize_int8(model: FIMDiffusionModel) -> FIMDiffusionModel:
    """int8 weights, fp32 activations for every nn.Linear (the embedding / unembedding stays fp32)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's eager API warns that it is moving to torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    ta, tb = torch.tensor(a[:n]), torch.tensor(b[:n])
    diff = (ta != tb).nonzero()
    return n if diff.numel() == 0 else int(diff[0, 0])

