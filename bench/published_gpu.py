"""A 7B-shaped model of the Dream family (Qwen2.5-7B's shape, random weights, bf16) served by Diffill's engine on a
GPU, against autoregressive decoding of the same weights with a KV cache (issue: "Serve the published diffusion
code models").

    python bench/published_gpu.py                      # on a CUDA machine: the 7B shape
    python bench/published_gpu.py --shape tiny --device cpu --runs 1 --quick   # CI's smoke run of the same code

Random weights say nothing about quality, nor about how many tokens a real checkpoint commits per pass (its
confidence decides that; random logits are flat). So the middle's length is fixed (no end token can win) and the
passes are set with the `steps` knob: 64 tokens in 64, 16 or 8 passes = 1, 4 or 8 tokens per pass, the range
Fast-dLLM reports for threshold decoding on Dream/LLaDA (arXiv:2505.22618). What is measured is the cost of
those passes on this GPU, whole and with the approximate context cache (`kv_refresh`), at batch 1 and with
concurrent requests batched by the engine, and the autoregressive loop's cost for the same tokens.

Anchors printed beside the table, not measured here: Mercury Coder Mini 1,109 tok/s and Small 737 tok/s on an
H100 (arXiv:2506.17298, table 1); Fast-dLLM found short outputs (20-30 tokens) gain little from parallel
decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import pct, write_results  # noqa: E402

SHAPES = {  # Qwen2.5-7B (Dream-v0 / Dream-Coder / DiffuCoder 7B are this shape)
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, rope_theta=1e6),
    "tiny": dict(vocab_size=8192, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6),
}


def build(shape: str, device: str, dtype: torch.dtype):
    """A Qwen2 causal-LM module of `shape` with random weights on `device` (no file: 15 GB of random bf16
    would only be read back)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(tie_word_embeddings=False, rms_norm_eps=1e-6, **SHAPES[shape])
    with torch.device("meta"):
        model = Qwen2ForCausalLM(cfg).to(dtype)
    model = model.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def tokenizer():
    """Diffill's own tokenizer file in a published model's clothes: mask and end tokens by name."""
    from tokenizers import Tokenizer as HFTok

    from fim_server.families import PublishedTokenizer
    from fim_server.shared.paths import DEFAULT_MODEL

    tk = HFTok.from_file(str(DEFAULT_MODEL / "tokenizer.json"))
    ids = {n: tk.token_to_id(n) for n in ("<|mask|>", "<|eom|>", "<|pad|>")}
    return PublishedTokenizer(tk, mask_id=ids["<|mask|>"], eom_id=ids["<|eom|>"], end_ids=frozenset({ids["<|eom|>"]}),
                              bos_id=None, pad_id=ids["<|pad|>"], special_ids=frozenset(ids.values()))


def context(tok, prefix_tokens: int, suffix_tokens: int) -> tuple[str, str]:
    """A prefix and a suffix of about these many tokens, cut from a real file around a line start."""
    import inspect

    import fim_server.engine as src

    text = inspect.getsource(src) * 4
    ids = tok.encode(text)
    cut = len(ids) // 2
    return tok.decode(ids[cut - prefix_tokens: cut]), tok.decode(ids[cut: cut + suffix_tokens])


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


