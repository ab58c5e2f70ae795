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


def write_results(res: dict, out: Path, script: str) -> None:
    """Add the machine and the exact command to `res`, write it as JSON to `out` and print it."""
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    res["command"] = f"python bench/{script} " + " ".join(sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
