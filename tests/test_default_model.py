"""The shipped default model does the ordinary things a user expects (issue: first default model)."""

import pytest

from fim_server.shared.protocol import InfillRequest


async def complete(engine, prefix, suffix="\n"):
    return await engine.infill(InfillRequest(id="m", prefix=prefix, suffix=suffix, language="python", max_tokens=24))


async def test_closes_a_call(shipped_engine):
    assert (await complete(shipped_engine, "import sys\n\nprint(sys.argv")).text == ")"


async def test_finishes_an_attribute_assignment(shipped_engine):
    r = await complete(shipped_engine, "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.")
    assert r.text == "y = y"


@pytest.mark.parametrize("prefix", ["    def get_name(self):\n        return self.",
                                    "    def __len__(self):\n        return len(self."])
async def test_completes_a_return(shipped_engine, prefix):
    r = await complete(shipped_engine, prefix)
    assert r.text.strip() and r.valid is True and "\n" not in r.text.strip()


async def test_stops_when_the_line_is_done(shipped_engine):
    assert (await complete(shipped_engine, "x = compute(1, 2)", "\n\ny = 3\n")).text == ""
