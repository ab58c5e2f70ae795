"""Does the model write new lines? The multi-line edit commands (complete block, regenerate) need it.

Cases: functions of standard-library files (a fixed seeded sample) with 3+ statements, cut after the
middle statement; the engine is asked at the end of that statement's line, as "complete block" asks
(the middle must start with a newline). Counted: answers that start a new line with code on it, and
those whose first new line equals the function's real next line.

Run: `python bench/new_lines.py [--n 40] [--model DIR] [--out bench/results/new_lines.json]`
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import random
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402

FILES = ("json/decoder.py", "textwrap.py", "shlex.py", "csv.py", "fnmatch.py", "glob.py", "calendar.py", "string.py")


def cases(n: int, seed: int = 0) -> list[tuple[str, int, str]]:
    """(source, offset at the end of a statement's line, the real next statement)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for name in FILES:
        src = (stdlib / name).read_text()
        lines = src.split("\n")
        starts = [0]
        for ln in lines:
            starts.append(starts[-1] + len(ln) + 1)
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.FunctionDef) and len(node.body) >= 3:
                k = len(node.body) // 2
                cut = starts[node.body[k - 1].end_lineno - 1] + len(lines[node.body[k - 1].end_lineno - 1])
                nxt = node.body[k]
                out.append((src, cut, src[starts[nxt.lineno - 1]: starts[nxt.end_lineno]]))
    random.Random(seed).shuffle(out)
    return out[:n]


async def run(args) -> dict:
    from fim_server.engine import Engine
    from fim_server.shared.protocol import InfillRequest

    engine = Engine.load(args.model)
    wrote = exact = 0
    cs = cases(args.n)
    for i, (src, cut, truth) in enumerate(cs):
        r = await engine.infill(InfillRequest(f"n{i}", src[:cut], src[cut:], "python", max_tokens=64))
        if r.text.startswith("\n") and r.text.strip():
            wrote += 1
            first = r.text.lstrip("\n").split("\n", 1)[0]
            exact += first.strip() == truth.split("\n", 1)[0].strip()
    engine.close()
    model = args.model.resolve()
    name = str(model.relative_to(ROOT)) if model.is_relative_to(ROOT) else str(model)
    return {"model": name, "cases": len(cs), "new_line_written": wrote, "first_line_exact": exact}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--model", type=Path, default=ROOT / "fim_server" / "models" / "default")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "new_lines.json")
    args = ap.parse_args()
    write_results(asyncio.run(run(args)), args.out, "new_lines.py")


if __name__ == "__main__":
    main()
