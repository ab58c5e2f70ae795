"""The engine's job lifecycle at its edges: every job ends exactly once, the worker goes idle, and no pass
is spent on a job nobody awaits — whatever the order of submits, cancels, callers giving up, event loops
closing and the engine closing. A scripted model (tests/fakes.py) makes jobs as long as a test needs."""

import asyncio
import random
import threading
import time

import pytest

from fim_server.shared.errors import Cancelled, EngineError
from fim_server.shared.protocol import InfillRequest
from tests.fakes import scripted_engine, text_script


def req(i="r", max_tokens=512, **kw):
    return InfillRequest(id=i, prefix="def f(x):\n    return x +", suffix="\n", max_tokens=max_tokens, **kw)


@pytest.fixture
def slow_engine(tokenizer):
    """One token a pass, never <eom>: a job of max_tokens passes, 1 ms each."""
    eng = scripted_engine(tokenizer, lambda k: 300, confident=False, pass_delay=0.001)
    yield eng
    eng.close()


async def test_cancelling_the_awaiting_task_stops_the_job(slow_engine):
    eng = slow_engine
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(eng.infill(req()), timeout=0.05)  # the caller gives up
    assert eng.idle.wait(2)  # the engine stopped denoising it (512 passes would take > 0.5 s)
    assert eng.stats["denoise_passes"] < 200


def test_a_closed_event_loop_does_not_make_the_worker_spin(tokenizer, caplog):
    # 8 tokens in one pass of 0.1 s; the caller's loop closes during that pass, before the answer is delivered
    eng = scripted_engine(tokenizer, lambda k: 300 if k < 8 else tokenizer.eom_id, pass_delay=0.1)
    side = asyncio.new_event_loop()

    async def submit_only():
        return eng.submit(req("orphan"))

    side.run_until_complete(submit_only())
    assert eng.model.in_pass.wait(2)
    side.close()
    assert eng.idle.wait(2)
    assert eng.stats["denoise_passes"] == 1  # the job ran once and was retired, not replayed
    assert asyncio.run(eng.infill(req("next", max_tokens=8))).tokens == 8  # the worker still serves
    t0 = time.perf_counter()
    eng.close()
    assert time.perf_counter() - t0 < 1
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_job_whose_loop_closed_mid_way_takes_no_more_passes(slow_engine):
    side = asyncio.new_event_loop()
    thread = threading.Thread(target=side.run_forever)
    thread.start()

    async def submit():
        return slow_engine.submit(req("orphan"))

    asyncio.run_coroutine_threadsafe(submit(), side).result(5)
    side.call_soon_threadsafe(side.stop)
    thread.join()
    side.close()
    assert slow_engine.idle.wait(2)
    assert slow_engine.stats["denoise_passes"] < 200


async def test_one_failing_job_does_not_stall_or_replay_its_batch(tokenizer):
    eng = scripted_engine(tokenizer, lambda k: 300 if k < 4 else tokenizer.eom_id, pass_delay=0.002)
    bad = req("bad", max_tokens=8, threshold="high")  # slipped past validation: fails in its sampler step
    good = req("good", max_tokens=8)
    out = await asyncio.gather(eng.infill(bad), eng.infill(good), return_exceptions=True)
    assert isinstance(out[0], EngineError) and out[0].id == "bad"
    assert out[1].text and out[1].forward_passes == 1
    eng.close()


async def test_aclose_keeps_the_event_loop_running(tokenizer):
    eng = scripted_engine(tokenizer, lambda k: 300, confident=False, pass_delay=0.25)
    started = asyncio.Event()
    job = eng.submit(req(stream=True), on_update=lambda _: started.set())
    await started.wait()
    eng.model.in_pass.clear()
    assert await asyncio.to_thread(eng.model.in_pass.wait, 2)  # the worker is inside its next pass
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.create_task(ticker())
    await eng.aclose()  # the worker is inside a 0.25 s pass
    t.cancel()
    assert ticks >= 5
    with pytest.raises(Cancelled):
        await job.result()
    with pytest.raises(EngineError):
        eng.submit(req("late"))


