"""Published diffusion models (fim_server/families.py) in Diffill's engine: their forward pass and the decoder
that fills a middle with them.

Layout: `[<bos>] prefix | slot_1 .. slot_C | suffix`, every position attending to every other (these models
were trained bidirectional; they have no fill-in-the-middle tokens). The C slots start masked; the decoding
is Diffill's own (fim_server/decoder.py: confidence-threshold commits, the leftmost confident end token ends
the middle, extension in blocks while the slots fill with text, tree-sitter repair by re-masking), so the
length is found as for the embedded model: start with a few slots and extend while they fill with text, not a
fixed mask count. A committed end token cuts the live middle; the slots after it stay in the sequence as end
tokens, the padding these models saw after an answer in training. DreamOn, trained for variable-length
infilling, instead keeps its own states: a slot that commits <|expand|> becomes two masked slots and one
that commits an end token is deleted (`BidirDecoder._resize`).

Caching: nothing is exact here (a context token's keys/values depend on the middle it sees). With
`kv_refresh` N > 0 the prefix's and suffix's keys/values from a whole pass are reused for the next N - 1
passes, which run only the middle block (and, for shifted families, the token before it, whose logits
predict slot 1): Fast-dLLM's dual cache (Wu et al. 2025, arXiv:2505.22618, sec. 3.2). A change of the
middle's size refreshes it at once. Its quality cost on a real checkpoint is not measured yet (no GPU).

The forward runs `transformers`' own modules (q/k/v/o projections, RMSNorm, MLP) layer by layer with
SDPA and no mask; tests/test_published.py checks it against `transformers`' own forward of the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from fim_server.context import Context, Window, cut_window, extra_ids
from fim_server.decoder import DecodeConfig, Decoder, Middle
from fim_server.families import Family, PublishedTokenizer
from fim_server.shared.protocol import InfillResult

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (B, H_kv, T, Dh), RoPE applied to k


class BidirLM:
    """A transformers Qwen2/Llama causal-LM module run without a causal mask."""

    def __init__(self, hf: torch.nn.Module, family: Family):
        self.hf, self.family = hf, family
        c = hf.config
        self.cfg = c
        self.n_heads, self.n_kv = c.num_attention_heads, c.num_key_value_heads
        self.head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        rope = getattr(c, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") or getattr(c, "rope_theta", None) or 10000.0
        self.device = hf.model.embed_tokens.weight.device
        self.dtype = hf.model.embed_tokens.weight.dtype
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32,
                                                      device=self.device) / self.head_dim))
        self.vocab_size = c.vocab_size
        self.n_layers = c.num_hidden_layers

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ang = positions.float()[..., None] * self.inv_freq  # (B, L, Dh/2)
        emb = torch.cat([ang, ang], dim=-1)[:, None]  # (B, 1, L, Dh): the rotate-half convention
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    @torch.inference_mode()
    def run(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None = None,
            past: KV | None = None) -> tuple[torch.Tensor, KV]:
        """ids, positions (B, L); mask bool (B, 1, L, T_past + L), True = may attend (None: all);
        past: keys/values of other positions that every row sees too. -> final-normed hidden (B, L, D) and
        the L new positions' keys/values per layer."""
        B, L = ids.shape
        cos, sin = self._rope(positions)
        x = self.hf.model.embed_tokens(ids)
        kv: KV = []
        for i, layer in enumerate(self.hf.model.layers):
            a = layer.self_attn
            h = layer.input_layernorm(x)
            q = a.q_proj(h).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(h).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
            v = a.v_proj(h).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)
            q, k = self._rotate(q, cos, sin), self._rotate(k, cos, sin)
            kv.append((k, v))
            if past is not None:
                k, v = torch.cat([past[i][0], k], dim=2), torch.cat([past[i][1], v], dim=2)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_heads)
            x = x + a.o_proj(y.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.hf.model.norm(x), kv

    @torch.inference_mode()
    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.hf.lm_head(h)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())


