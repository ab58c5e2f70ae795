"""Which model shapes fit the CPU latency target: the model alone, random weights, on this machine.

Why: the next training run (docs/model.md, "The next run") should use the largest shape that still answers a
cold single-line request in under 60 ms p50 on 2 cores, and whose fp16 weights fit the repository's 24 MiB.
The engine adds its own ~10 ms (tokenizing, sampling, the syntax check) to what is timed here, so a shape
needs to be well under 60 ms in this bench.

Timed per shape (medians of `--n` runs after a warm-up, the shapes taking turns): a cold request's model
work as the engine does it today, a 200-token context prefilled together with the first pass over 8 slots
(the engine's cold window gives ~200 tokens on the held-out files) and 3 more passes (single-line answers
take ~4.5 passes), each with the unembedding of its slots; and one pass alone. Weights are random: the time
does not depend on them.

Run: `python bench/model_shapes.py [--n 30] [--out bench/results/model_shapes.json]`
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402

CONTEXT, SLOTS, PASSES = 200, 8, 4


def shapes():
    from fim_server.model import PRESETS, ModelConfig

    return {
        "small (shipped: d256 x 6)": PRESETS["small"],
        "d256 x 8": ModelConfig(d_model=256, n_layers=8, n_heads=4, d_ff=768, max_seq_len=512),
        "d320 x 6": ModelConfig(d_model=320, n_layers=6, n_heads=5, d_ff=960, max_seq_len=512),
        "d384 x 6": ModelConfig(d_model=384, n_layers=6, n_heads=6, d_ff=1024, max_seq_len=512),
        "base (d384 x 8)": PRESETS["base"],
    }


def medians_ms(fns: list, n: int) -> list[float]:
    """Each function timed n times, round robin (this machine's speed drifts within minutes: timing one
    shape after another would compare different minutes)."""
    for fn in fns:
        for _ in range(4):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [round(statistics.median(ts) * 1000, 1) for ts in times]


def main() -> None:
    import torch

    from fim_server.model import FIMDiffusionModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the engine uses every core)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "model_shapes.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows, fns = [], []
    with torch.inference_mode():
        for name, cfg in shapes().items():
            m = FIMDiffusionModel(cfg)
            m.init_weights()
            m.eval()
            ids = torch.randint(0, cfg.vocab_size, (1, CONTEXT))
            slots = torch.full((1, SLOTS), 5)
            pos = torch.arange(CONTEXT, CONTEXT + SLOTS)[None]
            kv, _ = m.prefill_with_slots(ids, slots)

            def one_pass(m=m, slots=slots, pos=pos, kv=kv):
                m.logits(m.denoise_hidden(slots, pos, kv, None)[0])

            def cold(m=m, ids=ids, slots=slots, pos=pos):
                ctx, h = m.prefill_with_slots(ids, slots)
                m.logits(h[0])
                for _ in range(PASSES - 1):
                    m.logits(m.denoise_hidden(slots, pos, ctx, None)[0])

            fns += [cold, one_pass]
            rows.append({"shape": name, "params_m": round(m.num_params() / 1e6, 2),
                         "fp16_mib": round(m.num_params() * 2 / 2**20, 1),
                         **{k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads", "d_ff")}})
        ms = medians_ms(fns, a.n)
    for i, row in enumerate(rows):
        row["cold_ms"], row["pass_ms"] = ms[2 * i], ms[2 * i + 1]
        print(row, flush=True)
    write_results({"context_tokens": CONTEXT, "slots": SLOTS, "passes": PASSES, "threads": a.threads,
                   "shapes": rows}, a.out, "model_shapes.py")


if __name__ == "__main__":
    main()
