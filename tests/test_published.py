"""Published diffusion models (Dream family, Open-dCoder, LLaDA) from tiny random checkpoints written in each
family's own layout (tests/published_models.py): Diffill's forward matches `transformers`' own on the same
weights, the approximate context cache is exact when fresh, the batched engine agrees with the one-request
loop, requests are served end to end over the websocket and HTTP, and bad directories get clear errors."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from published_models import write_dream, write_llada, write_open_dcoder, ws_infill  # noqa: E402

from fim_server import bidir, families  # noqa: E402
from fim_server.decoder import DecodeConfig, Middle, reference_infill  # noqa: E402
from fim_server.shared.protocol import EditRegion, EditRequest, InfillRequest  # noqa: E402

WRITERS = {"dream": write_dream, "llada": lambda p: write_llada(p, shards=True), "open-dcoder": write_open_dcoder,
           "dreamon": lambda p: write_dream(p, dreamon=True)}
PREFIX = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self."
SUFFIX = "\n\n\ndef add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """family -> (directory, the transformers reference model, special ids)."""
    root = tmp_path_factory.mktemp("published")
    out = {}
    for name, write in WRITERS.items():
        ref, ids = write(root / name)
        out[name] = (root / name, ref, ids)
    return out


@pytest.mark.parametrize("family", list(WRITERS))
def test_family_is_recognised_and_logits_match_transformers(published, family):
    path, ref, ids = published[family]
    fam = families.detect(path)
    assert fam is not None and fam.name == family.replace("dreamon", "dream")
    lm, tok, _ = bidir.load(path)
    assert tok.mask_id == ids[fam.mask_tokens[0]]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, tok.vocab_size, (2, 13), generator=g)
    L = x.shape[1]
    # transformers' own forward (eager attention) with a bidirectional mask: all zeros, nothing hidden
    want = ref(x, attention_mask=torch.zeros(2, 1, L, L)).logits
    h, _ = lm.run(x, torch.arange(L)[None].expand(2, -1))
    assert torch.allclose(lm.logits(h), want, atol=1e-4), (lm.logits(h) - want).abs().max()


def test_padded_rows_see_only_their_own_tokens(published):
    """A batch of sequences of different lengths gives each the logits it gets alone."""
    path, ref, _ = published["dream"]
    lm, tok, dec = bidir.load(path)
    a, b = list(range(5, 17)), list(range(30, 37))
    h, _ = dec._run([a, b], [0, 0], None)
    for row, seq in enumerate((a, b)):
        alone = ref(torch.tensor([seq]), attention_mask=torch.zeros(1, 1, len(seq), len(seq))).logits[0]
        assert torch.allclose(lm.logits(h[row, : len(seq)]), alone, atol=1e-4)


@pytest.mark.parametrize("family", ["dream", "llada"])
def test_fresh_approximate_cache_gives_the_whole_pass_logits(published, family):
    """kv_refresh > 0: the pass after a whole one reuses the prefix's and suffix's keys/values and runs only the
    middle (plus, for shifted families, the token before it); while nothing was committed in between, that
    is exactly the whole pass."""
    path, _, _ = published[family]
    _, _, dec = bidir.load(path, config=DecodeConfig(kv_refresh=3, heal="off"))
    m = Middle(req=InfillRequest(id="c", prefix=PREFIX, suffix=SUFFIX, language="python", max_tokens=16))
    with torch.inference_mode():  # as on the engine's worker thread
        dec.admit(m)
        whole = dec.forward([m])[0]
        assert m.approx is not None and m.approx.age == 0
        again = dec.forward([m])[0]
        assert m.approx.age == 1 and dec.stats["reused_tokens"] > 0
        assert torch.allclose(again, whole, atol=1e-4)
        m.slots = torch.cat([m.slots, torch.full((4,), dec.tok.mask_id)])  # the middle grew: refreshed at once
        dec.forward([m])
        assert m.approx.age == 0


@pytest.mark.parametrize("family", list(WRITERS))
async def test_engine_batches_agree_with_the_one_request_loop(published, family):
    from fim_server.engine import Engine, EngineConfig

    path, _, _ = published[family]
    eng = Engine.load(path, config=EngineConfig(eom_threshold=0.3))
    reqs = [InfillRequest(id=f"r{i}", prefix=PREFIX[: 40 + 9 * i], suffix=SUFFIX[: 10 + 7 * i], language="python",
                          max_tokens=8 + 4 * i) for i in range(3)]
    try:
        got = await asyncio.gather(*(eng.infill(r) for r in reqs))
    finally:
        await eng.aclose()
    _, _, dec = bidir.load(path, config=EngineConfig(eom_threshold=0.3))
    for r, res in zip(reqs, got):
        ref = reference_infill(dec, r)
        assert (res.text, res.tokens, res.valid) == (ref.text, ref.tokens, ref.valid)
        assert res.tokens <= r.max_tokens + 3 and res.forward_passes >= 1  # (+ up to 3 healed prefix tokens)
        assert res.context_tokens > 0


async def test_edits_fill_and_revise(published):
    """Edits run on published models too: a revised region keeps its token count or its original text."""
    from fim_server.engine import Engine

    path, _, _ = published["dream"]
    eng = Engine.load(path)
    text = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
    start = text.index("a - b")
    try:
        res = await eng.edit(EditRequest(id="e", text=text, language="python", regions=(  # sorted, as parsed
            EditRegion(start=0, end=0, mode="fill", max_tokens=6), EditRegion(start=start, end=start + 5,
                                                                              mode="revise"))))
    finally:
        await eng.aclose()
    assert len(res.regions) == 2 and res.errors_after <= res.errors_before
    revised = res.regions[1]
    assert revised.text == "a - b" or revised.tokens == len(eng.tok.encode("a - b"))


async def test_served_over_websocket_and_http(published):
    from fim_server.engine import Engine
    from fim_server.server import ServerConfig, start_server

    path, _, _ = published["llada"]
    eng = Engine.load(path)
    srv = await start_server(eng, ServerConfig(port=0))
    port = srv.sockets[0].getsockname()[1]
    try:
        msg = await ws_infill(port, PREFIX, SUFFIX)
        assert msg["type"] == "result" and msg["id"] == "w" and isinstance(msg["text"], str)
        assert msg["forward_passes"] >= 1

        def post():
            body = json.dumps({"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 8}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/infill", body,
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())

        status, out = await asyncio.to_thread(post)
        assert status == 200 and isinstance(out["content"], str) and out["tokens_predicted"] >= 1
        health = await asyncio.to_thread(lambda: json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{port}/healthz", timeout=10).read()))
        assert health["model"] == "llada"
    finally:
        srv.close()
        await srv.wait_closed()
        await eng.aclose()


def test_cli_complete_runs_a_published_model(published, tmp_path):
    path, _, _ = published["dream"]
    src = tmp_path / "p.py"
    src.write_text("def add(a, b):\n    return \n")
    out = subprocess.run([sys.executable, "-m", "fim_server.cli", "complete", f"{src}:2:12", "--model", str(path),
                          "--max-tokens", "6"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


# ---- clear errors ---------------------------------------------------------------------------------------------
def _copy(published, family, tmp_path) -> Path:
    dst = tmp_path / family
    shutil.copytree(published[family][0], dst)
    return dst


def _config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("model_type, words", [
    ("mamba", ["unknown model family", "Dream", "LLaDA", "Open-dCoder", "DiffusionGemma"]),
    ("lladamoe", ["mixture-of-experts"]),
])
def test_unsupported_families_are_named(published, tmp_path, model_type, words):
    path = _copy(published, "dream", tmp_path)
    _config(path, model_type=model_type, architectures=[])
    with pytest.raises(families.ModelLoadError) as e:
        families.detect(path)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_autoregressive_qwen2_is_refused(published, tmp_path):
    path = _copy(published, "open-dcoder", tmp_path)
    tc = json.loads((path / "tokenizer.json").read_text())
    tc["added_tokens"] = [t for t in tc["added_tokens"] if t["content"] != "<|mask|>"]
    (path / "tokenizer.json").write_text(json.dumps(tc))
    (path / "tokenizer_config.json").write_text("{}")
    with pytest.raises(families.ModelLoadError, match="autoregressive"):
        families.detect(path)


@pytest.mark.parametrize("breakage, message", [
    (lambda p: (p / "model.safetensors").unlink(), "no weights"),
    (lambda p: (p / "tokenizer.json").unlink(), "no tokenizer.json"),
    (lambda p: (p / "config.json").unlink(), "no config.json"),
    (lambda p: (p / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda p: _config(p, intermediate_size=96),
     r"down_proj.weight has shape \(64, 128\), but config.json implies \(64, 96\)"),
    (lambda p: _config(p, num_hidden_layers=3), "weights missing: model.layers.2"),
    (lambda p: _config(p, num_hidden_layers=1), "weights this dream model does not have"),
    (lambda p: _config(p, rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
])
def test_broken_directories_get_clear_errors(published, tmp_path, breakage, message):
    from fim_server.engine import Engine

    path = _copy(published, "dream", tmp_path)
    breakage(path)
    with pytest.raises(families.ModelLoadError, match=message):
        Engine.load(path)


def test_llada_shard_missing_is_named(published, tmp_path):
    path = _copy(published, "llada", tmp_path)
    (path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(families.ModelLoadError, match="model-00002-of-00002.safetensors"):
        bidir.load(path)


def test_diffill_model_is_not_taken_for_a_published_one(shipped_model_dir):
    assert families.detect(shipped_model_dir) is None


def test_slow_tokenizer_files_are_read_with_transformers_qwen2_tokenizer(published, tmp_path):
    """Checkpoints that ship vocab.json + merges.txt (and the added tokens in tokenizer_config.json) instead of
    tokenizer.json load too, with every special token at its published id."""
    path = _copy(published, "dream", tmp_path)
    tj = json.loads((path / "tokenizer.json").read_text())
    (path / "vocab.json").write_text(json.dumps(tj["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    conf = json.loads((path / "tokenizer_config.json").read_text())
    conf["added_tokens_decoder"] = {str(t["id"]): {"content": t["content"], "special": True}
                                    for t in tj["added_tokens"]}
    (path / "tokenizer_config.json").write_text(json.dumps(conf))
    (path / "tokenizer.json").unlink()
    _, ids = published["dream"][1:]
    _, tok, dec = bidir.load(path)
    assert (tok.mask_id, tok.eom_id, tok.bos_id) == (ids["<|mask|>"], ids["<|endoftext|>"], ids["<|beginoftext|>"])
    assert tok.decode(tok.encode(PREFIX + SUFFIX)) == PREFIX + SUFFIX
    res = reference_infill(dec, InfillRequest(id="s", prefix=PREFIX, suffix=SUFFIX, language="python", max_tokens=6))
    assert res.forward_passes >= 1


def test_dreamon_expands_and_deletes_slots(published):
    """DreamOn's length states: a masked slot that commits <|expand|> becomes two masked slots, one that commits
    the end token is deleted; text stays; <|expand|> is not offered past the request's budget."""
    path, _, ids = published["dreamon"]
    _, tok, dec = bidir.load(path, config=DecodeConfig(heal="off"))
    assert tok.expand_id == ids["<|expand|>"]
    m = Middle(req=InfillRequest(id="o", prefix=PREFIX, suffix=SUFFIX, language="python", max_tokens=6))
    with torch.inference_mode():
        dec.admit(m)
        m.slots = torch.full((4,), tok.mask_id)
        logits = torch.zeros(4, dec.model.vocab_size)
        text_id = tok.encode("x")[0]
        for row, token in ((0, tok.expand_id), (1, text_id), (2, tok.eom_id)):
            logits[row, token] = 30.0  # certain; row 3 stays flat and is not committed
        dec.commit(m, logits)
        assert m.slots.tolist() == [tok.mask_id, tok.mask_id, text_id, tok.mask_id] and m.canvas == 4
        assert not dec.finished(m)
        seq = dec._sequence(m)
        assert seq[-len(m.suffix_ids) - 1:] == m.suffix_ids + [tok.eom_id]  # suffix then <eos>, as DreamOn's
        m.slots = torch.full((6,), tok.mask_id)  # at the budget: no more expansion
        assert (dec.forward([m])[0][:, tok.expand_id] == float("-inf")).all()
        m.slots = torch.full((3,), tok.mask_id)
        assert (dec.forward([m])[0][:, tok.expand_id] > float("-inf")).all()
