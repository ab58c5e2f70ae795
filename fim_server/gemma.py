"""DiffusionGemma (`transformers`' `DiffusionGemmaForBlockDiffusion`) in Diffill's engine: loading a directory,
the forward pass (transformers' own class) and the decoder that fills a middle with it.

How the model is conditioned (transformers' modeling and generation code): an encoder reads the prompt
(causal attention, Gemma 4's MoE text stack with sliding-window layers) into a KV cache; a decoder with the
same weights denoises a canvas of `canvas_length` tokens whose positions continue the prompt's, attending
bidirectionally within the canvas and to the cache (on sliding-window layers only to the cache's last
`sliding_window` tokens). The noise is uniform: a canvas starts as random tokens, and a token not accepted is
redrawn at random; each pass also gets the previous pass's logits (self-conditioning). There is no mask token
in what the model sees, and no fill-in-the-middle token.

Infilling layout, chosen from that conditioning: encoder = `<bos> [workspace chunks] suffix "\n" prefix`,
canvas = the middle, continuing the prefix. The prefix must come last: the canvas continues whatever the
prompt ends with, and the sliding-window layers (most of them) see only the prompt's last tokens, so the
prefix's end must be there. The suffix can then only come before it, as earlier text the model has read.
Placing it after the canvas by position ids was rejected: the sliding-window layers would then see the
suffix's tail instead of the prefix's end, and no canvas was ever trained to attend to cached keys at later
positions.

The answer's length: the model writes the middle, then (having read the suffix) tends to go on with the
suffix's own text, or ends the text with <eos>/<pad>. The middle is cut at whichever comes first: the first
committed end token (eos, pad and end-of-turn folded into one, as for the other families), or the first
complete line that repeats the suffix's first non-blank line (`echo_cut`). Never a fixed count: if neither
comes, the request's `max_tokens` (at most one canvas) is the limit, as for every family.

Decoding is Diffill's (fim_server/decoder.py): `m.slots` holds the live middle with the tokenizer's `<mask>`
id where a slot is not decided yet; on the way to the model every such slot becomes a fresh uniform-random
token (the model's noise), slots past the live middle are noise too (or <pad> once an end token was
committed: what generation writes after <eos>), and the previous pass's canvas logits are passed as the
self-conditioning signal. Committed slots stay fixed (confidence-threshold parallel commits, at least one per
pass), slots grow in blocks up to the budget, a syntax error is repaired once by re-masking around it, then
trimmed or dropped by the shared finalize path. The noise is seeded by the request id and pass number, so a
request's answer is reproducible.

Batching: the engine batches middles into one "pass", but here each middle runs its own decoder call (the
caches differ in length and sliding-window state); a batch of B costs B decoder calls. The encoder runs once
per request (admit): the canvas does not change the cache, so every pass reuses it exactly.

Not built: a second canvas (an answer longer than `canvas_length` tokens is cut there), reusing the encoder's
cache across requests (it is causal, so it could be exact like the embedded model's), the chat template of
instruction-tuned checkpoints, images.
"""

from __future__ import annotations

import importlib.util
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from fim_server.bidir import _NoCache
from fim_server.context import Context, Window, cut_window, extra_ids
from fim_server.decoder import DecodeConfig, Decoder, Middle
from fim_server.families import (
    DIFFUSION_GEMMA,
    ModelLoadError,
    PublishedTokenizer,
    load_tokenizer,
    read_config,
    weight_files,
)
from fim_server.shared.errors import RequestError


