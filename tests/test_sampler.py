"""Sampler semantics on hand-made logits: threshold, at least one commit, eom cut, extension, step budget."""

import math

import torch

from fim_server import sampler

MASK, EOM, V = 0, 1, 6


def logits_for(probs_rows):
    """Rows of probabilities over V tokens -> logits whose softmax is exactly those probabilities."""
    return torch.log(torch.tensor(probs_rows, dtype=torch.float32).clamp_min(1e-9))


def row(tok, p):
    r = [(1 - p) / (V - 1)] * V
    r[tok] = p
    return r


def test_commits_every_slot_at_or_above_threshold():
    slots = torch.tensor([MASK, MASK, MASK])
    lg = logits_for([row(2, 0.95), row(3, 0.5), row(4, 0.91)])
    out, n = sampler.denoise_step(slots, lg, mask_id=MASK, threshold=0.9)
    assert out.tolist() == [2, MASK, 4] and n == 2


def test_at_least_one_commit_when_nothing_is_confident():
    slots = torch.tensor([MASK, MASK, MASK])
    lg = logits_for([row(2, 0.3), row(3, 0.6), row(4, 0.4)])
    out, n = sampler.denoise_step(slots, lg, mask_id=MASK, threshold=0.9)
    assert out.tolist() == [MASK, 3, MASK] and n == 1


def test_committed_tokens_stay():
    slots = torch.tensor([5, MASK, 4])
    lg = logits_for([row(2, 0.99)])  # only the masked slot gets logits
    out, _ = sampler.denoise_step(slots, lg, mask_id=MASK, threshold=0.9)
    assert out.tolist() == [5, 2, 4]


def test_step_budget_forces_enough_commits():
    assert sampler.min_commit_for(10, 3) == math.ceil(10 / 3)
    assert sampler.min_commit_for(10, None) == 1
    assert sampler.min_commit_for(4, 0) == 4  # budget spent: commit everything left
    slots = torch.full((6,), MASK)
    lg = logits_for([row(2, 0.2)] * 6)
    out, n = sampler.denoise_step(slots, lg, mask_id=MASK, threshold=0.99, min_commit=sampler.min_commit_for(6, 2))
    assert n == 3 and int((out == MASK).sum()) == 3


def test_eom_cuts_everything_after_it():
    slots = torch.tensor([3, EOM, MASK, MASK, 4])
    live, ended = sampler.apply_eom(slots, EOM)
    assert live.tolist() == [3, EOM] and ended


def test_leftmost_confident_eom_is_committed_in_one_step():
    slots = torch.full((5,), MASK)
    lg = logits_for([row(2, 0.4), row(EOM, 0.6), row(EOM, 0.7), row(EOM, 0.8), row(EOM, 0.85)])
    out, _ = sampler.denoise_step(slots, lg, mask_id=MASK, threshold=0.9, eom_id=EOM, eom_threshold=0.5)
    live, ended = sampler.apply_eom(out, EOM)
    assert ended and live.tolist() == [MASK, EOM]  # slot 0 still to fill; the padding is gone


def test_extension_only_when_full_without_eom():
    full = torch.tensor([2, 3, 4])
    assert sampler.needs_extension(full, mask_id=MASK, ended=False, max_tokens=10) == 7
    assert sampler.needs_extension(full, mask_id=MASK, ended=False, max_tokens=3) == 0
    assert sampler.needs_extension(torch.tensor([2, EOM]), mask_id=MASK, ended=True, max_tokens=10) == 0
    assert sampler.needs_extension(torch.tensor([2, MASK]), mask_id=MASK, ended=False, max_tokens=10) == 0


def test_greedy_is_deterministic_and_temperature_samples():
    lg = logits_for([[0.0, 0.0, 0.3, 0.3, 0.2, 0.2]] * 64)
    t1, _ = sampler.propose(lg)
    t2, _ = sampler.propose(lg)
    assert torch.equal(t1, t2)
    g = torch.Generator().manual_seed(0)
    ts, conf = sampler.propose(lg, temperature=1.0, generator=g)
    assert len(set(ts.tolist())) > 1  # sampling spreads over the likely tokens
    assert torch.all(conf > 0) and torch.all(conf <= 1)


def test_draft_stops_at_first_hole_and_at_eom():
    assert sampler.middle_tokens(torch.tensor([2, 3, MASK, 4]), mask_id=MASK, eom_id=EOM) == [2, 3]
    assert sampler.middle_tokens(torch.tensor([2, EOM, 4]), mask_id=MASK, eom_id=EOM) == [2]
