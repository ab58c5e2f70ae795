"""Engine behaviour: batching, cancellation, cache reuse, extension, truncation, syntax repair."""

import asyncio
from dataclasses import replace

import pytest

from fim_server.engine import Cancelled, Engine, EngineConfig
from fim_server.shared.protocol import InfillRequest
from tests.fakes import scripted_engine


def req(i="r", prefix="def f(x):\n    return x +", suffix="\n", **kw):
    return InfillRequest(id=i, prefix=prefix, suffix=suffix, **kw)


@pytest.fixture
def tiny_engine(tiny_model, tokenizer):
    eng = Engine(tiny_model, tokenizer, name="tiny", config=EngineConfig(initial_slots=8))
    yield eng
    eng.close()


@pytest.fixture
def make_engine(tokenizer):
    """Scripted engines (tests/fakes.py), closed after the test."""
    made = []

    def make(script, **kw):
        made.append(scripted_engine(tokenizer, script, **kw))
        return made[-1]

    yield make
    for eng in made:
        eng.close()


async def test_shipped_model_completes_deterministically(shipped_engine):
    r = req(prefix="class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.", suffix="\n",
            language="python")
    a = await shipped_engine.infill(r)
    b = await shipped_engine.infill(r)
    assert a.text == b.text and a.text.strip() != ""
    assert a.forward_passes >= 1 and a.ms > 0 and a.tokens >= 1
    assert a.valid is True  # python has a grammar: the verdict is given


async def test_concurrent_requests_share_forward_passes(tiny_engine):
    reqs = [req(f"r{i}", prefix=f"x{i} = ", max_tokens=8, threshold=1.01) for i in range(4)]
    before = tiny_engine.stats["denoise_passes"]
    results = await asyncio.gather(*(tiny_engine.infill(r) for r in reqs))
    passes = tiny_engine.stats["denoise_passes"] - before
    assert sum(r.forward_passes for r in results) > passes  # batched: fewer passes than the jobs needed alone
    assert [r.id for r in results] == ["r0", "r1", "r2", "r3"]


async def test_cancel_takes_effect_at_the_next_step(make_engine):
    eng = make_engine(lambda k: 300, confident=False)  # one slot per pass, never <eom>: 512 passes
    seen = asyncio.Event()
    job = eng.submit(req(max_tokens=512, stream=True), on_update=lambda t: seen.set())
    await seen.wait()
    before = eng.stats["denoise_passes"]
    job.cancel()
    with pytest.raises(Cancelled):
        await job.result()
    assert eng.stats["denoise_passes"] - before <= 2
    # the engine is still alive for the next request
    assert (await eng.infill(req("after", max_tokens=4))).id == "after"


async def test_context_cache_is_reused_while_typing(shipped_engine):
    base = "import os\n\n\ndef read(path):\n    with open(path) as f:\n        data = f.read()\n    return da"
    await shipped_engine.infill(req("a", prefix=base, suffix="\n"))
    reused = shipped_engine.stats["reused_tokens"]
    computed = shipped_engine.stats["prefill_tokens"]
    await shipped_engine.infill(req("b", prefix=base + "t", suffix="\n"))
    assert shipped_engine.stats["reused_tokens"] - reused > 20  # most of the context came from the cache
    assert shipped_engine.stats["prefill_tokens"] - computed < 5


async def test_extends_with_more_slots_until_max_tokens(make_engine):
    eng = make_engine(lambda k: 300, initial_slots=8)  # never proposes <eom>
    r = await eng.infill(req(max_tokens=20))
    assert r.tokens == 20  # 8 initial slots, extended to the budget, and no further


async def test_eom_ends_the_middle(make_engine, tokenizer):
    eng = make_engine(lambda k: 300 if k < 3 else tokenizer.eom_id)
    r = await eng.infill(req(max_tokens=64))
    assert r.tokens == 3 and r.forward_passes == 1  # all confident: one pass, padding cut


async def test_step_budget_caps_forward_passes(tiny_engine):
    r = await tiny_engine.infill(req(max_tokens=8, steps=2, threshold=1.01))
    assert r.forward_passes <= 2 + 1  # 2 for the block; an extension may add one