class GemmaLM:
    """A loaded DiffusionGemmaForBlockDiffusion: encode a prompt once, denoise canvases against it."""

    def __init__(self, hf: torch.nn.Module):
        self.hf = hf
        self.text_config = hf.config.get_text_config(decoder=True)
        self.canvas_length = int(hf.config.canvas_length)
        self.vocab_size = self.text_config.vocab_size
        self.device = hf.lm_head.weight.device
        self.dtype = hf.lm_head.weight.dtype

    @torch.inference_mode()
    def encode(self, ids: list[int]):
        """The prompt's KV cache (transformers' DynamicCache: sliding-window layers keep their window)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.text_config)
        x = torch.tensor([ids], device=self.device)
        self.hf.model.encoder(input_ids=x, cache=cache, position_ids=torch.arange(len(ids), device=self.device)[None])
        return cache

    @torch.inference_mode()
    def denoise(self, canvas: torch.Tensor, cache, start: int, sc_logits: torch.Tensor | None) -> torch.Tensor:
        """canvas (B, C) ids at positions start.. start+C-1, against `cache` (read, never written), with the
        previous pass's logits (B, C, V) or None -> logits (B, C, V) float, soft-capped as the model's head does."""
        pos = torch.arange(start, start + canvas.shape[1], device=self.device)[None].expand(canvas.shape[0], -1)
        out = self.hf(decoder_input_ids=canvas.to(self.device), cache=cache, decoder_position_ids=pos,
                      self_conditioning_logits=sc_logits)
        return out.logits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.hf.parameters())


@dataclass
class _CanvasState:
    """What a middle holds besides its slots (kept in `Middle.approx`, which is free for published models)."""

    cache: object  # the encoder's KV cache of m.ctx_ids
    sc_logits: torch.Tensor | None = None  # (1, C, V) in the model's dtype: the last pass's, for self-conditioning
    canvas: torch.Tensor | None = None  # (1, C) the last canvas the decoder saw (tests compare with transformers)


def echo_cut(text: str, suffix: str) -> int | None:
    """Where a middle that has gone on into the suffix's own text ends: the character offset in `text` to cut
    at, or None. The echo is a complete line of `text` (not its first, which continues the prefix's line) equal,
    stripped, to the suffix's first non-blank line; the cut keeps the whitespace before that line's text
    except what the suffix itself starts with, so middle + suffix reads as the model wrote it."""
    first = next((ln.strip() for ln in suffix.split("\n") if ln.strip()), "")
    if not first:
        return None
    start = text.find("\n") + 1
    while 0 < start:
        end = text.find("\n", start)
        if end < 0:
            return None  # the line is not complete yet: it may still become something else
        line = text[start:end]
        if line.strip() == first:
            echo = start + len(line) - len(line.lstrip())  # where the echoed line's text starts
            content_end = len(text[:start].rstrip())
            lead = suffix[: len(suffix) - len(suffix.lstrip())]  # the whitespace the suffix brings
            return echo - len(lead) if text[content_end:echo].endswith(lead) else content_end
        start = end + 1
    return None


class GemmaDecoder(Decoder):
    """fim_server.decoder.Decoder for DiffusionGemma: the same sampler steps, repair and results; its own prompt,
    canvas and forward pass (see the module docstring)."""

    def __init__(self, model: GemmaLM, tokenizer: PublishedTokenizer, *, device: str = "cpu",
                 config: DecodeConfig = DecodeConfig()):
        self.model, self.tok, self.device, self.config = model, tokenizer, device, config
        self.stats = {"prefill_tokens": 0, "reused_tokens": 0, "denoise_passes": 0}
        self.cache = _NoCache()
        beyond = range(tokenizer.vocab_size, model.vocab_size)  # embedding rows no token has
        self._banned = torch.tensor(sorted((tokenizer.special_ids - {tokenizer.eom_id}) | set(beyond)))
        self._ends = torch.tensor(sorted(tokenizer.end_ids))
        self._newline = tokenizer.encode("\n")
        self._batch_kv = None
        self._ahead = []  # stays empty: see warm

    def warm(self, req) -> None:
        """A prefetch hint is dropped: the encoder's cache is per request (not built: reuse across requests)."""

    # ---- the prompt ----------------------------------------------------------------------------------------
    def _prompt(self, prefix: str, suffix: str, heal: str, extra) -> tuple[list[int], Window]:
        """<bos> [workspace chunks] suffix ["\n"] prefix: the prefix last, so the canvas continues it."""
        head = [self.tok.bos_id] if self.tok.bos_id is not None else []
        budget = self.config.published_window - len(head) - len(self._newline)
        x_ids = extra_ids(self.tok, extra, int(budget * self.config.extra_share), self.tok.file_sep_id)
        w = cut_window(self.tok, prefix, suffix, budget - len(x_ids), self.config.suffix_share, heal)
        sep = self._newline if w.suffix_ids and not w.suffix.endswith("\n") else []
        return head + x_ids + w.suffix_ids + sep + w.prefix_ids, w

    def build_context(self, prefix: str, suffix: str, max_tokens: int, heal: str = "off", extra=()) -> Context:
        ids, w = self._prompt(prefix, suffix, heal, extra)
        return Context(ids, w.truncated, w.prefix, w.suffix, w.heal)

    def admit(self, m: Middle) -> int:
        req = m.req
        revise = m.revise_threshold is not None
        m.ctx_ids, w = self._prompt(req.prefix, req.suffix, "off" if revise else self.config.heal, req.extra)
        m.suffix_ids = w.suffix_ids
        m.context_truncated, m.window_prefix, m.window_suffix, m.heal = w.truncated, w.prefix, w.suffix, w.heal
        m.heal_tokens = len(self.tok.encode(m.heal)) if m.heal else 0
        m.cached_tokens, m.prefill_ms = 0, 0.0
        m.approx = _CanvasState(self.model.encode(m.ctx_ids))
        self.stats["prefill_tokens"] += len(m.ctx_ids)
        if revise:
            if len(m.original_ids) + 1 > self.model.canvas_length:
                m.approx = None
                raise RequestError(f"a revised region takes at most {self.model.canvas_length - 1} tokens here "
                                   f"(one canvas)", id=req.id)
            m.slots = self._revise_slots(m)
            return 1
        m.slots = self._first_slots(m)
        return 0

    def release(self, m: Middle) -> None:
        m.approx = None

    def _budget(self, m: Middle) -> int:
        """The request's tokens (with the healed prefix end), at most one canvas (a second is not built)."""
        return min(m.req.max_tokens + m.heal_tokens, self.model.canvas_length)

    # ---- the canvas and the forward pass ---------------------------------------------------------------
    def _canvas(self, slots: torch.Tensor, ended: bool, seed: str) -> torch.Tensor:
        """(1, C): the live slots with every undecided one a fresh uniform-random token (the model's noise), then
        noise up to the canvas, or <pad> after a committed end (what generation writes after <eos>)."""
        C = self.model.canvas_length
        g = torch.Generator().manual_seed(zlib.crc32(seed.encode()))
        noise = torch.randint(0, self.model.vocab_size, (C,), generator=g)
        canvas = noise.clone()
        n = slots.numel()
        canvas[:n] = torch.where(slots == self.tok.mask_id, noise[:n], slots)
        if ended:
            canvas[n:] = self.tok.pad_id
        return canvas[None]

    def _pass(self, m: Middle, slots: torch.Tensor, ended: bool, seed: str, sc: torch.Tensor | None):
        """One decoder call for one canvas built from `slots` -> (canvas (1, C), logits (1, C, V) float)."""
        canvas = self._canvas(slots, ended, seed)
        return canvas, self.model.denoise(canvas, m.approx.cache, len(m.ctx_ids), sc)

    def _masked_logits(self, batch: list[Middle]) -> torch.Tensor:
        out = []
        for m in batch:  # one decoder call per middle: see the module docstring
            st: _CanvasState = m.approx
            ended = bool((m.slots == self.tok.eom_id).any())
            st.canvas, logits = self._pass(m, m.slots, ended, f"{m.req.id}:{m.steps}", st.sc_logits)
            st.sc_logits = logits.to(self.model.dtype)
            masked = (m.slots == self.tok.mask_id).nonzero()[:, 0].to(logits.device)
            out.append(logits[0, masked])
        return self._unembed(torch.cat(out))

    def _rows_logits(self, m: Middle, rows: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """A revise region's strided scoring: one decoder call per row, without self-conditioning (a first pass)."""
        out = []
        for g, row in enumerate(rows):
            _, logits = self._pass(m, row, True, f"{m.req.id}:score:{g}", None)
            out.append(logits[0, masked[g].nonzero()[:, 0].to(logits.device)])
        return self._unembed(torch.cat(out))

    def _unembed(self, logits: torch.Tensor) -> torch.Tensor:
        """-> float on the CPU, every end-like token (eos, pad, end of turn) folded into <eom>: here they all end
        the middle."""
        logits = logits.float().cpu()
        logits[:, self.tok.eom_id] = torch.logsumexp(logits[:, self._ends], dim=-1)
        return logits

    # ---- where the middle ends ---------------------------------------------------------------------------
    def _resize(self, m: Middle) -> None:
        """The base rule (cut after <eom>, extend while full), after cutting a middle that has gone on into the
        suffix's text (`echo_cut`) with an <eom> where the echo starts."""
        if m.revise_threshold is None and not bool((m.slots == self.tok.eom_id).any()):
            lead = self._middle_ids(m)
            cut = echo_cut(self.tok.decode(lead), m.window_suffix)
            if cut is not None:
                spans = self.tok.token_char_spans(lead)
                keep = max(sum(1 for a, _ in spans if a < cut), m.frozen)  # a streamed draft is never taken back
                m.slots = torch.tensor(lead[:keep] + [self.tok.eom_id], dtype=torch.long)
        super()._resize(m)


# ---- loading ----------------------------------------------------------------------------------------------
def hf_config(cfg: dict, path: Path):
    """transformers' DiffusionGemmaConfig from config.json, as transformers itself reads it."""
    from transformers import DiffusionGemmaConfig

    if not isinstance(cfg.get("text_config"), dict):
        raise ModelLoadError(f"{path}/config.json: no text_config (a DiffusionGemma config holds one)")
    try:
        return DiffusionGemmaConfig.from_dict(cfg)
    except Exception as e:  # transformers' strict configs raise several exception types
        raise ModelLoadError(f"{path}/config.json: not a valid DiffusionGemma config ({e})") from None


def check_weights(path: Path, hcfg) -> None:
    """Every tensor of the checkpoint has a name and shape the config implies, and every weight the model has is
    there (tied weights once, under any of their names), read from the safetensors headers only. transformers'
    own loader would start a missing weight from random values with a warning; a server must refuse."""
    from safetensors import safe_open
    from transformers import DiffusionGemmaForBlockDiffusion

    with torch.device("meta"):
        meta = DiffusionGemmaForBlockDiffusion(hcfg)
    expected = meta.state_dict(keep_vars=True)  # every name a tied weight goes by, and persistent buffers
    groups: dict[int, list[str]] = {}
    for name, t in expected.items():
        groups.setdefault(id(t), []).append(name)
    found, unknown = set(), []
    for f in weight_files(path):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                if name not in expected:
                    unknown.append(name)
                    continue
                shape = tuple(st.get_slice(name).get_shape())
                if shape != tuple(expected[name].shape):
                    raise ModelLoadError(f"{path}: weight {name} has shape {shape}, but config.json implies "
                                         f"{tuple(expected[name].shape)}")
                found.add(name)
    missing = sorted(names[0] for names in groups.values() if not found.intersection(names))
    for what, names in (("weights missing", missing), ("weights this diffusion-gemma model does not have", unknown)):
        if names:
            more = f" (and {len(names) - 5} more)" if len(names) > 5 else ""
            raise ModelLoadError(f"{path}: {what}: {', '.join(names[:5])}{more}")


def load(path, device: str = "cpu", config: DecodeConfig = DecodeConfig(), dtype: torch.dtype | None = None):
    """-> (GemmaLM, PublishedTokenizer, GemmaDecoder) for a DiffusionGemma directory. Weights are checked here,
    then loaded by transformers' own `from_pretrained` from the local directory (ties, buffers, mmap); nothing
    is downloaded."""
    from transformers import DiffusionGemmaForBlockDiffusion

    path = Path(path)
    cfg = read_config(path)
    hcfg = hf_config(cfg, path)
    # the special ids live in text_config (eos may be a list: <eos> and end-of-turn)
    tok = load_tokenizer(path, DIFFUSION_GEMMA, {**cfg["text_config"], **cfg})
    if tok.vocab_size > hcfg.text_config.vocab_size:
        raise ModelLoadError(f"{path}: tokenizer has {tok.vocab_size} ids, the model's embedding only "
                             f"{hcfg.text_config.vocab_size}")
    check_weights(path, hcfg)
    if dtype is None:
        dtype = torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    # straight to the device needs `accelerate` (device_map); without it the weights pass through CPU memory
    placed = {"device_map": device} if importlib.util.find_spec("accelerate") else {}
    try:
        hf = DiffusionGemmaForBlockDiffusion.from_pretrained(str(path), config=hcfg, dtype=dtype, local_files_only=True,
                                                             **placed)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: transformers could not load the weights ({e})") from None
    lm = GemmaLM(hf.to(device).eval())
    return lm, tok, GemmaDecoder(lm, tok, device=device, config=config)
