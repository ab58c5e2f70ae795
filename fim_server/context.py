"""The context a middle is denoised against: which tokens (`build_context`) and their keys/values, reused
across requests that share a token prefix (`ContextCache`).

Contract: `build_context` is pure (tokenizer in, ids out; with token healing, also the text the middle
must start with). `ContextCache.prefill(ids)` returns the context's
KV, computing only the tokens after the longest common prefix with any cached context (and, given a middle's
masked slots, their first denoising pass in the same forward); it is used by one
thread only (the engine's worker). The context is causal, so a cached prefix's keys/values are exactly what a
full prefill would compute (tests/test_model.py): typing at the cursor only appends to the context.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import torch

from fim_server.model import KV, FIMDiffusionModel
from fim_server.tokenizer import Tokenizer

PREFIX_CUT_STEP = 64  # tokens: the prefix window's left edge moves in steps this size while typing
# a cached context that a new one shares all but its last few tokens with (typing appended to its prefix, or a
# backspace) is dropped: each document being typed in holds one entry, not one per keystroke (measured with
# 16 documents typed at once: 26% of keystrokes found their context cached before this)
SUPERSEDED_TAIL = 4


class Context(NamedTuple):
    ids: list[int]  # [workspace chunks] <suf> suffix <pre> prefix <mid>
    truncated: bool  # some of the prefix or suffix did not fit the window
    prefix: str  # the prefix text the ids hold (without `heal`)
    suffix: str  # the suffix text the ids hold
    heal: str = ""  # the prefix's last characters, moved into the middle: its text must start with them


HEAL_MODES = ("off", "whitespace", "token")


def heal_count(tok: Tokenizer, p_ids: list[int], mode: str) -> int:
    """How many of the prefix's last tokens to move into the middle ("token healing").

    The byte-level BPE merges a newline with the indentation after it ("\n   " + " return"), so a prefix
    that ends in a bare "\n" or in "\n" + indentation is a token sequence the model hardly ever saw, and it
    answers <eom> at once. Cutting the prefix before that whitespace and asking for a middle that starts
    with it lets the model choose the tokenization it knows. "whitespace": trailing whitespace holding a
    newline, or a last whitespace token that a longer token extends; "token": also any other last token
    that a longer token extends (a cursor after "." or "(" or inside a word)."""
    if mode == "off" or not p_ids:
        return 0
    texts, n = tok.texts, len(p_ids)
    for k in range(1, min(n, 3) + 1):
        t = texts[p_ids[n - k]]
        if not t.isspace():
            break
        if "\n" in t or "\r" in t:
            return k
    last = p_ids[-1]
    if last in tok.extendable_ids and (mode == "token" or texts[last].isspace()):
        return 1
    return 0


class Window(NamedTuple):
    prefix_ids: list[int]
    suffix_ids: list[int]
    truncated: bool
    prefix: str
    suffix: str
    heal: str


def build_context(tok: Tokenizer, prefix: str, suffix: str, max_tokens: int, max_seq_len: int,
                  suffix_share: float = 0.25, heal: str = "off", extra: Sequence = (),
                  extra_share: float = 0.5) -> Context:
    """Context ids `<suf> suffix <pre> prefix <mid>` within the model's window, keeping the text nearest
    the cursor (end of prefix, start of suffix); with `heal` (HEAL_MODES), the prefix's last tokens may move
    into the middle (see `heal_count`).

    The cut points stay put while the user types at the cursor, so the context cache keeps hitting:
    the suffix's share does not depend on the prefix's length once the window is full, and the prefix
    is cut in steps of PREFIX_CUT_STEP tokens (and its text in steps of 2048 characters), not one token
    per keystroke. Measured before this: every keystroke in a file longer than the window missed the
    cache and paid a full prefill (~40 ms of a ~70 ms request)."""
    budget = max_seq_len - min(max_tokens + 1, 128) - 3
    x_ids = extra_ids(tok, extra, int(budget * extra_share), tok.file_sep_id)
    w = cut_window(tok, prefix, suffix, budget - len(x_ids), suffix_share, heal)
    ids = [*x_ids, tok.suffix_id, *w.suffix_ids, tok.prefix_id, *w.prefix_ids, tok.middle_id]
    return Context(ids, w.truncated, w.prefix, w.suffix, w.heal)


def extra_ids(tok: Tokenizer, extra: Sequence, budget: int, sep_id: int | None) -> list[int]:
    """Workspace chunks (`ExtraChunk`s, most relevant last) as context ids, at most `budget` of them: each
    chunk is `<file_sep> path "\n" text` (without a separator token: its text alone), whole chunks only,
    kept from the most relevant back. They come first in the context, so while they do not change their
    keys/values stay in the context cache as the user types."""
    if not extra or budget <= 0:
        return []
    bodies = []
    for c in extra:
        body = (f"{c.path}\n" if c.path and sep_id is not None else "") + c.text[: budget * 8]
        bodies.append(body if body.endswith("\n") else body + "\n")
    out: list[int] = []
    for ids in reversed(tok.encode_batch(bodies)):
        ids = ([sep_id] if sep_id is not None else []) + ids
        if len(out) + len(ids) <= budget:
            out = ids + out
    return out


def cut_window(tok: Tokenizer, prefix: str, suffix: str, budget: int, suffix_share: float = 0.25,
               heal: str = "off") -> Window:
    """The prefix's and suffix's tokens nearest the cursor, `budget` tokens in all (see build_context: the
    cut points move in steps while the user types), with the healed prefix end split off."""
    # bound tokenizer work on huge documents (no token is shorter than one character), at stable cuts
    start = max(0, len(prefix) - budget * 8) // 2048 * 2048
    if start:
        nl = prefix.find("\n", start)
        start = nl + 1 if 0 <= nl < start + 256 else start
    p_text, s_text = prefix[start:], suffix[: budget * 8]
    p_ids, s_ids = tok.encode_batch([p_text, s_text])
    truncated = start > 0 or len(s_text) < len(suffix)
    if len(p_ids) + len(s_ids) > budget:
        truncated = True
        room = (budget - len(p_ids)) // PREFIX_CUT_STEP * PREFIX_CUT_STEP  # moves every STEP tokens
        s_ids = s_ids[: min(len(s_ids), max(int(budget * suffix_share), room))]
        over = len(p_ids) - (budget - len(s_ids))
        if over > 0:
            drop = -(-over // PREFIX_CUT_STEP) * PREFIX_CUT_STEP  # ceil(over / STEP) * STEP
            p_ids = p_ids[drop:]
    p_win = tok.decode(p_ids) if truncated else prefix
    s_win = tok.decode(s_ids) if truncated else suffix
    healed = ""
    k = heal_count(tok, p_ids, heal)
    if k:
        healed = tok.decode(p_ids[-k:])
        if p_win.endswith(healed) and "\ufffd" not in healed:
            p_ids, p_win = p_ids[:-k], p_win[: len(p_win) - len(healed)]
        else:
            healed = ""
    return Window(p_ids, s_ids, truncated, p_win, s_win, healed)


class ContextCache:
    """The causal context's KV for the last `entries` contexts, reused by longest common token prefix."""

    def __init__(self, model: FIMDiffusionModel, device: str, entries: int, stats: dict[str, int]):
        self.model, self.device, self.entries, self.stats = model, device, entries, stats
        self._kv: OrderedDict[tuple[int, ...], KV] = OrderedDict()

    def clear(self) -> None:
        self._kv.clear()

    def _best(self, key: tuple[int, ...]) -> tuple[tuple[int, ...] | None, int]:
        """The cached context sharing the longest token prefix with `key`, and that length."""
        best, best_len = None, 0
        for k in self._kv:
            n = _common_prefix(k, key)
            if n > best_len:
                best, best_len = k, n
        return best, best_len

    def reusable(self, ids: list[int]) -> int:
        """How many of `ids`' leading tokens a prefill would take from the cache (nothing is computed)."""
        return min(self._best(tuple(ids))[1], len(ids) - 1)

    def prefill(self, ids: list[int], slots: torch.Tensor | None = None) -> tuple[KV, int, torch.Tensor | None]:
        """-> (the context's KV, how many of its tokens came from the cache, and with `slots` (M,) the hidden
        states (M, D) of a first denoising pass over them, made in the same forward: `model.prefill_with_slots`)."""
        key = tuple(ids)
        best, best_len = self._best(key)
        best_len = min(best_len, len(ids) - 1)  # always recompute at least <fim_middle>
        x = torch.tensor([ids[best_len:]], device=self.device)
        past = None
        if best is not None and best_len > 0:
            past = [(k[:, :, :best_len], v[:, :, :best_len]) for k, v in self._kv[best]]
            self._kv.move_to_end(best)
        else:
            best_len = 0
        h = None
        if slots is None:
            kv = self.model.prefill(x, past=past)
        else:
            kv, h = self.model.prefill_with_slots(x, slots[None].to(self.device), past=past)
            h = h[0]
        self.stats["prefill_tokens"] += len(ids) - best_len
        self.stats["reused_tokens"] += best_len
        if best is not None and best_len >= len(best) - SUPERSEDED_TAIL and best != key:
            del self._kv[best]  # the same document one keystroke back: this context takes its place
        self._kv[key] = kv
        self._kv.move_to_end(key)
        while len(self._kv) > self.entries:
            self._kv.popitem(last=False)
        return kv, best_len, h


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    ta, tb = torch.tensor(a[:n]), torch.tensor(b[:n])
    diff = (ta != tb).nonzero()
    return n if diff.numel() == 0 else int(diff[0, 0])
