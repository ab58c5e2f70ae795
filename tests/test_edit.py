"""Edits: several regions of one document regenerated jointly (protocol, engine, joint syntax check, server)."""

import asyncio
import json

import pytest
from websockets.asyncio.client import connect

from fim_server.engine import Cancelled, Engine, EngineConfig
from fim_server.server import ServerConfig, start_server
from fim_server.shared import syntax
from fim_server.shared.protocol import EditRegion, EditRequest, InfillRequest, ProtocolError, parse_client_message
from tests.fakes import scripted_engine

DOC = ("def add(a, b):\n    return \n\n\n"
       "def scale(xs, k):\n    out = []\n    for x in xs:\n        out.append(x * )\n    return out\n\n\n"
       "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = \n")
HOLES = [DOC.index("return \n") + 7, DOC.index("x * ") + 4, DOC.index("self.y = ") + 9]


def edit(rid, regions, text=DOC, **kw):
    return EditRequest(id=rid, text=text, regions=tuple(regions), language="python", **kw)


def apply(text, result):
    out, at = [], 0
    for r in result.regions:
        out += [text[at: r.start], r.text]
        at = r.end
    return "".join(out) + text[at:]


# ---- protocol ------------------------------------------------------------------------------------------------
def parse(obj):
    return parse_client_message(json.dumps(obj))


def error_of(obj):
    with pytest.raises(ProtocolError) as e:
        parse(obj)
    return e.value.code, e.value.id, str(e.value)


def test_edit_message_is_parsed_and_regions_sorted():
    r = parse({"type": "edit", "id": "e", "text": "abcdef", "language": "python", "revise_threshold": 0.3,
               "regions": [{"start": 4, "end": 6, "mode": "revise"}, {"start": 1, "end": 1, "max_tokens": 8}]})
    assert r.regions == (EditRegion(1, 1, "fill", 8), EditRegion(4, 6, "revise", 64))
    assert r.revise_threshold == 0.3 and r.text == "abcdef"


@pytest.mark.parametrize("regions, words", [
    ([], "1..64"),
    ([{"start": 0, "end": 9}], "0 <= start <= end <= 6"),
    ([{"start": 3, "end": 2}], "0 <= start <= end"),
    ([{"start": 1, "end": 4}, {"start": 3, "end": 5}], "overlap"),
    ([{"start": 2, "end": 2}, {"start": 2, "end": 2}], "overlap"),
    ([{"start": 2, "end": 2, "mode": "revise"}], "must not be empty"),
    ([{"start": 1, "end": 2, "mode": "rewrite"}], "mode must be one of"),
    ([{"start": True, "end": 2}], "must be int"),
    ([{"start": 1, "end": 2, "max_tokens": 0}], "max_tokens must be 1..512"),
    (["x"], "must be an object"),
    ([{"start": i, "end": i} for i in range(7)] * 10, "1..64"),
])
def test_bad_regions_are_named(regions, words):
    code, rid, message = error_of({"type": "edit", "id": "e", "text": "abcdef", "regions": regions})
    assert code == "bad_field" and rid == "e" and words in message


def test_edit_needs_text_and_regions():
    assert error_of({"type": "edit", "id": "e", "regions": [{"start": 0, "end": 0}]})[0] == "missing_field"
    assert error_of({"type": "edit", "id": "e", "text": "x"})[0] == "missing_field"


# ---- joint syntax check ------------------------------------------------------------------------------------
def test_joint_check_reverts_the_region_that_adds_errors_and_keeps_the_rest():
    text = "x = 1\ny = 2\n"
    spans = [(4, 5), (10, 11)]
    keep, before, after = syntax.revert_until_no_worse("python", text, spans, ["foo(1)", "(((("])
    assert keep == [True, False] and before == 0 and after == 0
    keep, _, after = syntax.revert_until_no_worse("python", text, spans, ["3", "4"])
    assert keep == [True, True] and after == 0
    assert syntax.revert_until_no_worse("cobol", text, spans, ["(((", ")"]) == ([True, True], None, None)


# ---- engine ----------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_engine(tiny_model, tokenizer):
    eng = Engine(tiny_model, tokenizer, name="tiny", config=EngineConfig(initial_slots=8))
    yield eng
    eng.close()


async def test_holes_are_denoised_together_after_a_first_pass_each(shipped_engine):
    alone = [await shipped_engine.infill(InfillRequest(f"a{i}", DOC[:h], DOC[h:], "python")) for i, h in
             enumerate(HOLES)]
    before = shipped_engine.stats["denoise_passes"]
    res = await shipped_engine.edit(edit("e", [EditRegion(h, h) for h in HOLES]))
    assert shipped_engine.stats["denoise_passes"] - before == res.forward_passes  # one run for all holes
    # each hole's first pass is made with its own prefill (Decoder.admit), the rest are shared
    assert res.forward_passes == len(HOLES) + max(a.forward_passes for a in alone) - 1
    assert res.forward_passes < sum(a.forward_passes for a in alone)
    # each hole got what it gets alone (batching does not change answers), unless the joint check reverted it
    for a, r in zip(alone, res.regions):
        assert r.text == a.text or r.repair == "revert"
    assert [r.start for r in res.regions] == HOLES
    assert res.errors_after <= res.errors_before


