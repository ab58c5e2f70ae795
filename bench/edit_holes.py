"""Filling k holes in one joint edit against k separate infills: forward passes and time (multi-line edits issue).

Cases are cut from real Python files (this interpreter's standard library, a fixed seeded sample): k lines
of one stretch of code each lose the rest of the line after a random cut, and the document is the ~2 KB
around them with those holes empty. For every case the same k holes are filled
- jointly: one `edit` request with k fill regions (every region in the same batched passes), and
- separately: k `infill` requests one after another, each with the same context the joint region has,
with the engine's context cache emptied before each, so neither reuses the other's prefill. Both give the
same text per hole (batching does not change answers; checked and counted here). Reported per k: forward
passes and wall time (median, p95) of each way, and their ratio.

Run: `python bench/edit_holes.py [--n 20] [--ks 1,2,4,8] [--out bench/results/edit_holes.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import pct, write_results  # noqa: E402


def cases(k: int, n: int, seed: int = 0) -> list[tuple[str, list[int], list[str]]]:
    """n documents with k single-line holes each -> (text with the holes empty, hole offsets, truths)."""
    rng = random.Random(seed * 1000 + k)
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    out = []
    while len(out) < n:
        lines = rng.choice(files).read_text("utf-8", errors="replace").split("\n")
        ok = [i for i, ln in enumerate(lines) if ln.startswith("    ") and len(ln.strip()) > 12
              and not ln.strip().startswith(("#", '"', "'"))]
        if len(ok) < k:
            continue
        first = rng.randrange(len(ok) - k + 1)
        picked = ok[first: first + k]
        if picked[-1] - picked[0] > 6 * k:  # keep the holes in one stretch of code
            continue
        lo = max(0, picked[0] - 30)
        hi = min(len(lines), picked[-1] + 12)
        text, holes, truths = "", [], []
        for i in range(lo, hi):
            ln = lines[i]
            if i in picked:
                indent = len(ln) - len(ln.lstrip())
                cut = rng.randint(indent + 4, len(ln) - 2)
                holes.append(len(text) + cut)
                truths.append(ln[cut:])
                ln = ln[:cut]
            text += ln + "\n"
        out.append((text, holes, truths))
    return out


async def run(args) -> dict:
    from fim_server.engine import Engine, EngineConfig
    from fim_server.shared.protocol import EditRegion, EditRequest, InfillRequest

    # an edit's regions always use the model's whole window; the separate infills they are compared with
    # must too, not the shorter window of a cold infill (EngineConfig.cold_window)
    eng = Engine.load(args.model, config=EngineConfig(cold_window=0))
    warm = cases(1, 1, seed=99)[0]
    await eng.infill(InfillRequest("warm", warm[0][: warm[1][0]], warm[0][warm[1][0]:], "python", 24))
    res: dict = {"model": str(args.model), "cases_per_k": args.n, "max_tokens": args.max_tokens, "k": {}}
    for k in [int(x) for x in args.ks.split(",")]:
        joint_ms, joint_passes, sep_ms, sep_passes, same, exact = [], [], [], [], 0, 0
        for ci, (text, holes, truths) in enumerate(cases(k, args.n)):
            eng.clear_cache()
            t = time.perf_counter()
            joint = await eng.edit(EditRequest(f"j{k}.{ci}", text, tuple(EditRegion(h, h, "fill", args.max_tokens)
                                                                          for h in holes), language="python"))
            joint_ms.append((time.perf_counter() - t) * 1000)
            joint_passes.append(joint.forward_passes)
            eng.clear_cache()
            t = time.perf_counter()
            alone = [await eng.infill(InfillRequest(f"s{k}.{ci}.{i}", text[:h], text[h:], "python",
                                                    args.max_tokens)) for i, h in enumerate(holes)]
            sep_ms.append((time.perf_counter() - t) * 1000)
            sep_passes.append(sum(a.forward_passes for a in alone))
            same += all(r.text == a.text or r.repair == "revert" for r, a in zip(joint.regions, alone))
            exact += sum(r.text.strip() == tr.strip() for r, tr in zip(joint.regions, truths))
        res["k"][str(k)] = {
            "joint": {"passes_mean": round(statistics.mean(joint_passes), 2),
                      "ms_p50": pct(joint_ms, 50), "ms_p95": pct(joint_ms, 95)},
            "separate": {"passes_mean": round(statistics.mean(sep_passes), 2),
                         "ms_p50": pct(sep_ms, 50), "ms_p95": pct(sep_ms, 95)},
            "passes_ratio": round(statistics.mean(sep_passes) / statistics.mean(joint_passes), 2),
            "time_ratio_p50": round(pct(sep_ms, 50) / pct(joint_ms, 50), 2),
            "same_text_as_separate": f"{same}/{args.n}",
            "holes_exact": f"{exact}/{args.n * k}",
        }
        print(k, res["k"][str(k)], file=sys.stderr)
    eng.close()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(ROOT / "fim_server" / "models" / "default"))
    p.add_argument("--n", type=int, default=20, help="documents per k")
    p.add_argument("--ks", default="1,2,4,8")
    p.add_argument("--max-tokens", type=int, default=24, help="per hole (single-line holes)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "edit_holes.json")
    args = p.parse_args()
    write_results(asyncio.run(run(args)), args.out, "edit_holes.py")


if __name__ == "__main__":
    main()