async def test_huge_prefix_is_truncated_nearest_the_cursor(shipped_engine):
    prefix = "x = 1\n" * 900_000 + "def add(a, b):\n    return a"  # ~5 MB
    r = await shipped_engine.infill(req("big", prefix=prefix, suffix="\n", language="python"))
    assert r.context_truncated
    ids, truncated, p_win, _, _ = shipped_engine.build_context(prefix, "\n", 64)
    assert truncated and p_win.endswith("def add(a, b):\n    return a")
    assert len(ids) <= shipped_engine.model.cfg.max_seq_len


async def test_invalid_candidate_is_trimmed_to_valid_lines(make_engine, tokenizer):
    close, nl = tokenizer.encode(")")[0], tokenizer.encode("\n")[0]
    eom = tokenizer.eom_id
    eng = make_engine(lambda k: {0: close, 1: nl, 2: close}.get(k, eom))
    r = await eng.infill(req(prefix="x = foo(1", suffix="\n", language="python"))
    assert r.text == ")" and r.valid is True and r.repair == "trim"


async def test_hopeless_candidate_is_dropped(make_engine, tokenizer):
    close = tokenizer.encode(")")[0]
    eng = make_engine(lambda k: close if k < 3 else tokenizer.eom_id)
    r = await eng.infill(req(prefix="x = 1", suffix="\n", language="python"))
    assert r.text == "" and r.valid is False and r.repair == "drop"


async def test_language_without_grammar_passes_unvalidated(make_engine, tokenizer):
    close = tokenizer.encode(")")[0]
    eng = make_engine(lambda k: close if k < 3 else tokenizer.eom_id)
    r = await eng.infill(req(prefix="x = 1", suffix="\n", language="cobol"))
    assert r.text == ")))" and r.valid is None


async def test_batched_requests_give_the_same_answers_as_alone(shipped_engine):
    prefixes = ["import sys\n\nprint(sys.argv",
                "class P:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
                "def area(w, h):\n    return w * ",
                "    def get_name(self):\n        return self."]
    reqs = [req(f"b{i}", prefix=p, suffix="\n", language="python", max_tokens=24) for i, p in enumerate(prefixes)]
    alone = [(await shipped_engine.infill(r)).text for r in reqs]
    together = [r.text for r in await asyncio.gather(*(shipped_engine.infill(r) for r in reqs))]
    assert together == alone


async def test_the_batched_engine_agrees_with_the_single_request_reference_loop(shipped_engine):
    """Requests of different lengths, budgets and thresholds denoised together (jobs join and leave the batch
    at different passes) give what each gives alone in the plain loop of fim_server.decoder."""
    from fim_server.decoder import Decoder, reference_infill

    prompts = ["import sys\n\nprint(sys.argv", "def area(w, h):\n    return w * ",
               "class P:\n    def __init__(self, x, y):\n        self.x = x\n        self.",
               "for i in range(10):\n    ", "    def get_name(self):\n        return self.", "x = [1, 2, "]
    reqs = [req(f"ref{i}", prefix=p, suffix="\n", language="python", max_tokens=8 + 8 * (i % 3),
                threshold=(0.6, 0.8, 0.95)[i % 3]) for i, p in enumerate(prompts)]
    reference = Decoder(shipped_engine.model, shipped_engine.tok, config=shipped_engine.config)
    alone = [reference_infill(reference, r) for r in reqs]
    together = await asyncio.gather(*(shipped_engine.infill(r) for r in reqs))
    assert [(r.text, r.tokens, r.forward_passes, r.valid) for r in together] == \
        [(r.text, r.tokens, r.forward_passes, r.valid) for r in alone]


