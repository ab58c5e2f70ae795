"""Byte-level BPE tokenizer for code, with the special tokens the fill-in-the-middle diffusion model needs.

Contract: special-token ids are read from the tokenizer file by name (`Tokenizer.mask_id`, ...), never
written as literals anywhere else. `encode` never adds special tokens; `decode` drops them. Byte-level means
every string round-trips exactly, including invalid-looking Unicode and mixed line endings, and a model can
emit a partial UTF-8 sequence only as an intermediate draft (decode then shows U+FFFD until it completes).

Known limit: text that literally contains one of the special-token strings below (e.g. "<|mask|>") is
encoded as that special token; they are chosen to be rare in real code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD = "<|pad|>"
MASK = "<|mask|>"
EOM = "<|eom|>"  # end of middle: the model writes it where the infill ends
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FILE_SEP = "<|file_sep|>"
SPECIAL_TOKENS = (PAD, MASK, EOM, FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FILE_SEP)


class Tokenizer:
    """A thin wrapper that names the special ids and keeps encode/decode free of special-token surprises."""

    def __init__(self, tk: _HFTokenizer):
        self._tk = tk
        ids = {}
        for tok in SPECIAL_TOKENS:
            i = tk.token_to_id(tok)
            if i is None:
                raise ValueError(f"tokenizer has no {tok!r} token; not a Diffill tokenizer")
            ids[tok] = i
        self.pad_id = ids[PAD]
        self.mask_id = ids[MASK]
        self.eom_id = ids[EOM]
        self.prefix_id = ids[FIM_PREFIX]
        self.suffix_id = ids[FIM_SUFFIX]
        self.middle_id = ids[FIM_MIDDLE]
        self.file_sep_id = ids[FILE_SEP]
        self.special_ids = frozenset(ids.values())

    @classmethod
    def from_file(cls, path: str | Path) -> Tokenizer:
        return cls(_HFTokenizer.from_file(str(path)))

    def save(self, path: str | Path) -> None:
        self._tk.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_offsets_batch(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Per text: ids and each token's (start, end) character offsets in it (the tokens of a character split
        across byte pieces share its offsets)."""
        return [(e.ids, e.offsets) for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tk.decode([i for i in ids if i not in self.special_ids], skip_special_tokens=False)

    # ---- the vocabulary as text, for token healing (fim_server/context.py) ----------------------------------
    @cached_property
    def texts(self) -> tuple[str, ...]:
        """Each id's text; "" for special tokens and for byte pieces that are not whole characters."""
        out = []
        for i in range(self.vocab_size):
            t = "" if i in self.special_ids else self._tk.decode([i])
            out.append("" if "\ufffd" in t else t)
        return tuple(out)

    @cached_property
    def extendable_ids(self) -> frozenset[int]:
        """Ids whose text is a proper prefix of another token's text: a cut right after one of them may fall
        inside what the tokenizer would have merged into a longer token."""
        order = sorted((t, i) for i, t in enumerate(self.texts) if t)
        return frozenset(i for (t, i), (nxt, _) in zip(order, order[1:]) if nxt.startswith(t) and nxt != t)

    @lru_cache(maxsize=256)  # noqa: B019 - one tokenizer per process; the keys are short heal strings
    def compatible_ids(self, text: str) -> np.ndarray:
        """Bool (V,): tokens that can start `text` or start with it (t.startswith(text) or text.startswith(t)):
        the tokens a middle whose text must begin with `text` may have in its next slot."""
        return np.array([bool(t) and (t.startswith(text) or text.startswith(t)) for t in self.texts])

    def token_char_spans(self, ids: Sequence[int]) -> list[tuple[int, int]]:
        """(start, end) character offsets of each token in decode(ids); specials have empty spans.

        Computed by decoding growing prefixes, so a token that ends inside a multi-byte character gets the
        character once its last byte arrives. O(n^2) in len(ids): meant for middles (tens of tokens).
        """
        spans, prev, kept = [], 0, []
        for i in ids:
            if i not in self.special_ids:
                kept.append(i)
            n = len(self._tk.decode(kept).rstrip("\ufffd"))
            spans.append((prev, max(prev, n)))
            prev = max(prev, n)
        return spans


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192) -> Tokenizer:
    """Train a byte-level BPE on `texts`. Special tokens take the first ids, then the 256 byte symbols."""
    tk = _HFTokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(tk)
