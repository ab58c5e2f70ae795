"""Train the fill-in-the-middle diffusion model (CPU smoke runs and CUDA runs, bf16 + torch.compile there).

Objective, per example (a window of one source file cut into prefix | middle | suffix):
- diffusion loss on the middle slots (LLaDA, Nie et al. 2025, eq. 3): t ~ U(0, 1), each slot masked with
  probability t, cross-entropy on masked slots weighted 1/t, averaged over slots. Slots hold the middle's
  tokens then <eom> padding to a bucket size, so the model learns where the middle ends; sometimes the
  middle is longer than the slots (no <eom>): the model learns to keep going, which the sampler's
  extension relies on.
- next-token loss on the causal context (weight `ar_weight`): the context is an ordinary causal LM, and
  training it as one is nearly free.

`--objective ar` trains the autoregressive baseline instead (fim_server/train/ar.py): the same transformer, the
same examples and token stream, the middle written after the context as `middle <eom>` and every position
trained with next-token loss under a plain causal mask; exported with `model_type: diffill-fim-ar`.

Middles are the kinds users meet: the rest of a line (cursor mid-line or at its end, often empty once the
line is done), several lines from a cursor, whole lines (a statement or an indented block with the line
that closes its bracket, or any k lines) as the editor's multi-line edits ask for them, and random
character spans. Whole-line middles come in two layouts, half each: from the end of the line before them
("\n" + the lines), the way lsp/edits.py places rewrite and complete-block regions, and from column 0 (the
prefix ends with the newline), the way HumanEval-infilling masks lines. The byte-level BPE merges a newline
with the indentation after it, so the two layouts start with different token sequences and each must be
seen in training. Nothing here is Python-only: the same cuts serve JavaScript/TypeScript files.

`--multi-file P`: that share of examples also carries workspace chunks first in its context, in exactly the
layout and ranking the language server sends as `extra` (fim_server/shared/workspace.py, extra_ids): other
files of the same package directory and parts of the same file outside the window, within half the room.

Writes checkpoints (resumable) and `log.jsonl` (train loss, held-out loss) into --out; `--export DIR`
writes the Hugging Face style model directory that `diffill --model` loads.

Run: `python -m fim_server.train.train --corpus data/corpus --tokenizer PATH --out runs/x --steps N`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fim_server.context import extra_ids
from fim_server.model import PRESETS, FIMDiffusionModel, training_mask
from fim_server.shared.workspace import WorkspaceIndex
from fim_server.tokenizer import Tokenizer
from fim_server.train.corpus import iter_docs

SLOT_BUCKETS = (8, 16, 32, 64, 128)
GROUP_FILES = 32  # files of one directory indexed together for workspace chunks (`--multi-file`)
GROUP_CACHE = 64  # directory indexes a loader worker keeps
PARSED_CACHE = 4096  # files whose parsed chunks a loader worker keeps (~2 KB of text each, and their terms)
T_MIN = 0.05


@dataclass(frozen=True)
class TrainConfig:
    seq_len: int = 512  # context + slots; inference contexts of 1-2 KB of code fit
    batch_size: int = 64
    lr: float = 1e-3  # swept 1e-3 vs 3e-3 on the GPU (runs/sweep): 1e-3 reached lower held-out loss
    min_lr_ratio: float = 0.1
    warmup: int = 200
    weight_decay: float = 0.1
    ar_weight: float = 1.0  # swept 0.5 vs 1.0: 1.0 was better on both held-out losses
    # loss weight of the padding slots (the <eom>s after the first one). At 1 most of a short middle's slots
    # teach "<eom> here", and the shipped model answers <eom> early and often (bench/RESULTS.md); below 1 the
    # first <eom> (where the middle ends) keeps its full weight and the padding counts less. Not yet tried on
    # a GPU run: docs/model.md, "The next run"
    pad_weight: float = 1.0
    steps: int = 2000
    eval_every: int = 250
    seed: int = 0


# ---- examples ------------------------------------------------------------------------------------------
_SPACES = np.array([c for c in range(0x3001) if chr(c).isspace()], dtype=np.uint32)  # str.isspace's set


class SpanEncoder:
    """The ids `tok.encode(text[a:b])` gives, for many spans of one text, with the text encoded once.

    Why: the loader was the limit of the GPU run (docs/model.md, "Training": 14 workers fed 2.1M tokens/s,
    7 workers half that), and 83% of a worker's time went to encoding each example's ~2.5 KB window anew.
    Here only the ends of a span are encoded again: the text's own tokens are reused between two "firm"
    boundaries, `margin` characters or more inside the span. A firm boundary is a token start where a
    non-space character is followed by whitespace: byte-level BPE never merges across a pre-token, and
    there the pre-token before it ends whether or not the text goes on (a cut after "\n\n" before "/" is not
    firm: the two newlines are one pre-token at the end of a string, two inside one), while the one after
    it starts afresh in both. Checked against `tok.encode` on real files (tests/test_train.py). Arrays, not
    lists, so that data-loader workers forked after `many` share the memory instead of copying it."""

    def __init__(self, tok: Tokenizer, text: str, ids: list[int], offsets: list[tuple[int, int]], margin: int = 32):
        self.tok, self.text, self.margin = tok, text, margin
        self.ids = np.asarray(ids, dtype=np.int32)
        off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        space = np.isin(cp, _SPACES)
        start = off[1:, 0]
        ok = (start == off[:-1, 1]) & (start > 0) & (start < len(cp))
        firm = np.zeros_like(ok)
        firm[ok] = space[start[ok]] & ~space[start[ok] - 1]
        self.firm = (np.nonzero(firm)[0] + 1).astype(np.int32)  # token indices starting at a firm boundary
        self.at = off[self.firm, 0].astype(np.int32)  # ... and the character offsets where they start

    @classmethod
    def many(cls, tok: Tokenizer, texts: list[str], chunk: int = 256) -> list[SpanEncoder]:
        """One per text, encoded in batches (the tokenizer runs each on every core) of `chunk` texts: the
        tokenizer's own per-token objects for a whole corpus at once took 13 GB for 44.5M tokens."""
        out = []
        for k in range(0, len(texts), chunk):
            part = texts[k: k + chunk]
            out += [cls(tok, t, ids, off) for t, (ids, off) in zip(part, tok.encode_offsets_batch(part))]
        return out

    def encode(self, a: int, b: int) -> list[int]:
        enc = self.tok.encode
        k0 = int(np.searchsorted(self.at, a + self.margin, side="left"))
        k1 = int(np.searchsorted(self.at, b - self.margin, side="right")) - 1
        if k1 <= k0:  # a short span: nothing worth reusing
            return enc(self.text[a:b])
        s, e = int(self.at[k0]), int(self.at[k1])
        return enc(self.text[a:s]) + self.ids[self.firm[k0]: self.firm[k1]].tolist() + enc(self.text[e:b])


