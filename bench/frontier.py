"""Quality against speed as the test-time compute knobs move: HumanEval-infilling pass@1 and latency for a sweep
of confidence thresholds (tau, as many passes as needed) and of pass caps (`steps`), on a fixed seeded
sample of single-line and random-span tasks (bench/humaneval_infill.py builds and runs them).

Each setting is a point (p50 latency, pass@1) per task kind; the points are written to JSON and drawn as a
PNG (matplotlib). `--ar-model DIR` adds the autoregressive baseline (fim_server/train/ar.py) as one point per
kind: greedy left-to-right decoding has no such knob.

Run: `python bench/frontier.py [--tasks 200] [--out bench/results/frontier.json] [--plot bench/frontier.png]`
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402
from bench.humaneval_infill import evaluate, load_model, problems, tasks  # noqa: E402

# (label, threshold tau, steps cap): the engine's default is tau 0.8 with no cap
SETTINGS = (("tau 0.5", 0.5, None), ("tau 0.7", 0.7, None), ("tau 0.8 (default)", 0.8, None),
            ("tau 0.9", 0.9, None), ("tau 0.95", 0.95, None), ("1 pass", 1.0, 1), ("2 passes", 1.0, 2),
            ("4 passes", 1.0, 4))
KINDS = ("single", "random")


def sample(kind: str, n: int) -> list[dict]:
    ts = tasks(kind, problems())
    return random.Random(0).sample(ts, min(n, len(ts)))


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(KINDS), figsize=(6 * len(KINDS), 4.5))
    for ax, kind in zip(axes, KINDS):
        pts = [p for p in res["points"] if p["kind"] == kind]
        diff = [p for p in pts if p["model"] == "diffusion"]
        ax.plot([p["ms_p50"] for p in diff], [100 * p["pass@1"] for p in diff], "o", label="diffusion (this repo)")
        for p in diff:
            ax.annotate(p["setting"], (p["ms_p50"], 100 * p["pass@1"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ar = [p for p in pts if p["model"] == "ar"]
        if ar:
            ax.plot([p["ms_p50"] for p in ar], [100 * p["pass@1"] for p in ar], "s", label="autoregressive baseline")
        ax.set_title(f"HumanEval-infilling, {kind} ({pts[0]['tasks']} tasks)")
        ax.set_xlabel("p50 latency per task, ms (2 CPU cores)")
        ax.set_ylabel("pass@1, %")
        ax.set_ylim(0, max(1.0, 1.25 * max(100 * p["pass@1"] for p in pts)))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


async def sweep(args) -> dict:
    samples = {kind: sample(kind, args.tasks) for kind in KINDS}
    settings = [s for s in SETTINGS if args.settings is None or s[0] in args.settings.split(",")]
    res: dict = {"tasks_per_kind": args.tasks, "points": []}
    t0 = time.time()
    engine = load_model(args.model)
    for label, tau, steps in settings:
        for kind, ts in samples.items():
            r = await evaluate(engine, ts, max_tokens=32 if kind == "single" else 96, steps=steps, threshold=tau)
            res["points"].append({"model": "diffusion", "setting": label, "threshold": tau, "steps": steps,
                                  "kind": kind, **r})
            print(label, kind, r, file=sys.stderr, flush=True)
    engine.close()
    if args.ar_model:
        ar = load_model(args.ar_model)
        for kind, ts in samples.items():
            r = await evaluate(ar, ts, max_tokens=32 if kind == "single" else 96)
            res["points"].append({"model": "ar", "setting": "greedy", "kind": kind, **r})
        ar.close()
    res["wall_s"] = round(time.time() - t0, 1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=ROOT / "fim_server" / "models" / "default")
    ap.add_argument("--ar-model", type=Path, default=None, help="an autoregressive baseline to add")
    ap.add_argument("--tasks", type=int, default=200, help="seeded sample per task kind")
    ap.add_argument("--settings", default=None, help="comma-separated labels to run (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "frontier.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "bench" / "frontier.png")
    args = ap.parse_args()
    res = asyncio.run(sweep(args))
    plot(res, args.plot)
    res["plot"] = str(args.plot.relative_to(ROOT)) if args.plot.is_relative_to(ROOT) else str(args.plot)
    write_results(res, args.out, "frontier.py")


if __name__ == "__main__":
    main()
