"""Held-out losses of diffusion model directories, compared on the very same batches of the current mix.

The training log's held-out numbers come from that run's own batches (and the mix of its day); to compare
two models (say, the shipped one and a fine-tune of it) both must see the same examples and the same
masks. This draws `--batches` held-out batches once (seeded) and reports, per model, the 1/t-weighted
diffusion loss, the context next-token loss and the masked-slot cross-entropy, in nats.

Run: `python -m fim_server.train.evaluate --corpus data/corpus MODEL_DIR [MODEL_DIR ...]`
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fim_server.model import FIMDiffusionModel
from fim_server.train.corpus import iter_texts
from fim_server.train.train import ExampleStream, fim_diffusion_loss


def evaluate(model_dirs: list[Path], corpus: Path, batches: int = 16, batch_size: int = 16,
             seq_len: int = 512, seed: int = 777) -> dict[str, dict[str, float]]:
    from fim_server.tokenizer import Tokenizer

    tok_path = str(model_dirs[0] / "tokenizer.json")
    mask_id = Tokenizer.from_file(tok_path).mask_id
    held = list(iter_texts(corpus / "heldout.jsonl.gz"))
    stream = iter(ExampleStream(held, tok_path, seq_len, batch_size, seed))
    data = [next(stream) for _ in range(batches)]
    out = {}
    for d in model_dirs:
        model = FIMDiffusionModel.load(d).eval()
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)  # the same masks for every model
            parts = [fim_diffusion_loss(model, a, b, c, mask_id, gen, 1.0)[1] for a, b, c in data]
        out[str(d)] = {k: round(sum(p[k].item() for p in parts) / len(parts), 4) for k in parts[0]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--corpus", type=Path, default=Path("data/corpus"))
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    print(json.dumps(evaluate(a.models, a.corpus, a.batches, a.batch_size), indent=1))


if __name__ == "__main__":
    main()
