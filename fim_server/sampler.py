"""Sampling for masked diffusion: pure functions on tensors, no state, no model.

One denoising step over a middle of M slots (a 1-D tensor of ids, `mask_id` where still masked):
1. the model gives logits at the masked slots only (the engine unembeds nothing else);
2. `propose` picks a token per masked slot and its confidence (greedy argmax by default; with a
   temperature, Gumbel-max sampling and the sampled token's probability as confidence);
3. `choose_commits` commits every slot whose confidence is >= threshold tau (Fast-dLLM, Wu et al. 2025,
   "confidence-aware parallel decoding", sec. 3.3) and always at least `min_commit` of the most confident
   ones, so every step makes progress; committed tokens are never re-masked;
4. `apply_eom` turns everything after the first committed <eom> into padding: the live middle shrinks and
   those slots cost nothing more;
5. `needs_extension` says when every live slot is committed, no <eom> came and the token budget allows
   more: the engine appends masked slots and goes on.

`min_commit_for(n_masked, steps_left)` implements the per-request step cap (test-time compute knob): with
s steps left and n slots masked, commit at least ceil(n / s) per step so the budget is met exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def propose(logits: Tensor, temperature: float = 0.0, generator: torch.Generator | None = None
            ) -> tuple[Tensor, Tensor]:
    """logits (N, V) at masked slots -> (tokens (N,), confidence (N,)) with confidence in [0, 1]."""
    probs = torch.softmax(logits.float(), dim=-1)  # (N, V)
    if temperature <= 0.0:
        conf, tokens = probs.max(dim=-1)
        return tokens, conf
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1.0)
    tokens = (logits.float() / temperature - torch.log(-torch.log(u))).argmax(dim=-1)  # Gumbel-max
    return tokens, probs.gather(-1, tokens[:, None])[:, 0]


def min_commit_for(n_masked: int, steps_left: int | None) -> int:
    """At least one per step; with a step budget, enough that the budget is met."""
    if n_masked <= 0:
        return 0
    if steps_left is None or steps_left <= 0:
        return 1 if steps_left is None else n_masked
    return max(1, math.ceil(n_masked / steps_left))


def choose_commits(confidence: Tensor, threshold: float, min_commit: int) -> Tensor:
    """confidence (N,) -> bool (N,): slots at or above the threshold, plus the top `min_commit`."""
    commit = confidence >= threshold
    k = min(min_commit, confidence.numel())
    if k > 0 and int(commit.sum()) < k:
        commit[confidence.topk(k).indices] = True
    return commit


def end_slot(tokens: Tensor, confidence: Tensor, eom_id: int, eom_threshold: float) -> int | None:
    """Index (into the masked slots) of the leftmost proposal of <eom> with confidence >= eom_threshold.

    Slot k's <eom> probability is the model's marginal belief that the middle has ended by slot k, which
    grows with k; the leftmost slot where it crosses 1/2 is the median length. Committing there at once
    cuts the padding after it in one step, instead of one unsure <eom> per step from the far end (measured
    on the default model: 27-32 passes for 3-token middles at tau = 0.9 without it)."""
    hits = ((tokens == eom_id) & (confidence >= eom_threshold)).nonzero()
    return None if hits.numel() == 0 else int(hits[0, 0])


def denoise_step(slots: Tensor, logits: Tensor, *, mask_id: int, threshold: float, min_commit: int = 1,
                 temperature: float = 0.0, generator: torch.Generator | None = None,
                 eom_id: int | None = None, eom_threshold: float = 1.01) -> tuple[Tensor, int]:
    """One step on one middle. slots (M,) with `mask_id` at masked slots; logits (N, V) for those N masked
    slots in order. Returns (new slots, number committed). Committed slots are never changed.
    With `eom_id`, the leftmost <eom> proposed with confidence >= eom_threshold is committed too."""
    masked = (slots == mask_id).nonzero()[:, 0]  # (N,)
    assert masked.numel() == logits.shape[0], "logits must cover exactly the masked slots"
    tokens, conf = propose(logits, temperature, generator)
    commit = choose_commits(conf, threshold, min_commit)
    if eom_id is not None:
        k = end_slot(tokens, conf, eom_id, eom_threshold)
        if k is not None:
            commit[k] = True
    out = slots.clone()
    out[masked[commit]] = tokens[commit]
    return out, int(commit.sum())


def apply_eom(slots: Tensor, eom_id: int) -> tuple[Tensor, bool]:
    """Cut the middle after its first committed <eom> (kept as the last live slot).
    -> (live slots, whether an <eom> was committed)."""
    hits = (slots == eom_id).nonzero()
    if hits.numel() == 0:
        return slots, False
    return slots[: int(hits[0, 0]) + 1], True


def needs_extension(slots: Tensor, *, mask_id: int, ended: bool, max_tokens: int) -> int:
    """How many masked slots to append (0 = none): all committed, no <eom>, budget left."""
    if ended or bool((slots == mask_id).any()):
        return 0
    return max(0, max_tokens - slots.numel())


def middle_tokens(slots: Tensor, *, mask_id: int, eom_id: int) -> list[int]:
    """The committed text tokens of a middle in order, up to <eom> or the first still-masked slot (a
    streaming draft shows the part the user could already accept, never text with holes in it)."""
    out = []
    for t in slots.tolist():
        if t == eom_id or t == mask_id:
            break
        out.append(t)
    return out
