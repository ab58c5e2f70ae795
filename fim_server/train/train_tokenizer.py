"""Train the byte-level BPE tokenizer on the corpus's train split and report bytes per token on held-out.

Run: `python -m fim_server.train.train_tokenizer --corpus data/corpus --vocab 8192 --out data/tokenizer.json`
Measure an existing tokenizer only: `... --corpus data/corpus --measure fim_server/models/default/tokenizer.json`
(add `--by-language` for files, bytes and tokens per split and language: the corpus's size in tokens).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fim_server.tokenizer import Tokenizer, train_tokenizer
from fim_server.train.corpus import iter_docs, iter_texts


def bytes_per_token(tok, texts: list[str]) -> float:
    n_bytes = sum(len(t.encode()) for t in texts)
    n_tok = sum(len(ids) for ids in tok.encode_batch(texts))
    return n_bytes / max(1, n_tok)


def by_language(tok, corpus: Path) -> list[str]:
    """One line per (split, language): files, MB, tokens and bytes/token, over every file of the corpus."""
    lines = []
    for split in ("train", "heldout"):
        totals: dict[str, list[int]] = {}
        docs = list(iter_docs(corpus / f"{split}.jsonl.gz"))
        for i in range(0, len(docs), 256):  # batches: encode_batch is fast, one list of all files is big
            chunk = docs[i:i + 256]
            for d, ids in zip(chunk, tok.encode_batch([d["text"] for d in chunk]), strict=True):
                t = totals.setdefault(d["language"], [0, 0, 0])
                t[0], t[1], t[2] = t[0] + 1, t[1] + len(d["text"].encode()), t[2] + len(ids)
        for lang, (files, nbytes, ntok) in sorted(totals.items()):
            lines.append(f"{split} {lang}: {files} files, {nbytes / 1e6:.2f} MB, {ntok / 1e6:.2f}M tokens, "
                         f"{nbytes / max(1, ntok):.2f} bytes/token")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--out", type=Path, default=Path("data/tokenizer.json"))
    ap.add_argument("--measure", type=Path, default=None, help="measure this tokenizer.json; train nothing")
    ap.add_argument("--by-language", action="store_true",
                    help="with --measure: files, bytes and tokens per split and language, over every file")
    a = ap.parse_args()
    held = list(iter_texts(a.corpus / "heldout.jsonl.gz"))
    if a.measure:
        tok = Tokenizer.from_file(a.measure)
        print(f"{a.measure} (vocab {tok.vocab_size}): {bytes_per_token(tok, held):.3f} bytes/token on held-out "
              f"({len(held)} files)")
        if a.by_language:
            print("\n".join(by_language(tok, a.corpus)))
        return
    tok = train_tokenizer(iter_texts(a.corpus / "train.jsonl.gz"), vocab_size=a.vocab)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(a.out)
    print(f"vocab {tok.vocab_size}: {bytes_per_token(tok, held):.3f} bytes/token on held-out ({len(held)} files)")


if __name__ == "__main__":
    main()