# ---- token healing ---------------------------------------------------------------------------------------------
def test_a_prefix_ending_in_a_newline_and_indentation_moves_them_into_the_middle(tokenizer):
    from fim_server.context import build_context

    prefix = "def f(x):\n    y = x\n    "
    ctx = build_context(tokenizer, prefix, "\n", 24, 1024, heal="whitespace")
    assert ctx.heal == "\n    " and ctx.prefix == "def f(x):\n    y = x"
    assert tokenizer.decode(ctx.ids) == "\n" + "def f(x):\n    y = x"  # suffix, then the prefix without them
    assert build_context(tokenizer, prefix, "\n", 24, 1024, heal="off").heal == ""
    # a last token nothing extends is never moved; "token" mode also moves a "." a longer token extends
    assert build_context(tokenizer, "x = self", "\n", 24, 1024, heal="token").heal == ""
    assert build_context(tokenizer, "x = self.", "\n", 24, 1024, heal="token").heal == "."
    assert build_context(tokenizer, "x = self.", "\n", 24, 1024, heal="whitespace").heal == ""


async def test_a_healed_middle_starts_with_the_moved_text_and_answers_what_follows(make_engine, tokenizer):
    nl_indent, ret = tokenizer.encode("\n   ")[0], tokenizer.encode(" return")[0]
    assert tokenizer.texts[nl_indent] == "\n   " and tokenizer.texts[ret] == " return"
    script = {0: nl_indent, 1: ret}
    eng = make_engine(lambda k: script.get(k, tokenizer.eom_id))
    r = await eng.infill(req(prefix="def f(x):\n", suffix="\n", max_tokens=8))
    assert r.text == "    return"  # "\n   " + " return", less the "\n" that was the prefix's


async def test_a_healed_middle_cannot_end_before_some_text(make_engine, tokenizer):
    nl = tokenizer.encode("\n")[0]
    eng = make_engine(lambda k: nl if k == 0 else tokenizer.eom_id)  # "\n" then <eom>: an empty answer
    r = await eng.infill(req(prefix="def f(x):\n", suffix="\n", max_tokens=8))
    assert r.text != ""  # <eom> is banned right after the healed text, so something else was written


async def test_the_shipped_model_writes_a_whole_masked_line(shipped_engine):
    prefix = "def add(a, b):\n    total = a + b\n"
    r = await shipped_engine.infill(req("line", prefix=prefix, suffix="\n\nprint(add(1, 2))\n",
                                        language="python", max_tokens=24))
    assert r.text.strip() and r.text.startswith("    ") and r.valid is True


async def test_candidates_are_denoised_together_and_the_most_likely_valid_one_answers(shipped_engine):
    r = req("cands", prefix="def area(w, h):\n    return w * ", suffix="\n", language="python", max_tokens=16)
    one = await shipped_engine.infill(r)
    before = shipped_engine.stats["denoise_passes"]
    four = await shipped_engine.infill(replace(r, candidates=4))
    passes = shipped_engine.stats["denoise_passes"] - before
    assert four.id == "cands" and four.valid is True and four.text.strip()
    assert passes == four.forward_passes < 4 * max(1, one.forward_passes) + 4  # shared passes, not 4 runs
    again = await shipped_engine.infill(replace(r, candidates=4))
    assert again.text == four.text  # seeded: the same request gives the same answer


def test_the_best_candidate_parses_then_has_text_then_is_most_likely():
    from fim_server.decoder import Middle
    from fim_server.engine import best_candidate
    from fim_server.shared.protocol import InfillResult

    def cand(text, valid, logprob):
        m = Middle(req=req())
        m.logprob, m.scored = logprob, 1
        return m, InfillResult("c", text, valid, 1, 1, 1.0)

    pairs = [cand("x)", False, -0.1), cand("", True, -0.2), cand("y", True, -3.0), cand("z", True, -1.0)]
    assert best_candidate([m for m, _ in pairs], [o for _, o in pairs]) == 3