async def test_text_outside_the_regions_is_unchanged_and_the_file_parses_no_worse(shipped_engine):
    a = DOC.index("    out = []")
    b = DOC.index("    return out")
    regions = [EditRegion(HOLES[0], HOLES[0]), EditRegion(a, b, "fill", 48), EditRegion(HOLES[2], HOLES[2])]
    res = await shipped_engine.edit(edit("e2", regions))
    new = apply(DOC, res)
    assert new[: HOLES[0]] == DOC[: HOLES[0]] and new.endswith(DOC[HOLES[2]:])
    assert syntax.count_errors("python", new) <= syntax.count_errors("python", DOC) == res.errors_before
    assert res.regions[1].text.strip()  # a region that had text is never answered with nothing


async def test_revise_keeps_likely_tokens_and_the_token_count(shipped_engine, tokenizer):
    text = "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)\n"
    a, b = text.index("    total = 0"), text.index("    return")
    original = text[a:b]
    keep_all = await shipped_engine.edit(edit("k", [EditRegion(a, b, "revise")], text, revise_threshold=1e-9))
    (r,) = keep_all.regions
    assert r.remasked == 0 and r.text == original and not r.changed and keep_all.forward_passes == 1
    # the bare threshold rule (no margin): nothing is certain, so every token is re-masked
    from fim_server.engine import Engine, EngineConfig
    from tests.conftest import SHIPPED

    bare = Engine.load(SHIPPED, config=EngineConfig(revise_margin=0.0))
    try:
        redo = await bare.edit(edit("r", [EditRegion(a, b, "revise")], text, revise_threshold=1.0))
    finally:
        bare.close()
    (r,) = redo.regions
    n = len(tokenizer.encode(original))
    assert r.remasked == n
    assert r.tokens == n or not r.changed  # denoised again into the same number of tokens (or reverted)
    # the default margin: a token is re-masked only for one the model clearly prefers, and the rewrite must
    # beat the original as a whole; this correct code stays as it is even with every token "uncertain"
    safe = await shipped_engine.edit(edit("s", [EditRegion(a, b, "revise")], text, revise_threshold=1.0))
    (r,) = safe.regions
    assert r.remasked < n and r.text == original and not r.changed


async def test_a_hole_whose_answer_adds_an_error_is_left_alone(tokenizer):
    close = tokenizer.encode(")")[0]
    eng = scripted_engine(tokenizer, lambda k: close if k < 3 else tokenizer.eom_id)
    text = "x = 1\ny = \n"
    res = await eng.edit(edit("bad", [EditRegion(10, 10)], text=text))
    (r,) = res.regions
    assert not r.changed and r.text == "" and r.repair == "drop"
    assert res.errors_after <= res.errors_before
    eng.close()


async def test_cancelling_an_edit_cancels_every_region(tokenizer):
    eng = scripted_engine(tokenizer, lambda k: 300, confident=False)  # one token a pass, never ends on its own
    job = eng.submit_edit(EditRequest("c", "a = \nb = \n", (EditRegion(4, 4, max_tokens=512),
                                                                    EditRegion(9, 9, max_tokens=512))))
    await asyncio.sleep(0)
    job.cancel()
    with pytest.raises(Cancelled):
        await job.result()
    assert eng.idle.wait(5)  # no region goes on denoising
    passes = eng.stats["denoise_passes"]
    assert (await eng.infill(InfillRequest("after", "x =", "\n", max_tokens=4))).id == "after"
    assert eng.stats["denoise_passes"] - passes == 4  # only the new request's passes
    eng.close()


def test_a_revise_region_too_long_is_refused_up_front(tiny_engine):
    text = "x = 1\n" * 400

    async def go():
        tiny_engine.submit_edit(EditRequest("long", text, (EditRegion(0, len(text), "revise"),)))

    with pytest.raises(Engine.RequestError, match="at most 384"):
        asyncio.run(go())


# ---- websocket -------------------------------------------------------------------------------------------------
async def test_edit_over_the_websocket(shipped_engine):
    srv = await start_server(shipped_engine, ServerConfig(port=0))
    port = srv.sockets[0].getsockname()[1]
    try:
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            await ws.send(json.dumps({"type": "edit", "id": "e", "text": DOC, "language": "python",
                                      "regions": [{"start": h, "end": h} for h in reversed(HOLES)]}))
            msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert msg["type"] == "edit_result" and msg["id"] == "e"
            assert [r["start"] for r in msg["regions"]] == HOLES and msg["forward_passes"] >= 1
            assert msg["errors_after"] <= msg["errors_before"]
            await ws.send(json.dumps({"type": "edit", "id": "long", "text": "x = 1\n" * 400, "language": "python",
                                      "regions": [{"start": 0, "end": 2400, "mode": "revise"}]}))
            msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert msg["type"] == "error" and msg["code"] == "bad_field" and msg["id"] == "long"
    finally:
        srv.close()
        await srv.wait_closed()
