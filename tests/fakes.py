"""A scripted stand-in for the model, injected into a real Engine: the engine's logic (scheduling, lifecycle,
sampler steps, repair) is tested with answers chosen by the test, without patching the engine.

`ScriptedModel(vocab_size, script)` answers slot k of a middle (k counted from the middle's first slot) with
token `script(k)` at probability ~1, so every slot commits in the first pass; with `confident=False` every
slot is only just most likely (~0.2), so the sampler commits one slot per pass (a long-running job).
`pass_delay` seconds of sleep per forward pass stand in for compute on a real model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class _Cfg:
    vocab_size: int
    max_seq_len: int = 1024
    n_layers: int = 1


class ScriptedModel:
    def __init__(self, vocab_size: int, script: Callable[[int], int], *, confident: bool = True,
                 pass_delay: float = 0.0):
        self.cfg = _Cfg(vocab_size)
        self.script, self.confident, self.pass_delay = script, confident, pass_delay
        self.passes = 0
        self.in_pass = threading.Event()  # set when a forward pass starts

    def prefill(self, ids: torch.Tensor, past=None):
        zeros = torch.zeros(ids.shape[0], 1, ids.shape[1], 1)
        if past is None:
            return [(zeros, zeros)]
        return [(torch.cat([past[0][0], zeros], dim=2), torch.cat([past[0][1], zeros], dim=2))]

    def prefill_with_slots(self, ids: torch.Tensor, slots: torch.Tensor, past=None):
        """The prefill and the first pass in one call, as the real model makes them."""
        kv = self.prefill(ids, past)
        t = kv[0][0].shape[2]
        return kv, self.denoise_hidden(slots, torch.arange(t, t + slots.shape[1])[None], kv, None)

    def denoise_hidden(self, slots: torch.Tensor, positions: torch.Tensor, ctx, mask) -> torch.Tensor:
        """(B, M) -> (B, M, 1): each slot's index within its middle (positions start at the context's length)."""
        self.passes += 1
        self.in_pass.set()
        if self.pass_delay:
            time.sleep(self.pass_delay)
        return (positions - positions[:, :1]).float()[..., None]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(N, 1) slot indices -> (N, V): the scripted token far ahead (or only just ahead) of the rest."""
        out = torch.zeros(h.shape[0], self.cfg.vocab_size)
        lead = 30.0 if self.confident else 1.6
        for row, k in enumerate(h[:, 0].round().long().tolist()):
            out[row, self.script(k)] = lead
        return out


def scripted_engine(tokenizer, script: Callable[[int], int], *, confident: bool = True, pass_delay: float = 0.0,
                    **config):
    """A real Engine around a ScriptedModel. `config`: EngineConfig fields."""
    from fim_server.engine import Engine, EngineConfig

    model = ScriptedModel(tokenizer.vocab_size, script, confident=confident, pass_delay=pass_delay)
    return Engine(model, tokenizer, name="scripted", config=EngineConfig(**config))


def text_script(tokenizer, answer: str) -> Callable[[int], int]:
    """A script that writes `answer` and then ends (<eom>)."""
    ids = tokenizer.encode(answer)
    return lambda k: ids[k] if k < len(ids) else tokenizer.eom_id
