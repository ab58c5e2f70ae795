"""Does "rewrite" (an edit's `revise` region) leave correct code alone, and does it fix a planted mistake?

Cases: n spans of 2-4 whole statements inside function bodies of the held-out packages the model never
trained on (bench/realfiles.py, the multi-line holes), each rewritten in its whole file as the language
server's rewrite command sends it (one `revise` region, language python):
- correct: the file as written; "changed" = the rewrite changed the span (target ≤ 5%);
- planted: the same span with one token spoiled (an operator swapped for its opposite, a number off by one,
  or a name misspelt by dropping a letter, chosen at random per case): "fixed" = the span came back exactly
  as written, "other" = changed into something else, "kept" = left as planted.
Each case runs under several engine configurations: the rule before this change (re-mask below even odds, no
margin, no name check), the name check alone, and margins (nats) with the check, 10 being the default (the
margin: a token is re-masked only if the model prefers another by that much, comments and strings are left
alone, and the rewrite must beat the original's likelihood by that much per changed token; see DecodeConfig).

Run: `python bench/rewrite_safety.py [--n 60] [--out bench/results/rewrite_safety.json]`
"""

from __future__ import annotations

import argparse
import asyncio
import io
import keyword
import random
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402

OPPOSITE = {"+": "-", "-": "+", "<": ">", ">": "<", "<=": ">=", ">=": "<=", "==": "!=", "!=": "==",
            "and": "or", "or": "and"}
def configs(margins: list[float]) -> dict[str, dict]:
    return {"before (no margin, no name check)": dict(revise_margin=0.0, revise_names=False),
            "name check only": dict(revise_margin=0.0, revise_names=True),
            **{f"margin {m:g} + name check": dict(revise_margin=m, revise_names=True) for m in margins}}


def plant(text: str, start: int, end: int, rng: random.Random) -> tuple[str, int, str] | None:
    """One token of text[start:end] spoiled -> (the new text, the span's new end, what was done); None when
    the span has no token of a kind we spoil."""
    span = text[start:end]
    try:
        toks = list(tokenize.generate_tokens(io.StringIO(span).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    lines = span.split("\n")
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln) + 1)
    choices = []
    for t in toks:
        a = offsets[t.start[0] - 1] + t.start[1]
        b = offsets[t.end[0] - 1] + t.end[1]
        if t.type == tokenize.OP and t.string in OPPOSITE or t.type == tokenize.NAME and t.string in ("and", "or"):
            choices.append((a, b, OPPOSITE[t.string], "operator"))
        elif t.type == tokenize.NUMBER and t.string.isdigit():
            choices.append((a, b, str(int(t.string) + 1), "number"))
        elif t.type == tokenize.NAME and not keyword.iskeyword(t.string) and len(t.string) >= 4 \
                and text.count(t.string) >= 2:
            i = rng.randrange(1, len(t.string) - 1)
            choices.append((a, b, t.string[:i] + t.string[i + 1:], "name"))
    if not choices:
        return None
    kind = rng.choice(sorted({c[3] for c in choices}))
    a, b, new, _ = rng.choice([c for c in choices if c[3] == kind])
    spoiled = text[: start + a] + new + text[start + b:]
    return spoiled, end + len(new) - (b - a), kind


async def rewrite(engine, text: str, start: int, end: int, rid: str) -> str:
    from fim_server.shared.protocol import EditRegion, EditRequest

    res = await engine.submit_edit(EditRequest(id=rid, text=text, regions=(EditRegion(start, end, "revise"),),
                                               language="python")).result()
    return res.regions[0].text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--margins", default="2,6,8,10", help="revise_margin values to run (with the name check)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/rewrite_safety.json")
    a = ap.parse_args()

    from bench.realfiles import multi_line_holes
    from fim_server.engine import Engine, EngineConfig
    from fim_server.shared.paths import DEFAULT_MODEL

    rng = random.Random(a.seed)
    cases = []
    for h in multi_line_holes(a.n, a.seed):
        planted = plant(h.text, h.start, h.end, rng)
        cases.append((h, planted))
    res: dict = {"n": len(cases), "planted": sum(p is not None for _, p in cases),
                 "planted_kinds": {k: sum(1 for _, p in cases if p and p[2] == k) for k in ("operator", "number",
                                                                                           "name")}}
    for label, kw in configs([float(x) for x in a.margins.split(",")]).items():
        engine = Engine.load(DEFAULT_MODEL, config=EngineConfig(**kw))

        async def run(engine=engine) -> dict:
            changed, fixed, other, kept, examples = 0, {}, 0, 0, []
            for i, (h, planted) in enumerate(cases):
                new = await rewrite(engine, h.text, h.start, h.end, f"c{i}")
                if new != h.truth:
                    changed += 1
                    if len(examples) < 5:
                        examples.append({"path": h.path, "was": h.truth, "became": new})
                if planted is None:
                    continue
                text, end, kind = planted
                new = await rewrite(engine, text, h.start, end, f"p{i}")
                if new == h.truth:
                    fixed[kind] = fixed.get(kind, 0) + 1
                elif new == text[h.start:end]:
                    kept += 1
                else:
                    other += 1
            return {"correct_changed": changed, "correct_changed_share": round(changed / len(cases), 3),
                    "planted_fixed": sum(fixed.values()), "planted_fixed_by_kind": fixed,
                    "planted_changed_otherwise": other, "planted_kept": kept, "changed_examples": examples}

        res[label] = asyncio.run(run())
        engine.close()
    write_results(res, a.out, "rewrite_safety.py")


if __name__ == "__main__":
    main()
