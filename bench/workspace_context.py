"""What workspace context (`extra`, fim_server/shared/workspace.py) does for whole-line completions on files the
model never trained on (issue: "Context from the rest of the workspace").

    python bench/workspace_context.py --n 120

Cases: whole lines in function bodies of the held-out packages (bench/realfiles.py: marshmallow, boltons, arrow),
the cursor after the line's indentation, the hole the rest of the line; the language server's window around
it. The workspace is modelled as an editor session: the files the current file imports (read from disk, as
the language server does) and up to 4 other files of its directory as open tabs, indexed by
`fim_server.shared.workspace.WorkspaceIndex`. Three conditions on the same cases, with the same engine:
- none: no extra (what the language server sends by default);
- collected: the index's chunks for the cursor, `--context-tokens` (256) of them;
- oracle (only cases whose line appears verbatim in another file of the package): one chunk holding that
  line, placed last: can the model copy an answer it is shown?
Exact match: the completion's first line equals the hole's line (both stripped). Also: how often the line is
in the package's other files at all, how often the collected chunks hold it, and what collection costs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import pct, write_results  # noqa: E402
from bench.realfiles import CACHE, PACKAGES, Hole, heldout_files, single_line_holes  # noqa: E402

TABS = 4


def package_root(hole: Hole) -> Path:
    return CACHE / hole.path.split("/", 1)[0]


def workspace_for(hole: Hole, rng: random.Random, tokens: int):
    """An index as the language server would hold it for this file: its imports and a few open tabs."""
    from fim_server.shared.workspace import WorkspaceIndex

    root = package_root(hole)
    here = CACHE / hole.path
    idx = WorkspaceIndex(root)
    t0 = time.perf_counter()
    idx.update(here.as_uri(), hole.document)
    idx.follow_imports(here.as_uri(), hole.document, "python")
    siblings = sorted(p for p in here.parent.glob("*.py") if p != here)
    for p in rng.sample(siblings, min(TABS, len(siblings))):
        idx.update(p.as_uri(), p.read_text("utf-8", errors="replace"))
    index_ms = (time.perf_counter() - t0) * 1000
    return idx, index_ms


def window_cost(reps: int = 30) -> dict:
    """What a bigger window costs on this machine (the issue asks 512 against 1024 tokens): the shipped model's
    weights run over a cold context of each size (a full prefill) and one denoising pass of 8 slots against
    it, p50 of `reps`. Only the shape matters here (positions past 512 were never trained: no quality claim)."""
    import torch

    from fim_server.model import FIMDiffusionModel
    from fim_server.shared.paths import DEFAULT_MODEL

    torch.set_num_threads(os.cpu_count() or 1)  # as the engine's worker thread does
    model = FIMDiffusionModel.load(DEFAULT_MODEL)
    out = {}
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for n in (512, 1024):
            ids = torch.randint(0, model.cfg.vocab_size, (1, n), generator=g)
            pre, den = [], []
            for _ in range(reps):
                t = time.perf_counter()
                kv = model.prefill(ids)
                pre.append((time.perf_counter() - t) * 1000)
                slots = torch.randint(0, model.cfg.vocab_size, (1, 8), generator=g)
                t = time.perf_counter()
                model.logits(model.denoise_hidden(slots, torch.arange(n, n + 8)[None], kv, mask=None))
                den.append((time.perf_counter() - t) * 1000)
            out[str(n)] = {"prefill_ms_p50": pct(pre, 50), "pass_ms_p50": pct(den, 50)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--context-tokens", type=int, default=256)
    ap.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded model)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "workspace_context.json")
    a = ap.parse_args()

    from fim_server.engine import Engine
    from fim_server.shared.paths import DEFAULT_MODEL
    from fim_server.shared.protocol import ExtraChunk, InfillRequest

    files = heldout_files()
    holes = single_line_holes(a.n, a.seed, files, whole=True)
    texts = {p: p.read_text("utf-8", errors="replace") for p in files}
    engine = Engine.load(a.model or DEFAULT_MODEL)
    rng = random.Random(a.seed)
    budget_chars = a.context_tokens * 3  # as the language server converts contextTokens
    rows = []

    async def run() -> None:
        for k, h in enumerate(holes):
            truth = h.truth.strip()
            prefix, suffix = h.window()
            idx, index_ms = workspace_for(h, rng, a.context_tokens)
            here = CACHE / h.path
            t0 = time.perf_counter()
            lo = h.start - len(prefix)
            extra = idx.collect(here.as_uri(), h.document, h.start, (lo, h.start + len(suffix)), budget_chars)
            collect_ms = (time.perf_counter() - t0) * 1000
            others = [p for p in files if p.parent.parts[: len(package_root(h).parts)] == package_root(h).parts
                      and p != here and truth in texts[p]]
            row = {"case": k, "path": h.path, "in_workspace": bool(others),
                   "in_extra": any(truth in c.text for c in extra), "extra_chunks": len(extra),
                   "collect_ms": round(collect_ms, 2), "index_ms": round(index_ms, 1)}
            conditions = {"none": (), "collected": extra}
            if others:
                src = texts[others[0]]
                at = src.index(truth)
                start = src.rfind("\n", 0, max(0, at - 300)) + 1
                conditions["oracle"] = (ExtraChunk(str(others[0].relative_to(package_root(h))),
                                                   src[start: src.find("\n", at) + 1]),)
            for name, chunks in conditions.items():
                engine.clear_cache()
                res = await engine.infill(InfillRequest(id=f"{k}-{name}", prefix=prefix, suffix=suffix,
                                                        language="python", max_tokens=24, extra=chunks))
                first = res.text.split("\n", 1)[0].strip()
                row[name] = {"exact": first == truth, "ms": res.ms, "context_tokens": res.context_tokens}
            rows.append(row)

    asyncio.run(run())
    engine.close()

    def share(cond: str, only_workspace: bool = False) -> dict:
        sel = [r for r in rows if cond in r and (r["in_workspace"] or not only_workspace)]
        return {"n": len(sel), "exact": sum(r[cond]["exact"] for r in sel),
                "exact_share": round(sum(r[cond]["exact"] for r in sel) / max(1, len(sel)), 3),
                "p50_ms": pct([r[cond]["ms"] for r in sel], 50) if sel else None,
                "context_tokens_mean": round(sum(r[cond]["context_tokens"] for r in sel) / max(1, len(sel)), 1)}

    res = {"cases": len(rows), "seed": a.seed, "context_tokens": a.context_tokens,
           "model": str(a.model or "embedded default"), "packages": [p[0] for p in PACKAGES],
           "line_in_other_files_share": round(sum(r["in_workspace"] for r in rows) / len(rows), 3),
           "line_in_collected_extra_share": round(sum(r["in_extra"] for r in rows) / len(rows), 3),
           "collect_ms": {"p50": pct([r["collect_ms"] for r in rows], 50),
                          "p95": pct([r["collect_ms"] for r in rows], 95)},
           "index_ms_per_session": {"p50": pct([r["index_ms"] for r in rows], 50)},
           "none": share("none"), "collected": share("collected"),
           "none_on_cases_with_the_line_elsewhere": share("none", True),
           "collected_on_cases_with_the_line_elsewhere": share("collected", True),
           "oracle": share("oracle"), "window_cost": window_cost(), "rows": rows}
    write_results(res, a.out, "workspace_context.py")


if __name__ == "__main__":
    main()
