"""Train the byte-level BPE tokenizer on the corpus's train split and report bytes per token on held-out.

Run: `python -m fim_server.train.train_tokenizer --corpus data/corpus --vocab 8192 --out data/tokenizer.json`
Measure an existing tokenizer only: `... --corpus data/corpus --measure fim_server/models/default/tokenizer.json`
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fim_server.tokenizer import Tokenizer, train_tokenizer
from fim_server.train.corpus import iter_texts


def bytes_per_token(tok, texts: list[str]) -> float:
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tok = sum(len(ids) for ids in tok.encode_batch(texts))
    return n_bytes / max(1, n_tok)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--out", type=Path, default=Path("data/tokenizer.json"))
    ap.add_argument("--measure", type=Path, default=None, help="measure this tokenizer.json; train nothing")
    a = ap.parse_args()
    held = list(iter_texts(a.corpus / "heldout.jsonl.gz"))
    if a.measure:
        tok = Tokenizer.from_file(a.measure)
        print(f"{a.measure} (vocab {tok.vocab_size}): {bytes_per_token(tok, held):.3f} bytes/token on held-out "
              f"({len(held)} files)")
        return
    tok = train_tokenizer(iter_texts(a.corpus / "train.jsonl.gz"), vocab_size=a.vocab)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(a.out)
    print(f"vocab {tok.vocab_size}: {bytes_per_token(tok, held):.3f} bytes/token on held-out ({len(held)} files)")


if __name__ == "__main__":
    main()