async def timed_infills(engine, reqs) -> list[float]:
    t0 = time.perf_counter()
    res = await asyncio.gather(*(engine.infill(r) for r in reqs))
    sync(engine.device)
    return [time.perf_counter() - t0, *(r.ms for r in res)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--prefix-tokens", type=int, default=768)
    ap.add_argument("--suffix-tokens", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="one size of each measurement (the CI smoke run)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "published_gpu.json")
    a = ap.parse_args()
    sizes, per_passes, fleet = ((16,), (4,), (1, 4)) if a.quick else ((16, 32, 64), (1, 4, 8), (1, 4, 16, 32))

    from fim_server.bidir import BidirDecoder, BidirLM
    from fim_server.engine import Engine, EngineConfig
    from fim_server.families import DREAM
    from fim_server.shared.protocol import InfillRequest

    dtype = torch.float32 if a.device == "cpu" else torch.bfloat16
    t0 = time.perf_counter()
    hf = build(a.shape, a.device, dtype)
    sync(a.device)
    build_s = time.perf_counter() - t0
    tok = tokenizer()
    lm = BidirLM(hf, DREAM)
    prefix, suffix = context(tok, a.prefix_tokens, a.suffix_tokens)
    res = {"shape": a.shape, "params": lm.num_params(), "dtype": str(dtype), "device": a.device,
           "gpu": torch.cuda.get_device_name() if a.device.startswith("cuda") else None,
           "context_tokens": a.prefix_tokens + a.suffix_tokens, "build_s": round(build_s, 1), "diffusion": [],
           "throughput": [], "autoregressive": []}

    def engine(kv_refresh: int, n: int) -> Engine:
        # no end token can win and no extension: the middle is exactly n slots, denoised in `steps` passes
        cfg = EngineConfig(kv_refresh=kv_refresh, initial_slots=n, eom_threshold=1.01, repair=False, heal="off",
                           threshold=1.01, max_batch=32, max_active=32)
        return Engine(lm, tok, name=f"dream-{a.shape}-random", device=a.device, config=cfg,
                      decoder=BidirDecoder(lm, tok, device=a.device, config=cfg))

    def req(i: int, n: int, steps: int) -> InfillRequest:
        return InfillRequest(id=f"r{i}", prefix=prefix, suffix=suffix, language=None, max_tokens=n, steps=steps)

    async def run_all() -> None:
        for kv_refresh in (0, 4):
            for n in sizes:
                for per_pass in per_passes:
                    steps = max(1, n // per_pass)
                    eng = engine(kv_refresh, n)
                    await eng.infill(req(0, n, steps))  # warm-up (allocator, kernels)
                    ms = [(await timed_infills(eng, [req(i, n, steps)]))[0] * 1000 for i in range(a.runs)]
                    await eng.aclose()
                    row = {"kv_refresh": kv_refresh, "tokens": n, "passes": steps, "p50_ms": pct(ms, 50),
                           "p95_ms": pct(ms, 95), "tok_per_s": round(n / (pct(ms, 50) / 1000), 1)}
                    res["diffusion"].append(row)
                    print(row, flush=True)
            for clients in fleet:
                n, steps = 64, 8
                eng = engine(kv_refresh, n)
                await timed_infills(eng, [req(i, n, steps) for i in range(clients)])  # warm-up
                walls, lat = [], []
                for r in range(max(1, a.runs // 2)):
                    out = await timed_infills(eng, [req(r * 100 + i, n, steps) for i in range(clients)])
                    walls.append(out[0])
                    lat += out[1:]
                await eng.aclose()
                wall = pct(walls, 50)
                row = {"kv_refresh": kv_refresh, "clients": clients, "tokens_each": n, "passes_each": steps,
                       "tok_per_s_total": round(clients * n / wall, 1), "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95)}
                res["throughput"].append(row)
                print(row, flush=True)

    asyncio.run(run_all())

    # the same weights as an autoregressive model: transformers' generate with its KV cache
    ids = torch.tensor([tok.encode(prefix)], device=a.device)
    for cache in ("dynamic", "static"):
        for n in sizes:
            kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_id)
            if cache == "static":
                kw["cache_implementation"] = "static"
            try:
                with torch.inference_mode():
                    hf.generate(ids, **kw)  # warm-up
                    ms = []
                    for _ in range(a.runs):
                        sync(a.device)
                        t = time.perf_counter()
                        hf.generate(ids, **kw)
                        sync(a.device)
                        ms.append((time.perf_counter() - t) * 1000)
            except Exception as e:  # a transformers without this cache kind: say so, keep the rest
                res["autoregressive"].append({"cache": cache, "tokens": n, "error": f"{type(e).__name__}: {e}"})
                continue
            row = {"cache": cache, "tokens": n, "prompt_tokens": ids.shape[1], "p50_ms": pct(ms, 50),
                   "p95_ms": pct(ms, 95), "tok_per_s": round(n / (pct(ms, 50) / 1000), 1)}
            res["autoregressive"].append(row)
            print(row, flush=True)
    res["anchors"] = {"Mercury Coder Mini tok/s (H100, arXiv:2506.17298)": 1109,
                      "Mercury Coder Small tok/s (H100, arXiv:2506.17298)": 737}
    res["target"] = "64-token infill p50 <= 150 ms and >= 1,000 tok/s per request on an H100, ahead of AR"
    write_results(res, a.out, "published_gpu.py")


if __name__ == "__main__":
    main()
