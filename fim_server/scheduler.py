"""Which middles the engine admits (prefills) and which it denoises in the next batched pass, fair across
owners (a websocket connection, or each request of its own). Pure bookkeeping: no torch, no threads; the
engine's worker is its only user.

Contract:
- `add(owner, parts)` queues a new request's middles; nothing is computed for them yet.
- `admissions()` yields groups of waiting parts to prefill — a request's middles together, so an edit's
  regions share their passes from the first — taking owners in turn, while fewer than `max_active` middles
  are admitted (a request larger than the room is admitted in pieces). The memory the engine holds is
  bounded by `max_active` (+ `max_batch` newcomers) contexts however many regions a connection sends:
  each admitted middle holds its context's keys/values, about 12 KB per context token for the default
  model (~12 MB for a full window).
- `batch()` picks up to `max_batch` admitted parts for one pass, one per owner in turn, so a small request's
  wait does not grow with another owner's queue; the owner that went first goes last next time. Within an
  owner, its oldest admitted middles go first (they finish, then the next ones get their places).
- `prune(keep)` drops the parts (waiting or admitted) that have ended.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from itertools import count
from typing import Any, Generic, TypeVar

P = TypeVar("P")


class FairScheduler(Generic[P]):
    def __init__(self, max_batch: int, max_active: int):
        self.max_batch, self.max_active = max_batch, max_active
        self._waiting: OrderedDict[Any, deque[list[P]]] = OrderedDict()  # per owner, its requests' parts
        self._active: OrderedDict[Any, list[tuple[int, P]]] = OrderedDict()  # (admission order, part)
        self._seq = count()

    def add(self, owner: Any, parts: list[P]) -> None:
        if parts:
            self._waiting.setdefault(owner, deque()).append(list(parts))

    @property
    def n_active(self) -> int:
        return sum(len(v) for v in self._active.values())

    def has_waiting(self) -> bool:
        return any(self._waiting.values())

    def empty(self) -> bool:
        return not self.n_active and not self.has_waiting()

    def parts(self) -> list[P]:
        """Every part, admitted or waiting."""
        return [p for v in self._active.values() for _, p in v] + \
            [p for q in self._waiting.values() for group in q for p in group]

    def admissions(self) -> Iterator[list[P]]:
        """Groups of waiting parts to admit, owners in turn. The caller admits each part and calls `activate`
        for those that need passes before asking for the next group.

        While others wait, an owner gets at most its share (max_active / owners) of the room; alone, it may
        take all of it. An owner with nothing admitted gets one middle in even when the room is full (up to
        max_batch over max_active), so a newcomer's completion starts now, not when a heavy edit ends."""
        while self._waiting:
            # owners with nothing admitted first (a newcomer's completion), then in turn
            owners = sorted(self._waiting, key=lambda o: bool(self._active.get(o)))
            busy = {o for o, v in self._active.items() if v} | set(owners)
            share = max(1, self.max_active // len(busy))
            for owner in owners:
                mine = len(self._active.get(owner, ()))
                room = self.max_active - self.n_active
                if mine == 0 and self.n_active < self.max_active + self.max_batch:
                    room = max(room, 1)
                take = min(room, share - mine) if len(owners) > 1 else room
                if take > 0:
                    break
            else:
                return  # no room for anyone
            q = self._waiting[owner]
            group = q[0][:take]
            del q[0][:take]
            if not q[0]:
                q.popleft()
            self._waiting.move_to_end(owner)  # the next admission goes to another owner first
            if not q:
                del self._waiting[owner]
            yield group

    def put_back(self, owner: Any, parts: list[P]) -> None:
        """Parts of a group the caller did not admit after all: first in their owner's line again."""
        if parts:
            self._waiting.setdefault(owner, deque()).appendleft(list(parts))

    def activate(self, owner: Any, part: P) -> None:
        self._active.setdefault(owner, []).append((next(self._seq), part))

    def batch(self) -> list[P]:
        owners = [o for o, v in self._active.items() if v]
        taken = {o: 0 for o in owners}
        chosen: list[tuple[int, P]] = []
        while len(chosen) < self.max_batch and any(taken[o] < len(self._active[o]) for o in owners):
            for o in owners:
                if taken[o] < len(self._active[o]) and len(chosen) < self.max_batch:
                    chosen.append(self._active[o][taken[o]])
                    taken[o] += 1
        if owners:  # owners take turns; within an owner, its oldest middles keep their places until done,
            self._active.move_to_end(owners[0])  # so the batch's members (and stacked context) change rarely
        # admission order, so that a batch with the same members is the same batch (its stacked context is reused)
        return [p for _, p in sorted(chosen, key=lambda sp: sp[0])]

    def prune(self, keep: Callable[[P], bool]) -> None:
        for o in list(self._active):
            self._active[o] = [sp for sp in self._active[o] if keep(sp[1])]
            if not self._active[o]:
                del self._active[o]
        for o in list(self._waiting):
            q = deque(kept for group in self._waiting[o] if (kept := [p for p in group if keep(p)]))
            if q:
                self._waiting[o] = q
            else:
                del self._waiting[o]