async def test_a_streamed_draft_is_never_taken_back(tokenizer):
    """Drafts are whole lines, each frozen once sent: the syntax check may not re-mask or trim them later;
    the same request not streamed is repaired or cut instead."""
    from tests.fakes import text_script

    def engine():
        return scripted_engine(tokenizer, text_script(tokenizer, "\ny = g(2))\nz = 3\n"), confident=False)

    ask = dict(prefix="x = f(1)", suffix="\n", language="python", max_tokens=16)
    eng = engine()
    drafts: list[str] = []
    try:
        job = eng.submit(InfillRequest(id="s", stream=True, append_only=True, **ask), on_update=drafts.append)
        res = await job.result()
    finally:
        eng.close()
    assert drafts and all(d.endswith("\n") for d in drafts) and all(b.startswith(a) for a, b in zip(drafts, drafts[1:]))
    assert "y = g(2))\n" in drafts[-1] and res.text.startswith(drafts[-1]) and res.valid is False
    eng = engine()
    try:
        quiet = await eng.infill(InfillRequest(id="q", **ask))
    finally:
        eng.close()
    assert quiet.repair is not None and "g(2))" not in quiet.text


def test_workspace_chunks_come_first_within_their_share(tokenizer):
    """`extra` chunks go before the file's window as `<file_sep> path \\n text`, most relevant (last) kept when
    they do not all fit their share of the window, whole chunks only."""
    from fim_server.context import build_context
    from fim_server.shared.protocol import ExtraChunk

    a, b = ExtraChunk("util.py", "def helper(x):\n    return x + 1\n"), ExtraChunk("geo.py", "def area(w, h):\n")
    ctx = build_context(tokenizer, "y = ", "\n", 16, 1024, extra=(a, b))
    head = [tokenizer.file_sep_id, *tokenizer.encode("util.py\n" + a.text),
            tokenizer.file_sep_id, *tokenizer.encode("geo.py\n" + b.text)]
    assert ctx.ids[: len(head)] == head and ctx.ids[len(head)] == tokenizer.suffix_id
    big = ExtraChunk("big.py", "x = 1\n" * 400)  # more than half the window: dropped whole
    ctx = build_context(tokenizer, "y = ", "\n", 16, 1024, extra=(big, b))
    only_b = [tokenizer.file_sep_id, *tokenizer.encode("geo.py\n" + b.text), tokenizer.suffix_id]
    assert ctx.ids[: len(only_b)] == only_b
    long_prefix = "z = 0\n" * 2000  # the file's window gives way to the chunks, not the other way round
    with_extra = build_context(tokenizer, long_prefix, "\n", 16, 1024, extra=(a,))
    without = build_context(tokenizer, long_prefix, "\n", 16, 1024)
    assert len(with_extra.ids) <= 1024 and len(without.ids) <= 1024 and with_extra.truncated


async def test_workspace_chunks_stay_cached_while_typing(shipped_engine):
    from fim_server.shared.protocol import ExtraChunk

    shipped_engine.clear_cache()
    extra = (ExtraChunk("shapes.py", "class Square:\n    def __init__(self, side):\n        self.side = side\n"),)
    prefix = "from shapes import Square\n\n\ndef total(squares):\n    return sum(s."
    first = await shipped_engine.infill(InfillRequest(id="x1", prefix=prefix, suffix=")\n", extra=extra))
    typed = await shipped_engine.infill(InfillRequest(id="x2", prefix=prefix + "si", suffix=")\n", extra=extra))
    n_extra = 1 + len(shipped_engine.tok.encode("shapes.py\n" + extra[0].text))
    assert first.context_tokens > n_extra and typed.cached_tokens >= n_extra + 10


async def test_typing_keeps_one_cache_entry_per_document(shipped_engine):
    """Each keystroke's context replaces the one before it in the cache: typing in 8 documents by turns keeps
    8 entries, so every keystroke after a document's first finds nearly all of its context cached."""
    shipped_engine.clear_cache()
    docs = [f"def f{i}(values):\n    total = {i}\n    for v in values:\n        total += v\n    return "
            for i in range(8)]
    shares = []
    for k in range(4):
        for i, doc in enumerate(docs):
            res = await shipped_engine.infill(InfillRequest(id=f"d{i}-{k}", prefix=doc + "total"[:k], suffix="\n"))
            if k:
                shares.append(res.cached_tokens / res.context_tokens)
    assert len(shipped_engine.decoder.cache._kv) == 8
    assert min(shares) > 0.8, shares