class _ClientLoop:
    """An event loop in its own thread, as a client of the engine."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.closed = False

    def call(self, fn):
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(5)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()
        self.closed = True


@pytest.mark.parametrize("seed", range(24))
def test_random_interleavings_end_every_job_exactly_once(tokenizer, seed):
    rng = random.Random(seed)
    eng = scripted_engine(tokenizer, lambda k: 300, confident=False, pass_delay=0.0005, max_batch=4)
    loops = [_ClientLoop() for _ in range(2)]
    jobs = []  # (job, client loop, waiter task, outcomes, steps when cancelled)

    def submit(client: _ClientLoop, n: int):
        job = eng.submit(req(f"j{n}", max_tokens=rng.randint(2, 40)))
        outcomes: list[str] = []

        async def wait():
            try:
                await job.result()
                outcomes.append("result")
            except Cancelled:
                outcomes.append("cancelled")
            except asyncio.CancelledError:
                outcomes.append("caller-cancelled")
                raise
        return job, asyncio.ensure_future(wait()), outcomes

    engine_closed = False
    for n in range(16):
        action = rng.choice(["submit", "submit", "submit", "cancel", "task_cancel", "close_loop", "pause"])
        open_loops = [c for c in loops if not c.closed]
        if action == "submit" and open_loops:
            client = rng.choice(open_loops)
            try:
                job, task, outcomes = client.call(lambda c=client, n=n: submit(c, n))
            except EngineError:
                assert engine_closed
                continue
            jobs.append({"job": job, "client": client, "task": task, "outcomes": outcomes, "steps_at_cancel": None})
        elif action in ("cancel", "task_cancel") and jobs:
            j = rng.choice(jobs)

            def read_steps(j=j):  # after the cancel has reached the job: the worker may finish one pass
                if j["steps_at_cancel"] is None:
                    j["steps_at_cancel"] = j["job"]._request.middles[0].steps

            def cancel(j=j, action=action):
                if action == "cancel":
                    j["job"].cancel()
                    read_steps()
                else:  # the future's done-callbacks run on the loop's next turn: read after them
                    j["task"].cancel()
                    j["client"].loop.call_soon(read_steps)

            if action == "cancel":
                cancel()
            elif not j["client"].closed:
                j["client"].loop.call_soon_threadsafe(cancel)  # the caller's own loop cancels its task
        elif action == "close_loop" and len(open_loops) > 1:
            rng.choice(open_loops).close()
        time.sleep(rng.random() * 0.004)
        if not engine_closed and rng.random() < 0.04:
            eng.close()
            engine_closed = True
    # every waiter on a live loop finishes
    for c in loops:
        if not c.closed:
            tasks = [j["task"] for j in jobs if j["client"] is c]
            if tasks:
                asyncio.run_coroutine_threadsafe(asyncio.wait(tasks, timeout=10), c.loop).result(15)
    assert eng.idle.wait(5)  # the worker went idle: nothing left running for nobody
    for j in jobs:
        assert j["job"]._request.done, "every job ended in the engine"
        if not j["client"].closed:
            assert len(j["outcomes"]) == 1, j["outcomes"]  # exactly one outcome reached its caller
        if j["steps_at_cancel"] is not None:
            # at most the pass that was already running when it was cancelled
            assert j["job"]._request.middles[0].steps <= j["steps_at_cancel"] + 1
    eng.close()
    for c in loops:
        if not c.closed:
            c.close()


async def test_an_error_in_idle_work_does_not_make_the_worker_spin(tokenizer, caplog):
    # the idle worker's own work (prefilling a prefetched context) fails and, like the published-model decoder
    # once did, keeps its queue: the worker must drop that work instead of meeting the error on every turn
    eng = scripted_engine(tokenizer, text_script(tokenizer, " 1"))
    calls = []

    def broken(tokens):
        calls.append(tokens)
        raise RuntimeError("broken prefill")

    eng.decoder.prefill_ahead = broken
    eng.prefetch(InfillRequest("hint", "x = " * 200, "\n", max_tokens=8))
    time.sleep(0.3)
    assert eng.idle.wait(2)
    assert len(calls) == 1 and not eng.decoder.work_ahead
    assert "engine worker error" in caplog.text
    assert (await eng.infill(req("after", max_tokens=8))).text == " 1"  # the worker still serves
    eng.close()


async def test_freed_memory_goes_back_to_the_os_after_a_pause_not_between_requests(tokenizer, monkeypatch):
    # a trim costs the next request its page faults (~2.4 ms on 2 cores): not between keystrokes, only after
    # the worker has been idle for TRIM_AFTER_S
    import fim_server.engine as engine_mod

    monkeypatch.setattr(engine_mod, "TRIM_AFTER_S", 0.3)
    trims = []
    monkeypatch.setattr(engine_mod, "_release_memory", lambda: trims.append(time.perf_counter()))
    eng = scripted_engine(tokenizer, text_script(tokenizer, " 1"))
    for i in range(3):
        await eng.infill(req(f"r{i}", max_tokens=8))
    assert trims == []
    await asyncio.sleep(0.5)
    assert len(trims) == 1  # once per pause, however long it lasts
    eng.close()