@dataclass
class _Approx:
    """A middle's reused context keys/values (prefix, then suffix) and how fresh they are."""

    kv: KV  # per layer (1, H_kv, T_ctx, Dh)
    canvas: int  # the middle's size they were computed with
    age: int = 0  # passes since they were computed


class _NoCache:
    """Published models have no exact context cache (see the module docstring); benchmarks may clear it."""

    def clear(self) -> None:
        pass


class BidirDecoder(Decoder):
    """fim_server.decoder.Decoder for a published model: the same sampler steps, repair, healing and results;
    its own context (prefix and suffix around the slots) and forward pass."""

    def __init__(self, model: BidirLM, tokenizer: PublishedTokenizer, *, device: str = "cpu",
                 config: DecodeConfig = DecodeConfig()):
        self.model, self.tok, self.device, self.config = model, tokenizer, device, config
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "denoise_passes": 0}
        self.cache = _NoCache()
        beyond = range(tokenizer.vocab_size, model.vocab_size)  # embedding rows no token has
        self._expand = getattr(tokenizer, "expand_id", None)  # DreamOn only (see _resize)
        allowed = {tokenizer.eom_id, self._expand} - {None}
        self._banned = torch.tensor(sorted((tokenizer.special_ids - allowed) | set(beyond)))
        self._ends = torch.tensor(sorted(tokenizer.end_ids))
        self._batch_kv = None
        self._ahead = []  # stays empty: see warm

    def warm(self, req) -> None:
        """Nothing can be prefilled ahead: a bidirectional model computes its context together with the middle
        (with `kv_refresh`, per request), so a prefetch hint is dropped."""

    # ---- context -----------------------------------------------------------------------------------------------
    def _start(self) -> list[int]:
        """What the sequence starts with: the family's <bos>, or (for a shifted family, whose first slot is
        predicted from the position before it) an end token when it has none."""
        if self.tok.bos_id is not None:
            return [self.tok.bos_id]
        return [self.tok.eom_id] if self.model.family.shift else []

    def _window(self, prefix: str, suffix: str, heal: str, extra) -> tuple[list[int], Window]:
        """[<bos>] + workspace chunks (with `<|file_sep|>` where the vocabulary has it, as Qwen2.5-Coder-based
        models were trained on repositories) and the file's own window around the cursor."""
        budget = self.config.published_window - len(self._start())
        x_ids = extra_ids(self.tok, extra, int(budget * self.config.extra_share), self.tok.file_sep_id)
        w = cut_window(self.tok, prefix, suffix, budget - len(x_ids), self.config.suffix_share, heal)
        return self._start() + x_ids + w.prefix_ids, w

    def build_context(self, prefix: str, suffix: str, max_tokens: int, heal: str = "off", extra=()) -> Context:
        head, w = self._window(prefix, suffix, heal, extra)
        return Context(head + w.suffix_ids, w.truncated, w.prefix, w.suffix, w.heal)

    def admit(self, m: Middle) -> int:
        req = m.req
        revise = m.revise_threshold is not None
        head, w = self._window(req.prefix, req.suffix, "off" if revise else self.config.heal, req.extra)
        m.ctx_ids, m.suffix_ids = head, w.suffix_ids
        m.context_truncated, m.window_prefix, m.window_suffix, m.heal = w.truncated, w.prefix, w.suffix, w.heal
        m.heal_tokens = len(self.tok.encode(m.heal)) if m.heal else 0
        m.cached_tokens, m.prefill_ms = 0, 0.0
        if revise:
            m.slots = self._revise_slots(m)
            return 1
        m.slots = self._first_slots(m)
        return 0

    def release(self, m: Middle) -> None:
        m.approx = None

    # ---- forward passes ----------------------------------------------------------------------------------------
    def _sequence(self, m: Middle) -> list[int]:
        """prefix, the slots (live ones, then <eom> fill up to the canvas), suffix (DreamOn: then <eos>, as its
        own infilling script lays it out)."""
        m.canvas = max(m.canvas, m.slots.numel())
        fill = [self.tok.eom_id] * (m.canvas - m.slots.numel())
        end = [self.tok.eom_id] if self._expand is not None else []
        return m.ctx_ids + m.slots.tolist() + fill + m.suffix_ids + end

    def _resize(self, m: Middle) -> None:
        """DreamOn's length states (Wu et al. 2025, "DreamOn", and its infilling script): a masked slot that
        commits <|expand|> becomes two masked slots, one that commits an end token is deleted; the middle ends
        when no masked slot is left. Every other family: the base rule (cut after <eom>, extend when full)."""
        if self._expand is None:
            return super()._resize(m)
        ids, out = m.slots.tolist(), []
        for t in ids:
            if t == self._expand:
                out += [self.tok.mask_id, self.tok.mask_id]
            elif t not in self.tok.end_ids:
                out.append(t)
        m.slots = torch.tensor(out, dtype=torch.long)
        m.canvas, m.ended = len(out), False

    def _masked_logits(self, batch: list[Middle]) -> torch.Tensor:
        shift = int(self.model.family.shift)
        whole, partial = [], []
        for m in batch:
            seq = self._sequence(m)
            a: _Approx | None = m.approx
            if self.config.kv_refresh > 0 and a is not None and a.canvas == m.canvas and \
                    a.age < self.config.kv_refresh:
                partial.append((m, seq))
            else:
                whole.append((m, seq))
        hidden: dict[int, torch.Tensor] = {}  # id(middle) -> hidden (n_masked, D)
        if whole:
            self._whole(whole, hidden, shift)
        if partial:
            self._partial(partial, hidden, shift)
        logits = self._unembed(torch.cat([hidden[id(m)] for m in batch]))
        if self._expand is not None:  # DreamOn: no expansion past the request's budget
            off = 0
            for m in batch:
                n = int((m.slots == self.tok.mask_id).sum())
                if m.slots.numel() >= self._budget(m):
                    logits[off: off + n, self._expand] = float("-inf")
                off += n
        return logits

    def _reads(self, m: Middle, shift: int, offset: int) -> torch.Tensor:
        """Positions (within a row starting at absolute position `offset`) whose hidden states give the logits
        of m's masked slots."""
        slots = (m.slots == self.tok.mask_id).nonzero()[:, 0]
        return len(m.ctx_ids) + slots - shift - offset

    def _whole(self, rows: list[tuple[Middle, list[int]]], hidden: dict, shift: int) -> None:
        h, kv = self._run([seq for _, seq in rows], [0] * len(rows), None)
        self.stats["prefill_tokens"] += sum(len(s) for _, s in rows)
        for b, (m, seq) in enumerate(rows):
            hidden[id(m)] = h[b, self._reads(m, shift, 0).to(h.device)]
            if self.config.kv_refresh > 0:
                ctx = torch.cat([torch.arange(len(m.ctx_ids) - shift),
                                 torch.arange(len(m.ctx_ids) + m.canvas, len(seq))]).to(h.device)
                m.approx = _Approx([(k[b: b + 1, :, ctx], v[b: b + 1, :, ctx]) for k, v in kv], m.canvas)

    def _partial(self, rows: list[tuple[Middle, list[int]]], hidden: dict, shift: int) -> None:
        starts = [len(m.ctx_ids) - shift for m, _ in rows]
        blocks = [seq[s: len(m.ctx_ids) + m.canvas] for (m, seq), s in zip(rows, starts)]
        h, _ = self._run(blocks, starts, [m.approx.kv for m, _ in rows])
        for b, ((m, _), s) in enumerate(zip(rows, starts)):
            hidden[id(m)] = h[b, self._reads(m, shift, s).to(h.device)]
            m.approx.age += 1
            self.stats["reused_tokens"] += m.approx.kv[0][0].shape[2]

    def _run(self, seqs: list[list[int]], starts: list[int], pasts: list[KV] | None):
        """One forward over right-padded rows: row b holds `seqs[b]` at absolute positions from `starts[b]` and
        sees `pasts[b]` (if given) besides itself; padding is seen by no one."""
        B, L = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((B, L), self.tok.pad_id, dtype=torch.long)
        pos = torch.zeros(B, L, dtype=torch.long)
        for b, (s, p0) in enumerate(zip(seqs, starts)):
            ids[b, : len(s)] = torch.tensor(s)
            pos[b] = p0 + torch.arange(L)
        lens = torch.tensor([len(s) for s in seqs])
        past, p_lens, T = None, torch.zeros(B, dtype=torch.long), 0
        if pasts is not None:
            p_lens = torch.tensor([p[0][0].shape[2] for p in pasts])
            T = int(p_lens.max())
            past = []
            for layer in range(self.model.n_layers):
                ks = [F.pad(p[layer][0], (0, 0, 0, T - p[layer][0].shape[2])) for p in pasts]
                vs = [F.pad(p[layer][1], (0, 0, 0, T - p[layer][1].shape[2])) for p in pasts]
                past.append((torch.cat(ks), torch.cat(vs)))
        mask = None
        if bool((lens < L).any()) or bool((p_lens < T).any()):
            j = torch.arange(T + L)
            keys = (j[None] < p_lens[:, None]) | ((j[None] >= T) & (j[None] - T < lens[:, None]))  # (B, T+L)
            mask = keys[:, None, None, :].expand(B, 1, L, T + L).clone()
            rows = torch.arange(L)
            dead = rows[None] >= lens[:, None]  # padding rows see themselves only (no empty softmax row)
            mask[:, 0][dead] = False
            b_idx, r_idx = dead.nonzero(as_tuple=True)
            mask[b_idx, 0, r_idx, T + r_idx] = True
            mask = mask.to(self.model.device)
        return self.model.run(ids.to(self.model.device), pos.to(self.model.device), mask, past)

    def _rows_logits(self, m: Middle, rows: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        shift = int(self.model.family.shift)
        P = len(m.ctx_ids)
        seqs = [m.ctx_ids + r.tolist() + m.suffix_ids for r in rows]
        h, _ = self._run(seqs, [0] * len(seqs), None)
        g, j = masked.nonzero(as_tuple=True)
        return self._unembed(h[g.to(h.device), (P + j - shift).to(h.device)])

    def _unembed(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states -> float logits on the CPU, every end-like token (pad, <|eot_id|>...) folded into <eom>:
        here they all mean the same."""
        logits = self.model.logits(h).float().cpu()
        logits[:, self.tok.eom_id] = torch.logsumexp(logits[:, self._ends], dim=-1)
        return logits

    def result(self, m: Middle, t0: float) -> InfillResult:
        res = super().result(m, t0)
        return replace(res, context_tokens=len(m.ctx_ids) + len(m.suffix_ids))


def load(path, device: str = "cpu", config: DecodeConfig = DecodeConfig(), family: Family | None = None):
    """-> (BidirLM, PublishedTokenizer, BidirDecoder) for a published model directory; for DiffusionGemma, its
    own (GemmaLM, PublishedTokenizer, GemmaDecoder) from fim_server/gemma.py (an encoder and a canvas, not one
    sequence)."""
    from fim_server import families

    fam = family or families.detect(path)
    if fam is None:
        raise families.ModelLoadError(f"{path}: a Diffill model, not a published one")
    if fam is families.DIFFUSION_GEMMA:
        from fim_server import gemma

        return gemma.load(path, device=device, config=config)
    hf, tok, _ = families.load(path, fam, device=device)
    lm = BidirLM(hf, fam)
    return lm, tok, BidirDecoder(lm, tok, device=device, config=config)
