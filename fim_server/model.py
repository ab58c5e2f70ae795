"""The fill-in-the-middle masked-diffusion transformer, all of it in this file.

Sequence layout (DESIGN.md): `<fim_suffix> suffix <fim_prefix> prefix <fim_middle> | slot_1 .. slot_M`.
Context tokens (everything up to and including <fim_middle>) attend causally, so their keys/values do not
depend on anything after them and are cached exactly across requests that share a token prefix (a user
typing only appends to the prefix). Middle slots attend to the whole context and bidirectionally to each
other: that block is what the sampler denoises, several tokens per forward pass. This is block diffusion
(Arriola et al. 2025, "Block Diffusion") with a single block, applied to fill-in-the-middle.

The model knows nothing about tokenization or sampling: it maps ids to logits. Heads come in two kinds:
the same tied unembedding serves the diffusion loss on slots (predict the clean token at each masked slot,
unshifted as in LLaDA) and a next-token loss on the causal context (shifted, as an AR model).

Saved as a Hugging Face style directory: config.json + model.safetensors (+ tokenizer.json beside them).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = list[tuple[Tensor, Tensor]]  # per layer: (k, v), each (B, H, T, Dh), RoPE already applied to k


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 8192
    d_model: int = 256  # 256 wide x 6 deep ~ 6.9M params with the tied 8k embedding: fast on 2 CPU cores
    n_layers: int = 6
    n_heads: int = 4  # head dim 64: SDPA's fast paths like it
    d_ff: int = 768  # SwiGLU hidden width (~3x d_model keeps params equal to a 4x GELU MLP... roughly)
    max_seq_len: int = 1024  # trained length; RoPE positions beyond it are untested
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    model_type: str = "diffill-fim-diffusion"

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(d_model=64, n_layers=2, n_heads=2, d_ff=192, max_seq_len=256),  # tests
    "small": ModelConfig(),  # the shipped default
    "base": ModelConfig(d_model=384, n_layers=8, n_heads=6, d_ff=1024),  # ~20M: for a GPU-trained upgrade
}


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(cfg: ModelConfig, positions: Tensor) -> tuple[Tensor, Tensor]:
    """cos/sin for positions (B, T) -> each (B, 1, T, Dh/2)."""
    dh = cfg.d_model // cfg.n_heads
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dh, 2, device=positions.device, dtype=torch.float32) / dh))
    ang = positions.float()[..., None] * inv  # (B, T, Dh/2)
    return ang.cos()[:, None], ang.sin()[:, None]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, Dh/2) each: rotate-half convention
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.gate_up = nn.Linear(cfg.d_model, 2 * cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, past: tuple[Tensor, Tensor] | None,
                mask: Tensor | None, causal: bool) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        B, T, D = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(B, T, 3, self.n_heads, D // self.n_heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, D))
        gate, up = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        x = x + self.down(F.silu(gate) * up)
        return x, (k, v)


class FIMDiffusionModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def init_weights(self, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 if name.endswith(("embed.weight", "qkv.weight", "gate_up.weight")) else \
                    0.02 / math.sqrt(2 * self.cfg.n_layers)  # residual projections scaled down (GPT-2)
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * std)

    def hidden(self, ids: Tensor, positions: Tensor, past: KV | None = None, mask: Tensor | None = None,
               causal: bool = False) -> tuple[Tensor, KV]:
        """ids, positions: (B, T). mask: bool (B, 1, T, T_past + T), True = may attend. -> (B, T, D), new KV."""
        cos, sin = rope_tables(self.cfg, positions)
        x = self.embed(ids)
        kv: KV = []
        for i, blk in enumerate(self.blocks):
            x, layer_kv = blk(x, cos, sin, None if past is None else past[i], mask, causal)
            kv.append(layer_kv)
        return self.norm(x), kv

    def logits(self, h: Tensor) -> Tensor:
        """Tied unembedding. Call it only on the positions you need (masked slots): V is the widest dim."""
        return h @ self.embed.weight.T

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- inference helpers: the two passes the engine makes -------------------------------------------
    @torch.inference_mode()
    def prefill(self, ids: Tensor, past: KV | None = None) -> KV:
        """Extend a cached causal context by `ids` (1, T). Returns the full context KV (1, H, T_past + T, Dh)."""
        t0 = 0 if past is None else past[0][0].shape[2]
        pos = torch.arange(t0, t0 + ids.shape[1], device=ids.device)[None]
        if past is None:
            _, kv = self.hidden(ids, pos, causal=True)
            return kv
        T = ids.shape[1]
        # new tokens see all of the past and causally each other
        mask = torch.ones(T, t0 + T, dtype=torch.bool, device=ids.device)
        mask[:, t0:] = torch.tril(mask[:, t0:])
        _, kv = self.hidden(ids, pos, past=past, mask=mask[None, None])
        return kv

    @torch.inference_mode()
    def prefill_with_slots(self, ids: Tensor, slots: Tensor, past: KV | None = None) -> tuple[KV, Tensor]:
        """`prefill` and the first denoising pass in one forward: `ids` (1, T) extend the cached context
        causally, and the middle's `slots` (1, M) after them see all of it and each other. -> (the context's
        KV, exactly as `prefill` gives it: no context row sees a slot; the slots' hidden states (1, M, D)).
        One pass fewer per request: on 2 CPU cores a pass over 8 slots costs about as much as prefilling
        ~40 tokens, most of it reading every weight once (bench/RESULTS.md, "Cold requests")."""
        t0 = 0 if past is None else past[0][0].shape[2]
        T, M = ids.shape[1], slots.shape[1]
        pos = torch.arange(t0, t0 + T + M, device=ids.device)[None]
        mask = torch.ones(T + M, t0 + T + M, dtype=torch.bool, device=ids.device)
        mask[:T, t0:] = torch.tril(mask[:T, t0:])  # context rows: causal, so they never see a slot
        h, kv = self.hidden(torch.cat([ids, slots], dim=1), pos, past=past, mask=mask[None, None])
        return [(k[:, :, : t0 + T], v[:, :, : t0 + T]) for k, v in kv], h[:, T:]

    @torch.inference_mode()
    def denoise_hidden(self, slots: Tensor, positions: Tensor, ctx: KV, mask: Tensor) -> Tensor:
        """One denoising pass over the middle block. slots, positions: (B, M); ctx: per-layer (B, H, T, Dh);
        mask: (B, 1, M, T + M). Returns hidden states (B, M, D); the context KV is left untouched."""
        h, _ = self.hidden(slots, positions, past=ctx, mask=mask)
        return h

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(asdict(self.cfg), indent=1) + "\n")
        sd = {k: v.detach().to(dtype).contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> FIMDiffusionModel:
        from safetensors.torch import load_file

        path = Path(path)
        cfg = ModelConfig.from_dict(json.loads((path / "config.json").read_text()))
        with torch.device("meta"):
            model = cls(cfg)
        sd = load_file(str(path / "model.safetensors"), device="cpu")
        model.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True)
        return model.to(device).eval()


def context_slot_mask(ctx_lens: Tensor, slot_lens: Tensor, t_ctx: int, m: int) -> Tensor:
    """Attention mask for a batch of middle blocks over right-padded contexts.

    ctx_lens, slot_lens: (B,) valid lengths; t_ctx, m: padded sizes. -> bool (B, 1, m, t_ctx + m): a slot
    sees its own context and every live slot of its own middle (bidirectional). Padded slot rows see
    themselves only, so no row is empty (an all-False row would give NaN in SDPA).
    """
    B = ctx_lens.shape[0]
    j = torch.arange(t_ctx + m, device=ctx_lens.device)
    ctx_ok = j[None, :] < ctx_lens[:, None]
    slot_ok = (j[None, :] >= t_ctx) & (j[None, :] - t_ctx < slot_lens[:, None])
    keys = (ctx_ok | slot_ok)[:, None, :].expand(B, m, t_ctx + m).clone()
    rows = torch.arange(m, device=ctx_lens.device)
    dead = rows[None, :] >= slot_lens[:, None]  # (B, m)
    keys[dead] = False
    eye = torch.zeros(m, t_ctx + m, dtype=torch.bool, device=ctx_lens.device)
    eye[rows, t_ctx + rows] = True
    keys |= eye[None] & dead[:, :, None]
    return keys[:, None]


def training_mask(slot_starts: Tensor, lengths: Tensor, L: int) -> Tensor:
    """Mask for full training sequences `[context | slots | pad]`, bool (B, 1, L, L).

    Context rows (i < S) are causal; slot rows (S <= i < len) see all context and all slots; padding
    keys are hidden; padding rows see themselves only.
    """
    i = torch.arange(L, device=slot_starts.device)
    S, n = slot_starts[:, None, None], lengths[:, None, None]
    qi, kj = i[None, :, None], i[None, None, :]
    m = ((kj <= qi) | ((qi >= S) & (kj >= S))) & (kj < n)
    m = m | ((qi >= n) & (kj == qi))
    return m[:, None]