def split_window(text: str, rng: random.Random, window_chars: int) -> tuple[str, str, str]:
    """Choose a window of the file and a (prefix, middle, suffix) cut of the kinds users meet."""
    return _split_window(text, rng, window_chars)[1:]


def _split_window(text: str, rng: random.Random, window_chars: int) -> tuple[int, str, str, str]:
    """split_window, and where the window starts in `text`."""
    start = 0
    if len(text) > window_chars:
        start = rng.randrange(0, len(text) - window_chars)
        nl = text.rfind("\n", 0, start)
        start = nl + 1 if nl >= 0 and start - nl < 200 else start
        text = text[start:start + window_chars]
    lines = text.split("\n")
    if len(lines) < 2:
        a = rng.randrange(0, len(text) + 1)
        b = min(len(text), a + rng.randint(0, 60))
        return start, text[:a], text[a:b], text[b:]
    li = rng.randrange(0, len(lines))
    line_start = sum(len(x) + 1 for x in lines[:li])
    line = lines[li]
    kind = rng.random()
    if kind < 0.35:  # rest of the line; 1 in 4 with the cursor already at the end (empty middle)
        cut = len(line) if rng.random() < 0.25 else rng.randint(len(line) - len(line.lstrip()), len(line))
        a, b = line_start + cut, line_start + len(line)
    elif kind < 0.6:  # from a cursor in a line to the end of k lines
        k = rng.choice((1, 2, 3, 4, 6, 8, 12))
        cut = rng.randint(len(line) - len(line.lstrip()), len(line))
        end_line = min(len(lines) - 1, li + k)
        a = line_start + cut
        b = sum(len(x) + 1 for x in lines[:end_line]) + len(lines[end_line])
    elif kind < 0.85 and li > 0:  # whole lines li..end, from the end of the line before or from column 0
        end_line = block_end(lines, li) if rng.random() < 0.5 else \
            min(len(lines) - 1, li + rng.choice((0, 1, 2, 3, 5, 7, 11)))
        a = line_start - 1 if rng.random() < 0.5 else line_start
        b = sum(len(x) + 1 for x in lines[:end_line]) + len(lines[end_line])
    else:  # random character span
        a = rng.randrange(0, len(text) + 1)
        b = min(len(text), a + int(rng.expovariate(1 / 60)))
    return start, text[:a], text[a:b], text[b:]


