"""The scheduler's fairness and bounds, as pure bookkeeping (fim_server/scheduler.py)."""

from fim_server.scheduler import FairScheduler


def admit_all(s: FairScheduler) -> list[list[str]]:
    groups = []
    for group in s.admissions():
        groups.append(group)
        for p in group:
            s.activate(p[0], p)
    return groups


def test_a_heavy_owner_does_not_crowd_out_a_light_one():
    s = FairScheduler(max_batch=4, max_active=8)
    s.add("heavy", [("heavy", i) for i in range(64)])  # one connection's 64-hole edit
    s.add("light", [("light", 0)])  # another's single-line completion, sent after it
    groups = admit_all(s)
    assert ("light", 0) in [p for g in groups for p in g]  # admitted at once, not after the 64 holes
    assert s.n_active == 8  # memory bound: never more than max_active admitted
    for _ in range(5):  # and it is in every pass, not every 64/4th
        assert ("light", 0) in s.batch()


def test_a_request_is_admitted_whole_when_it_fits():
    s = FairScheduler(max_batch=16, max_active=32)
    s.add("a", [("a", i) for i in range(8)])
    assert admit_all(s) == [[("a", i) for i in range(8)]]  # an edit's 8 regions start together
    assert s.batch() == [("a", i) for i in range(8)]


def test_owners_take_turns_and_a_stable_batch_keeps_its_order():
    s = FairScheduler(max_batch=2, max_active=8)
    for o in "abc":
        s.add(o, [(o, 0), (o, 1)])
    admit_all(s)
    seen = [tuple(p[0] for p in s.batch()) for _ in range(3)]
    assert sorted(o for b in seen for o in b) == sorted("aabbcc")  # each owner twice in three passes
    small = FairScheduler(max_batch=4, max_active=8)
    small.add("a", [("a", 0), ("a", 1)])
    admit_all(small)
    assert small.batch() == small.batch() == [("a", 0), ("a", 1)]  # same members, same order


def test_prune_drops_ended_parts_waiting_or_admitted():
    s = FairScheduler(max_batch=4, max_active=2)
    s.add("a", [("a", i) for i in range(4)])
    admit_all(s)
    s.prune(lambda p: p[1] % 2 == 0)
    assert sorted(s.parts()) == [("a", 0), ("a", 2)]
    s.prune(lambda p: False)
    assert s.empty()


def test_a_newcomer_gets_in_when_a_heavy_owner_has_filled_the_room():
    s = FairScheduler(max_batch=4, max_active=8)
    s.add("heavy", [("heavy", i) for i in range(64)])
    admit_all(s)
    assert s.n_active == 8  # alone, it may take all the room
    s.add("light", [("light", 0)])
    assert admit_all(s) == [[("light", 0)]]  # one in over the bound, at once
    assert s.n_active == 9 and ("light", 0) in s.batch()
