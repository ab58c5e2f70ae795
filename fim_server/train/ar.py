"""The autoregressive baseline: the same transformer trained as a plain causal LM on the same fill-in-the-middle
examples, decoding the middle left to right in the same `<suf> suffix <pre> prefix <mid>` order, one token per
forward pass until <eom>. It exists to measure the diffusion model against (bench/), not to serve users.

Contract: `ARDecoder.load(path)` loads a model directory whose config says `model_type: diffill-fim-ar`;
`await decoder.infill(req)` returns an `InfillResult` like the engine's (same context window, same
tree-sitter trim-then-drop of an invalid answer, so pass@1 compares the models and not the post-processing;
the diffusion engine's re-mask repair has no left-to-right equivalent). `forward_passes` counts the decode
passes (the prefill is not counted, as in the engine). Greedy; one request at a time in a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import torch

from fim_server.context import build_context
from fim_server.model import KV, FIMDiffusionModel
from fim_server.shared.finalize import settle
from fim_server.shared.protocol import InfillRequest, InfillResult
from fim_server.tokenizer import Tokenizer

AR_MODEL_TYPE = "diffill-fim-ar"


@torch.inference_mode()
def prefill(model: FIMDiffusionModel, ids: list[int]) -> tuple[torch.Tensor, KV]:
    """Causal pass over the context. -> (logits of the next token (V,), KV)."""
    x = torch.tensor([ids])
    h, kv = model.hidden(x, torch.arange(len(ids))[None], causal=True)
    return model.logits(h[0, -1]), kv


@torch.inference_mode()
def decode_one_token(model: FIMDiffusionModel, token: int, pos: int, kv: KV) -> tuple[torch.Tensor, KV]:
    """Append one token at position `pos` to the cached sequence. -> (next-token logits (V,), KV)."""
    h, kv = model.hidden(torch.tensor([[token]]), torch.tensor([[pos]]), past=kv, mask=None)
    return model.logits(h[0, -1]), kv


@torch.inference_mode()
def generate(model: FIMDiffusionModel, tok: Tokenizer, ctx: list[int], max_tokens: int) -> tuple[list[int], int]:
    """Greedy left-to-right middle after `ctx`, stopping at <eom>. -> (middle ids, decode passes).
    Only text tokens or <eom> may be produced (the other special tokens are banned, as in the engine)."""
    banned = torch.tensor(sorted(tok.special_ids - {tok.eom_id}))
    logits, kv = prefill(model, ctx)
    out: list[int] = []
    passes = 0
    while True:
        logits[banned] = float("-inf")
        t = int(logits.argmax())
        if t == tok.eom_id or len(out) >= max_tokens:
            return out, passes
        out.append(t)
        if len(out) >= max_tokens:
            return out, passes
        logits, kv = decode_one_token(model, t, len(ctx) + len(out) - 1, kv)
        passes += 1


class ARDecoder:
    def __init__(self, model: FIMDiffusionModel, tokenizer: Tokenizer, *, name: str = "ar"):
        self.model, self.tok, self.model_name = model, tokenizer, name
        self._lock = asyncio.Lock()

    @classmethod
    def load(cls, path: str | Path) -> ARDecoder:
        path = Path(path)
        model = FIMDiffusionModel.load(path)
        if model.cfg.model_type != AR_MODEL_TYPE:
            raise ValueError(f"{path} is a {model.cfg.model_type!r} model, not an autoregressive baseline")
        return cls(model, Tokenizer.from_file(path / "tokenizer.json"), name=path.resolve().name)

    def _infill(self, req: InfillRequest) -> InfillResult:
        t0 = time.perf_counter()
        ctx, truncated, p_win, s_win, _ = build_context(self.tok, req.prefix, req.suffix, req.max_tokens,
                                                     self.model.cfg.max_seq_len)
        ids, passes = generate(self.model, self.tok, ctx, req.max_tokens)
        text, valid, repair = settle(req.language, p_win, self.tok.decode(ids), s_win)
        return InfillResult(id=req.id, text=text, valid=valid, tokens=len(ids), forward_passes=passes,
                            ms=round((time.perf_counter() - t0) * 1000, 2), repair=repair,
                            context_truncated=truncated)

    async def infill(self, req: InfillRequest) -> InfillResult:
        async with self._lock:
            return await asyncio.to_thread(self._infill, req)

    def close(self) -> None:
        pass
