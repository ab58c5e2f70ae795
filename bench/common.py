"""Helpers every benchmark program shares: percentiles and writing results down with their provenance."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile q (0-100) of xs."""
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))], 2)


def context_sizes(engine, contexts: list[tuple[str, str]], max_tokens: int) -> dict:
    """What the cases send and what the engine keeps of it: mean characters of prefix and suffix, mean
    context tokens after the engine's cut to its window (`engine.build_context`), and the share cut."""
    built = [engine.build_context(p, s, max_tokens) for p, s in contexts]
    n = max(1, len(contexts))
    return {"prefix_chars_mean": round(sum(len(p) for p, _ in contexts) / n, 1),
            "suffix_chars_mean": round(sum(len(s) for _, s in contexts) / n, 1),
            "context_tokens_mean": round(sum(len(b[0]) for b in built) / n, 1),
            "truncated_share": round(sum(bool(b[1]) for b in built) / n, 3)}


def write_results(res: dict, out: Path, script: str) -> None:
    """Add the machine and the exact command to `res`, write it as JSON to `out` and print it."""
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    res["command"] = f"python bench/{script} " + " ".join(sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
