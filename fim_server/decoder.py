"""Denoising one middle: its state (`Middle`) and the steps on it (`Decoder`), shared by the batched engine
(fim_server/engine.py) and the single-request reference loop below, which the engine is tested against.

Contract: `Decoder.admit(req)` builds the context (cache-aware prefill) and the masked slots, and makes the
first denoising pass in the prefill's forward; `forward(ms)` makes ONE forward pass for a batch of middles
(those just admitted bring that first pass's logits) and returns each one's logits at its masked slots (special
tokens other than <eom> banned); `commit(m, logits)` applies one sampler step (fim_server.sampler) and says
whether the streaming draft changed; `finished(m)` is True once nothing is masked and the syntax check is
settled (a candidate that adds an error is repaired once by re-masking the tokens around it, so it returns
False again); `result(m, t0)` settles the text (fim_server.shared.finalize) into an `InfillResult`.
The decoder holds no scheduling state and knows nothing of threads or event loops; all calls for one
decoder come from one thread.

A "revise" middle (edits) starts from its own tokens: one scoring pass (tokens masked in strided groups,
every token scored with its neighbours in view) finds the tokens the model finds unlikely and would clearly
replace; only those are re-masked, and the middle keeps its token count. The finished rewrite is scored the
same way and kept only if the model prefers it to the original by a clear margin (`revise_margin`).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import torch

from fim_server import sampler
from fim_server.context import Context, ContextCache, build_context
from fim_server.model import KV, FIMDiffusionModel, context_slot_mask
from fim_server.shared import syntax
from fim_server.shared.errors import RequestError
from fim_server.shared.finalize import repair_positions, settle
from fim_server.shared.protocol import EditRequest, InfillRequest, InfillResult
from fim_server.tokenizer import Tokenizer

MAX_REVISE_TOKENS = 384  # a "revise" middle's tokens (+ its context) must fit the model's window


@dataclass(frozen=True)
class DecodeConfig:
    # Defaults picked by bench/engine_latency.py sweeps on the shipped model (README, "Measured"):
    threshold: float = 0.8  # confidence tau: lower commits more per pass (faster), higher is more careful
    # commit the leftmost <eom> this likely at once (cuts the padding after it). 0.5: where the model finds it
    # more likely than not that the middle has ended. Against 0.6 (bench/RESULTS.md, "Fewer passes"):
    # HumanEval-infilling 8.4/0.2/9.3% vs 8.5/0.2/9.2%, 7% fewer passes there and 14% on held-out files
    eom_threshold: float = 0.5
    initial_slots: int = 8  # first block of masked slots; extended in blocks of this size, up to max_tokens
    suffix_share: float = 0.25  # part of the context budget the suffix may take when both sides are long
    repair: bool = True  # tree-sitter check, re-mask repair, trim, drop
    # "revise" edits re-mask the tokens whose probability (each scored with its neighbours in view) is below
    # this: below even odds, the model would more likely write something else there.
    revise_threshold: float = 0.5
    # ... and only when the model prefers another token by at least this much (log-probability, nats) over the
    # original in the same context; when it denoises a re-masked slot, the original gets the same head start;
    # and the rewritten region stands only if the model finds it, as a whole, this much more likely than the
    # original (bench/rewrite_safety.py). 0: none of these (the rule before them)
    revise_margin: float = 10.0
    revise_names: bool = True  # a rewrite that renames or leaves a use dangling is not applied (engine)
    revise_groups: int = 4  # scoring pass: token j is masked in row j % groups, so each sees 3/4 of the rest
    # token healing (fim_server.context.heal_count): "off", "whitespace" or "token"; see bench/RESULTS.md for
    # what each does to HumanEval-infilling pass@1
    heal: str = "whitespace"
    # published models (fim_server.bidir) attend bidirectionally, so no context cache is exact: with N > 0,
    # the prefix's and suffix's keys/values are computed with the whole sequence, reused for N - 1 passes
    # that recompute only the middle (Fast-dLLM's "dual cache"), then refreshed; 0: every pass is whole
    kv_refresh: int = 0
    # workspace chunks (`extra`) may take up to this share of the context window; the file's own window gets
    # the rest. The shipped model was never trained on them: bench/workspace_context.py measures what they do
    extra_share: float = 0.5
    published_window: int = 2048  # published models: prefix + suffix tokens a request may use
    # an infill whose full-window context the cache does not hold (the cursor moved: a cold request) is
    # answered with a context this many tokens long; the full window's context is then prefilled in the
    # engine's idle time, and the requests after it (typing) use it once it is cached. Prefill cost grows
    # with the tokens (bench/RESULTS.md, "Cold requests"). 0: always the model's full window
    cold_window: int = 256


@dataclass(eq=False)
class Middle:
    """One middle being denoised: a request's, or one region's of an edit."""

    req: InfillRequest
    ctx_ids: list[int] = field(default_factory=list)
    ctx_kv: KV | None = None
    cached_tokens: int = 0
    prefill_ms: float = 0.0
    context_truncated: bool = False
    window_prefix: str = ""
    window_suffix: str = ""
    slots: torch.Tensor | None = None  # (M,) live middle
    ended: bool = False
    steps: int = 0  # forward passes this middle took part in (a revise middle's scoring pass included)
    repair: str | None = None
    repaired_once: bool = False
    verdict: syntax.Verdict | None = None  # of the current finished candidate, so it is parsed once
    last_draft: str = ""  # the last streaming draft sent: the final text must begin with it
    frozen: int = 0  # leading middle tokens a sent draft holds: a repair never re-masks them
    original: str = ""  # edit regions: the region's text as sent (never cut short)
    revise_threshold: float | None = None  # "revise" regions: keep the token count, re-mask unlikely tokens
    original_ids: list[int] = field(default_factory=list)
    remasked: int | None = None
    original_score: float = 0.0  # "revise": the original tokens' summed log-probability (strided scoring)
    rescored: bool = False  # "revise": the rewrite has been weighed against the original
    heal: str = ""  # the prefix's last characters, moved into the middle (its text must start with them)
    heal_tokens: int = 0  # how many prefix tokens `heal` was
    logprob: float = 0.0  # sum of log p of each token when it was committed (candidates are ranked by it)
    scored: int = 0  # tokens in `logprob`
    # published models (fim_server.bidir): the suffix's ids after the slots, the slots in the sequence (the
    # live ones, then <eom> fill where a committed <eom> cut the middle), and the approximate context cache
    suffix_ids: list[int] = field(default_factory=list)
    canvas: int = 0
    approx: object = None
    full_window: bool = False  # always the model's whole window, never DecodeConfig.cold_window (edit regions)
    first_logits: torch.Tensor | None = None  # the first pass's, made with the prefill (Decoder.admit)

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.scored if self.scored else float("-inf")


class Decoder:
    def __init__(self, model: FIMDiffusionModel, tokenizer: Tokenizer, *, device: str = "cpu",
                 config: DecodeConfig = DecodeConfig(), cache_entries: int = 8):
        self.model, self.tok, self.device, self.config = model, tokenizer, device, config
        # counters for benchmarks and tests: context tokens computed vs reused from the cache, passes made
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "denoise_passes": 0}
        self.cache = ContextCache(model, device, cache_entries, self.stats)
        self._banned = torch.tensor(sorted(tokenizer.special_ids - {tokenizer.eom_id}))
        self._batch_kv: tuple[list[Middle], KV] | None = None  # see _batched_context
        # contexts to prefill while the engine is idle, ahead of the requests that will need them, first
        # first: a prefetched request's (`warm`), and the full window of the last cold request (`_context`)
        self._ahead: list[list[int]] = []

    # ---- admission ---------------------------------------------------------------------------------------
    def build_context(self, prefix: str, suffix: str, max_tokens: int, heal: str = "off", extra=()) -> Context:
        return build_context(self.tok, prefix, suffix, max_tokens, self.model.cfg.max_seq_len,
                             self.config.suffix_share, heal, extra, self.config.extra_share)

    def region(self, edit: EditRequest, i: int) -> Middle:
        """A middle for region i of an edit (not admitted yet): its context is the document around it (the
        other regions as sent). Raises RequestError for a region too long to revise."""
        r = edit.regions[i]
        original = edit.text[r.start: r.end]
        ids, revise_threshold, max_tokens = [], None, r.max_tokens
        if r.mode == "revise":
            ids = self.tok.encode(original)
            if len(ids) > MAX_REVISE_TOKENS:
                raise RequestError(f"region {r.start}..{r.end} has {len(ids)} tokens; 'revise' takes at most "
                                   f"{MAX_REVISE_TOKENS}", id=edit.id)
            revise_threshold = edit.revise_threshold or self.config.revise_threshold
            max_tokens = len(ids) + 1  # its own tokens and the <eom> after them
        req = InfillRequest(id=f"{edit.id}#{i}", prefix=edit.text[: r.start], suffix=edit.text[r.end:],
                            language=edit.language, max_tokens=max_tokens, steps=edit.steps,
                            threshold=edit.threshold, temperature=edit.temperature, extra=edit.extra)
        return Middle(req=req, original=original, revise_threshold=revise_threshold, original_ids=ids,
                      full_window=True)

    def admit(self, m: Middle) -> int:
        """Context and first slots. -> forward passes spent: 1 (a revise middle's scoring pass, or the first
        denoising pass made with the prefill)."""
        revise = m.revise_threshold is not None
        ctx = self._context(m, "off" if revise else self.config.heal)
        m.ctx_ids, m.context_truncated, m.window_prefix, m.window_suffix, m.heal = ctx
        m.heal_tokens = len(self.tok.encode(m.heal)) if m.heal else 0
        t0 = time.perf_counter()
        if revise:
            m.ctx_kv, m.cached_tokens, _ = self.cache.prefill(m.ctx_ids)
            m.prefill_ms = (time.perf_counter() - t0) * 1000
            m.slots = self._revise_slots(m)
            return 1
        m.slots = self._first_slots(m)
        # the first denoising pass rides on the prefill's forward (ContextCache.prefill): `forward` uses these
        # logits instead of making a pass of its own
        m.ctx_kv, m.cached_tokens, h = self.cache.prefill(m.ctx_ids, slots=m.slots)
        m.first_logits = self.model.logits(h).float().cpu()  # every slot is masked yet
        self.stats["denoise_passes"] += 1
        m.prefill_ms = (time.perf_counter() - t0) * 1000
        return 1

    def _context(self, m: Middle, heal: str) -> Context:
        """m's context: the model's full window, unless the cache holds too little of it to be cheap (a cold
        request), then `cold_window` tokens around the cursor, and the full one is queued to prefill ahead."""
        req, w = m.req, self.config.cold_window
        full = self.build_context(req.prefix, req.suffix, req.max_tokens, heal, req.extra)
        if not w or m.full_window or len(full.ids) <= w:
            return full
        if len(full.ids) - self.cache.reusable(full.ids) <= w // 2:
            return full  # typing on, or a window grown while the engine was idle
        self._ahead = [full.ids]  # the cursor moved: what was queued for the old place is of no use
        return build_context(self.tok, req.prefix, req.suffix, req.max_tokens, w, self.config.suffix_share, heal,
                             req.extra, self.config.extra_share)

    def warm(self, req: InfillRequest) -> None:
        """A request that is about to come (an editor sends a document change, then asks for a completion
        after its debounce, ~50 ms in VS Code): queue its context to prefill while the engine is idle, so the
        request finds it cached. Only tokenizes; the prefill is `prefill_ahead`'s."""
        ctx = self._context(Middle(req=req), self.config.heal)
        if self.cache.reusable(ctx.ids) < len(ctx.ids) - 1:
            self._ahead.insert(0, ctx.ids)

    @property
    def work_ahead(self) -> bool:
        """Some context is queued to prefill ahead (`warm`, or a cold request's full window)."""
        return bool(self._ahead)

    def prefill_ahead(self, tokens: int) -> None:
        """Prefill up to `tokens` more of the first queued context into the cache (the engine calls this while
        idle, a chunk at a time, so a request arriving meanwhile waits for one chunk at most)."""
        if not self._ahead:
            return
        ids = self._ahead[0]
        n = min(len(ids), self.cache.reusable(ids) + tokens)
        try:
            self.cache.prefill(ids[:n])
        except Exception:
            self._ahead.clear()  # never retried, so a failure cannot make the worker spin
            raise
        if n == len(ids):
            self._ahead.pop(0)

    def clear_cache(self) -> None:
        """Forget every cached context, and what was queued to prefill."""
        self.cache.clear()
        self._ahead.clear()

    def _first_slots(self, m: Middle) -> torch.Tensor:
        """The first block of masked slots: `initial_slots`, or fewer when the budget is smaller."""
        return torch.full((min(self.config.initial_slots, self._budget(m)),), self.tok.mask_id, dtype=torch.long)

    def _budget(self, m: Middle) -> int:
        """Slots the middle may grow to: the request's tokens, plus those of the healed prefix end."""
        return m.req.max_tokens + m.heal_tokens

    def _revise_slots(self, m: Middle) -> torch.Tensor:
        """The region's own tokens + a committed <eom>, with the tokens re-masked that the model finds unlikely
        (below `revise_threshold`) AND for which it prefers another token by `revise_margin` nats."""
        own, rival = self._score(m, m.original_ids)
        m.original_score = float(own.sum())
        unlikely = own.exp() < m.revise_threshold
        if self.config.revise_margin > 0:
            unlikely &= rival - own >= self.config.revise_margin
            # comments and strings are the author's prose: a rewrite fixes code, it does not reword them
            prose = syntax.prose_spans(m.req.language, m.req.prefix, m.original, m.req.suffix)  # whole file
            if prose:
                spans = self.tok.token_char_spans(m.original_ids)
                unlikely &= torch.tensor([not any(a < pb and b > pa for pa, pb in prose) for a, b in spans])
        unlikely = unlikely.nonzero()[:, 0]
        m.remasked = int(unlikely.numel())
        ids = torch.tensor(m.original_ids + [self.tok.eom_id], dtype=torch.long)
        ids[unlikely] = self.tok.mask_id
        return ids

    def _score(self, m: Middle, token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass scores every token of a region: row g of a (G, M) batch masks the tokens j with
        j % G == g, so each token's log-probability is read with the other (G-1)/G of the region in view (a
        strided pseudo-likelihood; with everything masked at once a token far from the edges would see
        nothing of its neighbours). -> (each token's own log-probability, the best other token's), (n,) each."""
        tok = self.tok
        ids = torch.tensor(token_ids + [tok.eom_id], dtype=torch.long)  # (M,)
        n, G = ids.numel() - 1, max(1, min(self.config.revise_groups, ids.numel() - 1))
        j = torch.arange(ids.numel())
        masked = (j[None, :] % G == torch.arange(G)[:, None]) & (j[None, :] < n)  # (G, M)
        rows = torch.where(masked, tok.mask_id, ids[None, :])
        logits = self._rows_logits(m, rows, masked)  # (n, V), ordered by (g, j)
        logits[:, self._banned] = float("-inf")
        order = masked.nonzero()[:, 1]  # the token index of each logits row
        logp = torch.log_softmax(logits, dim=-1)
        own = logp.gather(-1, ids[order][:, None])[:, 0]
        rival = logp.scatter(-1, ids[order][:, None], float("-inf")).max(dim=-1).values
        self.stats["denoise_passes"] += 1
        m.steps += 1
        back = torch.empty_like(order)
        back[order] = torch.arange(order.numel())
        return own[back], rival[back]  # in token order

    def _rows_logits(self, m: Middle, rows: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """Logits at the `masked` (G, M) slots of G variants `rows` (G, M) of m's middle, all in one pass ->
        (n, V) float on the CPU, ordered by (row, slot) (fim_server.bidir overrides this)."""
        G, M = rows.shape
        T = len(m.ctx_ids)
        pos = torch.arange(T, T + M)[None].expand(G, -1)
        ctx = [(k.expand(G, -1, -1, -1), v.expand(G, -1, -1, -1)) for k, v in m.ctx_kv]
        h = self.model.denoise_hidden(rows.to(self.device), pos.to(self.device), ctx, mask=None)  # (G, M, D)
        return self.model.logits(h[masked.to(self.device)]).float().cpu()

    def _keep_if_unsure(self, m: Middle) -> None:
        """A rewritten region stands only if the model finds it more likely than the original, as a whole, by
        `revise_margin` nats per changed token (the same strided scoring for both): re-masked tokens are
        denoised with their new neighbours in view, so a chain of changes can each look likely."""
        m.rescored = True
        ids = self._middle_ids(m)
        if ids == m.original_ids:
            return
        own, _ = self._score(m, ids)
        changed = sum(a != b for a, b in zip(ids, m.original_ids))  # the same count: <eom> is banned in revise
        if float(own.sum()) - m.original_score < self.config.revise_margin * changed:
            m.slots = torch.tensor(m.original_ids + [self.tok.eom_id], dtype=torch.long)
            m.repair = "kept"

    # ---- one forward pass ------------------------------------------------------------------------------------
    def forward(self, batch: list[Middle]) -> list[torch.Tensor]:
        """ONE forward pass over the middles of `batch` -> per middle, logits (n_masked, V) at its masked slots.
        A middle just admitted brings its first pass's logits (made with its prefill), so only the others run."""
        tok = self.tok
        fresh = [m for m in batch if m.first_logits is None]
        logits = None
        if fresh:
            self.stats["denoise_passes"] += 1
            logits = self._masked_logits(fresh)  # (N_total, V), float, on the CPU
        out, off = [], 0
        for m in batch:
            if m.first_logits is not None:
                part, m.first_logits = m.first_logits, None
            else:
                n = int((m.slots == tok.mask_id).sum())
                part = logits[off: off + n]
                off += n
            part[:, self._banned] = float("-inf")  # only text or <eom> may be committed
            if m.revise_threshold is not None:
                part[:, tok.eom_id] = float("-inf")  # a revised region keeps its token count
                if self.config.revise_margin:  # the original token's head start (see DecodeConfig)
                    slot = (m.slots == tok.mask_id).nonzero()[:, 0]
                    part[torch.arange(n), torch.tensor(m.original_ids)[slot]] += self.config.revise_margin
            if m.heal:
                self._constrain_heal(m, part)
            out.append(part)
        return out

    def _masked_logits(self, batch: list[Middle]) -> torch.Tensor:
        """The model's logits at every masked slot of `batch`, middle after middle, slot order -> (N_total, V)
        float on the CPU (fim_server.bidir overrides this for published models)."""
        tok, model = self.tok, self.model
        if len(batch) == 1:
            m = batch[0]
            T = len(m.ctx_ids)
            pos = torch.arange(T, T + m.slots.numel())[None]
            h = model.denoise_hidden(m.slots[None].to(self.device), pos.to(self.device), m.ctx_kv, mask=None)
            per = [h[0]]
        else:
            t_ctx = max(len(m.ctx_ids) for m in batch)
            width = max(m.slots.numel() for m in batch)
            slots = torch.full((len(batch), width), tok.pad_id, dtype=torch.long)
            pos = torch.zeros(len(batch), width, dtype=torch.long)
            for b, m in enumerate(batch):
                slots[b, : m.slots.numel()] = m.slots
                pos[b] = len(m.ctx_ids) + torch.arange(width)
            past = self._batched_context(batch, t_ctx)
            mask = context_slot_mask(torch.tensor([len(m.ctx_ids) for m in batch]),
                                     torch.tensor([m.slots.numel() for m in batch]), t_ctx, width)
            h = model.denoise_hidden(slots.to(self.device), pos.to(self.device), past, mask.to(self.device))
            per = [h[b, : m.slots.numel()] for b, m in enumerate(batch)]
        # logits at masked slots only, one unembedding for the whole batch
        sel = [(m.slots == tok.mask_id).to(self.device) for m in batch]
        return model.logits(torch.cat([hj[sj] for hj, sj in zip(per, sel)])).float().cpu()

    def _batched_context(self, batch: list[Middle], t_ctx: int) -> KV:
        """The middles' context KV right-padded to t_ctx and stacked (B, H, t_ctx, Dh) per layer; rebuilt only
        when the batch's membership changes, since contexts are fixed while a middle denoises."""
        if self._batch_kv is not None and len(self._batch_kv[0]) == len(batch) and \
                all(a is b for a, b in zip(self._batch_kv[0], batch)):  # identity, not id(): ids get reused
            return self._batch_kv[1]
        past = []
        for layer in range(self.model.cfg.n_layers):
            ks, vs = [], []
            for m in batch:
                k, v = m.ctx_kv[layer]
                ks.append(torch.nn.functional.pad(k, (0, 0, 0, t_ctx - k.shape[2])))
                vs.append(torch.nn.functional.pad(v, (0, 0, 0, t_ctx - v.shape[2])))
            past.append((torch.cat(ks), torch.cat(vs)))
        self._batch_kv = (list(batch), past)
        return past

    # ---- token healing -------------------------------------------------------------------------------------
    def _lead(self, m: Middle) -> str:
        """Text of the middle's leading committed tokens (up to its first masked slot or <eom>)."""
        return self.tok.decode(self._middle_ids(m))

    def _heal_rest(self, m: Middle, lead: str | None = None) -> str:
        """The part of `m.heal` the middle's leading committed tokens (`lead`, decoded if not given) do not
        cover yet ("" once covered)."""
        lead = self._lead(m) if lead is None else lead
        return m.heal[len(lead):] if len(lead) < len(m.heal) else ""

    def _constrain_heal(self, m: Middle, logits: torch.Tensor) -> None:
        """Row 0 of `logits` is the middle's first masked slot. While the healed text is not covered, that slot
        may only hold a token compatible with the rest of it (never <eom>); right after it, <eom> is banned
        until some text follows, so a whole-line middle cannot collapse to empty."""
        if logits.shape[0] == 0 or m.slots[0] == self.tok.eom_id:
            return
        lead = self._lead(m)
        rest = self._heal_rest(m, lead)
        if rest:
            bad = torch.from_numpy(~self.tok.compatible_ids(rest))  # (tokenizer ids,); wider models ban the rest
            logits[0, : bad.numel()][bad] = float("-inf")
        elif lead == m.heal:
            logits[0, self.tok.eom_id] = float("-inf")

    def release(self, m: Middle) -> None:
        """Drop what a retired middle holds (the cache keeps what is worth keeping)."""
        m.ctx_kv = None
        if self._batch_kv is not None and any(x is m for x in self._batch_kv[0]):
            self._batch_kv = None

    # ---- one sampler step ------------------------------------------------------------------------------------
    def commit(self, m: Middle, logits: torch.Tensor) -> str | None:
        """Apply one denoising step. -> the new streaming draft when the request streams and it changed."""
        req, tok = m.req, self.tok
        threshold = req.threshold if req.threshold is not None else self.config.threshold
        steps_left = None if req.steps is None else req.steps - m.steps
        gen = None
        if req.temperature > 0:
            gen = torch.Generator().manual_seed(zlib.crc32(f"{req.id}:{m.steps}".encode()))
        masked = (m.slots == tok.mask_id).nonzero()[:, 0]  # the slot of each logits row
        if m.heal and self._heal_rest(m):
            # the healed text comes first, left to right: only the first masked slot (its row 0) commits now
            token, _ = sampler.propose(logits[:1], req.temperature, gen)
            m.slots = m.slots.clone()
            m.slots[int(masked[0])] = token[0]
        else:
            m.slots, _ = sampler.denoise_step(
                m.slots, logits, mask_id=tok.mask_id, threshold=threshold,
                min_commit=sampler.min_commit_for(logits.shape[0], steps_left), temperature=req.temperature,
                generator=gen, eom_id=tok.eom_id, eom_threshold=self.config.eom_threshold)
        new = m.slots[masked]  # (N,) what each row's slot holds now
        done = new != tok.mask_id
        if bool(done.any()):  # the model's own likelihood of what it committed
            lp = torch.log_softmax(logits[done], dim=-1).gather(-1, new[done][:, None])
            m.logprob += float(lp.sum())
            m.scored += int(done.sum())
        m.steps += 1
        self._resize(m)
        if req.stream:
            lead_ids = self._middle_ids(m)
            lead = self.tok.decode(lead_ids)
            if req.append_only:
                # a draft is a promise: whole lines (the line being written may still change), whose tokens
                # are frozen once sent, so drafts only grow and the answer begins with the last one
                draft = lead[: lead.rfind("\n") + 1][len(m.heal):]
                if len(draft) > len(m.last_draft):
                    m.last_draft = draft
                    m.frozen = self._tokens_covering(lead_ids, len(m.heal) + len(draft))
                    return draft
                return None
            draft = lead[len(m.heal):].rstrip("\ufffd")  # a character split across tokens waits for the rest
            if draft != m.last_draft:
                m.last_draft = draft
                return draft
        return None

    def _resize(self, m: Middle) -> None:
        """After a step: cut the middle after its first <eom>; when every slot holds text and the budget allows,
        add a block of masked slots (fim_server.bidir overrides this for DreamOn's expand/delete states)."""
        tok = self.tok
        m.slots, m.ended = sampler.apply_eom(m.slots, tok.eom_id)
        extra = sampler.needs_extension(m.slots, mask_id=tok.mask_id, ended=m.ended, max_tokens=self._budget(m))
        if extra:
            grow = min(extra, self.config.initial_slots)
            m.slots = torch.cat([m.slots, torch.full((grow,), tok.mask_id, dtype=torch.long)])

    # ---- finishing -------------------------------------------------------------------------------------------
    def finished(self, m: Middle) -> bool:
        if bool((m.slots == self.tok.mask_id).any()):
            return False
        if m.revise_threshold is not None and not m.rescored and self.config.revise_margin > 0:
            self._keep_if_unsure(m)
        if not self.config.repair or m.repaired_once:
            return True
        verdict = m.verdict = self._verdict(m)
        if verdict.valid is not False or not verdict.error_spans:
            return True
        # repair: re-mask the tokens that overlap the error spans (and one token either side), denoise again
        ids = self._middle_ids(m)
        hit = [i for i in repair_positions(self.tok.token_char_spans(ids), verdict.error_spans) if i >= m.frozen]
        m.repaired_once = True
        if not hit:
            return True
        m.repair = "remask"
        m.verdict = None  # the candidate is about to change
        m.slots[torch.tensor(hit)] = self.tok.mask_id
        return False

    def _tokens_covering(self, ids: list[int], chars: int) -> int:
        """How many of the leading tokens `ids` it takes to cover their text's first `chars` characters."""
        spans = self.tok.token_char_spans(ids)
        return next((i + 1 for i, (_, b) in enumerate(spans) if b >= chars), len(ids)) if chars else 0

    def _middle_ids(self, m: Middle) -> list[int]:
        return sampler.middle_tokens(m.slots, mask_id=self.tok.mask_id, eom_id=self.tok.eom_id)

    def _verdict(self, m: Middle) -> syntax.Verdict:
        return syntax.check(m.req.language, m.window_prefix, self.tok.decode(self._middle_ids(m)), m.window_suffix)

    def result(self, m: Middle, t0: float) -> InfillResult:
        ids = self._middle_ids(m)
        text, valid, repair = self.tok.decode(ids), None, m.repair
        if self.config.repair:
            text, valid, repair = settle(m.req.language, m.window_prefix, text, m.window_suffix,
                                         verdict=m.verdict, keep_original=bool(m.original), repair=m.repair,
                                         floor=m.heal + m.last_draft if m.frozen else "")
        # the healed characters are the user's own (the prefix's end): the answer is what follows them
        text = text[len(m.heal):] if text.startswith(m.heal) else ""
        return InfillResult(id=m.req.id, text=text, valid=valid, tokens=len(ids), forward_passes=m.steps,
                            ms=round((time.perf_counter() - t0) * 1000, 2), repair=repair,
                            context_truncated=m.context_truncated, context_tokens=len(m.ctx_ids),
                            prefill_ms=round(m.prefill_ms, 2), cached_tokens=m.cached_tokens)


def reference_infill(decoder: Decoder, req: InfillRequest) -> InfillResult:
    """One request alone, one forward pass after another: the plain loop the batched engine must agree with
    (tests/test_engine.py). Runs on the calling thread."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        m = Middle(req=req)
        decoder.admit(m)
        while not decoder.finished(m):
            decoder.commit(m, decoder.forward([m])[0])
        res = decoder.result(m, t0)
        decoder.release(m)
    return res