def block_end(lines: list[str], li: int) -> int:
    """Last line of the statement or indented block that starts at line li: the lines after it that are
    blank or indented deeper (a proxy for the syntax tree that needs no parser in the data loader), and the
    line at li's indentation that closes it with a bracket (JavaScript's `}` / `});`, Python's `)` of a call
    split over lines): without it the middle is unbalanced and the statement not whole. A closing line that
    opens again (`} else {`, `} catch (e) {`) continues the statement."""
    indent = len(lines[li]) - len(lines[li].lstrip())
    end = li
    for j in range(li + 1, min(len(lines), li + 40)):
        ln = lines[j]
        if not ln.strip():
            continue
        if len(ln) - len(ln.lstrip()) <= indent:
            if len(ln) - len(ln.lstrip()) == indent and ln.lstrip().startswith((")", "]", "}")):
                end = j
                if ln.rstrip().endswith(("(", "[", "{")):
                    continue
            break
        end = j
    return end


def make_example(text: str, tok: Tokenizer, rng: random.Random, seq_len: int, ar: bool = False,
                 related=None, spans: SpanEncoder | None = None):
    """-> (ids[seq_len], slot_start, length) with the slots holding the clean targets. With `ar` the middle
    follows the context as `middle <eom>` (the autoregressive baseline's layout; no padding slots).
    `related(cursor, (window start, end))` -> workspace chunks (`ExtraChunk`s) for this cut of `text`: they go
    first, as the engine places a request's `extra` (fim_server.context.extra_ids), within half the room.
    `spans`: `text` encoded once (SpanEncoder), for speed; the example is the same without it."""
    start, prefix, middle, suffix = _split_window(text, rng, window_chars=seq_len * 5)
    chunks = ()
    if related is not None:
        end = start + len(prefix) + len(middle) + len(suffix)
        chunks = related(start + len(prefix), (start, end))
    if spans is not None:  # `text` encoded once: the same ids as the three parts encoded one by one
        b = start + len(prefix)
        c = b + len(middle)
        p_ids, m_ids, s_ids = spans.encode(start, b), spans.encode(b, c), spans.encode(c, c + len(suffix))
    else:
        p_ids, m_ids, s_ids = tok.encode_batch([prefix, middle, suffix])
    need = len(m_ids) + 1
    # The slot count must not give the middle's length away: at inference the engine does not know it and
    # starts from a fixed block. So any bucket that fits is equally likely (a model trained on the tightest
    # bucket fills 32 slots with 20 tokens of junk where the answer was 5). Sometimes the slots end right
    # after the <eom> (the sampler drops slots after a committed <eom>), and sometimes the middle does not
    # fit at all (no <eom>: the model learns to keep going, which the sampler's extension relies on).
    r = rng.random()
    fits = [b for b in SLOT_BUCKETS if b >= need] or [SLOT_BUCKETS[-1]]
    if r < 0.1 and need > SLOT_BUCKETS[0]:
        bucket = rng.choice([b for b in SLOT_BUCKETS if b < need])
    elif r < 0.3:
        bucket = min(SLOT_BUCKETS[-1], need + rng.randint(0, 3))
    else:
        bucket = rng.choice(fits)
    targets = (m_ids + [tok.eom_id] * bucket)[:bucket]
    if ar:  # the same token budget for the middle, written once and ended by one <eom>
        bucket = min(need, SLOT_BUCKETS[-1])
        targets = (m_ids[: bucket - 1] + [tok.eom_id]) if need <= SLOT_BUCKETS[-1] else m_ids[:bucket]
    x_ids = extra_ids(tok, chunks, (seq_len - 3 - bucket) // 2, tok.file_sep_id) if chunks else []
    budget = seq_len - 3 - bucket - len(x_ids)
    s_keep = min(len(s_ids), max(budget // 4, budget - len(p_ids)), int(budget * rng.uniform(0.1, 0.6)) +
                 max(0, budget - len(p_ids) - len(s_ids)))
    s_keep = max(0, min(s_keep, budget))
    p_keep = min(len(p_ids), budget - s_keep)
    ctx = x_ids + [tok.suffix_id] + s_ids[:s_keep] + [tok.prefix_id] + p_ids[len(p_ids) - p_keep:] + [tok.middle_id]
    ids = ctx + targets
    n = len(ids)
    return ids + [tok.pad_id] * (seq_len - n), len(ctx), n


class ExampleStream(torch.utils.data.IterableDataset):
    """Endless batches of examples from `texts`. With `multi_file` > 0 and `groups` (one key per text: its
    package and directory), that share of examples also carries workspace chunks: the other files of the
    group, and the parts of the same file outside the window, ranked for the cut's cursor by the language
    server's own index (fim_server/shared/workspace.py), so the model learns the context it will be sent."""

    def __init__(self, texts: list[str], tok_path: str, seq_len: int, batch_size: int, seed: int, ar: bool = False,
                 groups: list[str] | None = None, multi_file: float = 0.0, encode_once: bool = True):
        self.texts, self.tok_path, self.seq_len, self.bs, self.seed = texts, tok_path, seq_len, batch_size, seed
        # every text encoded here, once, before the workers fork (they share it); without it each example's
        # window is encoded anew (the same examples, several times slower: docs/model.md, "Training")
        self.spans = SpanEncoder.many(Tokenizer.from_file(tok_path), texts) if encode_once else None
        self.ar = ar
        # sample files in proportion to their length (capped), so big files are not over-weighted
        self.weights = [min(len(t), 20_000) for t in texts]
        self.multi_file = multi_file if groups is not None else 0.0
        self.members: dict[str, list[int]] = {}
        for i, g in enumerate(groups or []):
            self.members.setdefault(g, []).append(i)
        self.groups = groups

    def _related(self, i: int, indexes: OrderedDict, rng: random.Random, parsed: OrderedDict):
        """The `related` callback of make_example for text i: its group's index (built once per worker, the
        last GROUP_CACHE kept; each file's chunks parsed once, the last PARSED_CACHE kept, since parsing was
        60% of building an index), collecting what a `contextTokens` of half the window would send."""
        g = self.groups[i]
        idx = indexes.get(g)

        def add(j: int) -> None:
            uri = f"file:///{j}"
            chunks = parsed.get(j)
            if chunks is None:
                chunks = parsed[j] = idx.chunk(uri, self.texts[j])
                while len(parsed) > PARSED_CACHE:
                    parsed.popitem(last=False)
            else:
                parsed.move_to_end(j)
            idx.add(uri, chunks)

        if idx is None:
            members = self.members[g]
            if len(members) > GROUP_FILES:  # big directories: the file itself and a sample of the others
                members = [i] + rng.sample([j for j in members if j != i], GROUP_FILES - 1)
            idx = WorkspaceIndex()
            for j in members:
                add(j)
            indexes[g] = idx
            while len(indexes) > GROUP_CACHE:
                indexes.popitem(last=False)
        else:
            indexes.move_to_end(g)
        if f"file:///{i}" not in idx.chunks:
            add(i)
        budget_chars = self.seq_len // 2 * 3
        text = self.texts[i]
        return lambda cursor, window: idx.collect(f"file:///{i}", text, cursor, window, budget_chars)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid = 0 if info is None else info.id
        rng = random.Random(self.seed * 1000 + wid)
        tok = Tokenizer.from_file(self.tok_path)
        indexes: OrderedDict = OrderedDict()
        parsed: OrderedDict = OrderedDict()
        order = range(len(self.texts))
        while True:
            batch = []
            for i in rng.choices(order, weights=self.weights, k=self.bs):
                related = self._related(i, indexes, rng, parsed) if rng.random() < self.multi_file else None
                spans = None if self.spans is None else self.spans[i]
                batch.append(make_example(self.texts[i], tok, rng, self.seq_len, self.ar, related, spans))
            ids = torch.tensor([b[0] for b in batch], dtype=torch.long)
            yield ids, torch.tensor([b[1] for b in batch]), torch.tensor([b[2] for b in batch])


# ---- loss ------------------------------------------------------------------------------------------------
def fim_diffusion_loss(model: FIMDiffusionModel, ids, slot_start, length, mask_id: int, gen: torch.Generator,
                       ar_weight: float, eom_id: int = -1, pad_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """ids (B, L) clean; slot_start, length (B,). Returns (loss, parts). Slots holding an `eom_id` after the
    first one (padding) weigh `pad_weight` in the diffusion loss."""
    B, L = ids.shape
    dev = ids.device
    pos = torch.arange(L, device=dev)[None].expand(B, L)
    is_slot = (pos >= slot_start[:, None]) & (pos < length[:, None])  # (B, L)
    # masking rate per example: stratified over the batch (low-discrepancy, as in MDLM, Sahoo et al. 2024)
    # and kept >= T_MIN, because the 1/t weight of rare tiny-t draws otherwise dominates the gradient's
    # variance and starves everything else (measured: held-out next-token loss stalled near 4.8 nats).
    u = (torch.arange(B, device=dev) + torch.rand(1, device=dev, generator=gen)) / B
    t = (T_MIN + (1 - T_MIN) * u)[torch.randperm(B, device=dev, generator=gen)][:, None]  # (B, 1)
    masked = is_slot & (torch.rand(B, L, device=dev, generator=gen) < t)
    # at least one masked slot per example: mask the first slot when the draw masked none
    none = ~masked.any(1, keepdim=True)
    masked = masked | (none & (pos == slot_start[:, None]))
    noisy = torch.where(masked, torch.full_like(ids, mask_id), ids)
    h, _ = model.hidden(noisy, pos, mask=training_mask(slot_start, length, L))
    # Dense logits over every position: no boolean indexing, so torch.compile sees static shapes.
    logits = model.logits(h).float()  # (B, L, V)
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V), ids.reshape(-1), reduction="none").view(B, L)
    # diffusion loss: masked slots only, 1/t weighted, normalised by slot count (LLaDA eq. 3); padding slots
    # (every <eom> after the first) weighted by pad_weight
    n_slots = (length - slot_start).float()
    eom = is_slot & (ids == eom_id)
    weight = torch.where(eom & (eom.cumsum(1) > 1), pad_weight, 1.0)
    diff = ((ce * masked * weight / t).sum(1) / n_slots).mean()
    masked_ce = (ce * masked).sum() / masked.sum()
    # next-token loss on the causal context: position p predicts token p+1, for p + 1 < slot_start
    ar_q = (pos < (slot_start[:, None] - 1))[:, :-1]
    ce_ar = F.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none").view(B, L - 1)
    ar = (ce_ar * ar_q).sum() / ar_q.sum().clamp_min(1)
    return diff + ar_weight * ar, {"diff": diff.detach(), "ar": ar.detach(), "masked_ce": masked_ce.detach()}


def ar_loss(model: FIMDiffusionModel, ids, slot_start, length, mask_id: int, gen: torch.Generator,
            ar_weight: float, eom_id: int = -1, pad_weight: float = 1.0) -> tuple[torch.Tensor, dict]:
    """The autoregressive baseline's loss: next-token cross-entropy at every position of `context middle
    <eom>` under a causal mask (same signature as fim_diffusion_loss; mask_id, gen, ar_weight, eom_id and
    pad_weight unused: its middle has no padding).
    Parts: `ar` on the context (comparable to the diffusion run's), `mid` on the middle and its <eom>."""
    B, L = ids.shape
    pos = torch.arange(L, device=ids.device)[None].expand(B, L)
    h, _ = model.hidden(ids, pos, causal=True)  # padding sits after every real token: causally unseen
    logits = model.logits(h[:, :-1]).float()  # (B, L-1, V): position p predicts p+1
    V = logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none").view(B, L - 1)
    q = pos[:, :-1]
    real = q + 1 < length[:, None]
    ctx = real & (q + 1 < slot_start[:, None])
    mid = real & ~ctx
    loss = (ce * real).sum() / real.sum()
    return loss, {"ar": ((ce * ctx).sum() / ctx.sum().clamp_min(1)).detach(),
                  "mid": ((ce * mid).sum() / mid.sum().clamp_min(1)).detach()}


# ---- training loop -------------------------------------------------------------------------------------
def lr_at(step: int, tc: TrainConfig, progress: float | None = None) -> float:
    """Linear warmup, then cosine to min_lr_ratio. `progress` in [0, 1] overrides step-based progress
    (a run bounded by wall-clock time decays on time)."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    p = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    if progress is not None:
        p = min(1.0, max(p, progress))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p)))


def train(args) -> None:
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    tok = Tokenizer.from_file(args.tokenizer)
    cfg = replace(PRESETS[args.preset], vocab_size=tok.vocab_size, max_seq_len=args.seq_len)
    ar = args.objective == "ar"
    if ar:
        from fim_server.train.ar import AR_MODEL_TYPE

        cfg = replace(cfg, model_type=AR_MODEL_TYPE)
    tc = TrainConfig(seq_len=args.seq_len, batch_size=args.batch_size, lr=args.lr, steps=args.steps,
                     eval_every=args.eval_every, seed=args.seed, warmup=min(200, args.steps // 10 + 1),
                     ar_weight=args.ar_weight, pad_weight=args.pad_weight)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    docs = list(iter_docs(Path(args.corpus) / "train.jsonl.gz"))
    held_docs = list(iter_docs(Path(args.corpus) / "heldout.jsonl.gz"))
    texts, groups = [d["text"] for d in docs], [group_of(d) for d in docs]
    held, held_groups = [d["text"] for d in held_docs], [group_of(d) for d in held_docs]
    print(f"{len(texts)} train files, {len(held)} held-out files", flush=True)

    model = FIMDiffusionModel(cfg)
    model.init_weights(args.seed)
    if args.init:  # continue from a model directory's weights (fine-tuning); its shape must match the preset
        init = FIMDiffusionModel.load(args.init)
        if replace(init.cfg, max_seq_len=cfg.max_seq_len, model_type=cfg.model_type) != cfg:
            raise SystemExit(f"--init {args.init}: {init.cfg} does not match the preset {args.preset}: {cfg}")
        model.load_state_dict(init.state_dict())
        print(f"initialised from {args.init}", flush=True)
    model.to(dev)
    print(f"model {args.preset}: {model.num_params() / 1e6:.2f}M params", flush=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.95),
                            fused=dev.type == "cuda")
    step = 0
    ckpt = out / "ckpt.pt"
    if ckpt.exists():
        st = torch.load(ckpt, map_location=dev)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step = st["step"]
        print(f"resumed at step {step}", flush=True)

    eval_fn = ar_loss if ar else fim_diffusion_loss
    loss_fn = eval_fn
    if dev.type == "cuda" and not args.no_compile:
        loss_fn = torch.compile(eval_fn, dynamic=False)
    stream = ExampleStream(texts, args.tokenizer, tc.seq_len, tc.batch_size, tc.seed + step, ar, groups,
                           args.multi_file)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=args.workers,
                                         pin_memory=dev.type == "cuda", prefetch_factor=4 if args.workers else None)
    held_batches = []
    hstream = iter(ExampleStream(held, args.tokenizer, tc.seq_len, tc.batch_size, 12345, ar, held_groups,
                                 args.multi_file))
    for _ in range(args.eval_batches):
        held_batches.append(next(hstream))
    gen = torch.Generator(device=dev).manual_seed(args.seed + step)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    log = open(out / "log.jsonl", "a")
    t0, toks = time.time(), 0
    for ids, ss, ln in loader:
        if step >= tc.steps or (args.time_limit and time.time() - t0 > args.time_limit):
            break
        ids, ss, ln = ids.to(dev, non_blocking=True), ss.to(dev), ln.to(dev)
        prog = (time.time() - t0) / args.time_limit if args.time_limit else None
        lr = lr_at(step, tc, prog)
        for g in opt.param_groups:
            g["lr"] = lr
        with amp:
            loss, parts = loss_fn(model, ids, ss, ln, tok.mask_id, gen, tc.ar_weight, tok.eom_id, tc.pad_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        toks += int(ln.sum())
        if step % 50 == 0:
            el = time.time() - t0
            rec = {"step": step, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}, "lr": lr,
                   "tok_s": toks / el,
                   "elapsed_s": el}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
        if step % tc.eval_every == 0 or step == tc.steps:
            model.eval()
            with torch.no_grad(), amp:
                eg = torch.Generator(device=dev).manual_seed(0)
                hl = [eval_fn(model, a.to(dev), b.to(dev), c.to(dev), tok.mask_id, eg, tc.ar_weight, tok.eom_id,
                              tc.pad_weight)[1]
                      for a, b, c in held_batches]
            model.train()
            rec = {"step": step, **{f"heldout_{k}": sum(h[k].item() for h in hl) / len(hl) for k in hl[0]}}
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                        "cfg": asdict(cfg), "train": asdict(tc)}, ckpt)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "cfg": asdict(cfg),
                "train": asdict(tc)}, ckpt)
    log.write(json.dumps({"done": step, "tokens": toks, "elapsed_s": time.time() - t0}) + "\n")
    log.close()
    if args.export:
        export(model, tok, Path(args.export))
    print(f"done: {step} steps, {toks / 1e6:.1f}M tokens, {time.time() - t0:.0f}s", flush=True)


def group_of(doc: dict) -> str:
    """Files that are related for workspace chunks: the same package and directory."""
    return f"{doc.get('package', '')}/{Path(doc.get('path', '')).parent.as_posix()}"


def export(model: FIMDiffusionModel, tok: Tokenizer, path: Path) -> None:
    model.float().cpu().save(path, dtype=torch.float16)
    tok.save(path / "tokenizer.json")


def main() -> None:
    ap = argparse.ArgumentParser(description="Train the Diffill FIM diffusion model (or its AR baseline)")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--out", default="runs/default")
    ap.add_argument("--export", default=None, help="write the model directory here when done")
    ap.add_argument("--init", default=None, help="start from this model directory's weights (fine-tune)")
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--objective", default="diffusion", choices=("diffusion", "ar"),
                    help="ar: the autoregressive baseline (same data and budget, left-to-right middle)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--time-limit", type=float, default=0, help="stop after this many seconds (0 = none)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ar-weight", type=float, default=1.0)
    ap.add_argument("--pad-weight", type=float, default=1.0,
                    help="loss weight of padding slots (the <eom>s after the first); see TrainConfig")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--multi-file", type=float, default=0.0, metavar="P",
                    help="share of examples that carry workspace chunks (other files of the same directory, "
                         "ranked as the language server ranks them) before their context; 0 = single files")
    ap.add_argument("--no-compile", action="store_true")
    train(ap.parse_args())


if __name__ == "__main__":
    main()
