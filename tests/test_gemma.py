"""DiffusionGemma from a tiny random checkpoint written by transformers' own save_pretrained
(tests/published_models.py): Diffill's passes give transformers' own forward of the same prompt and canvas,
an infill runs end to end through the engine and the websocket and ends at the end token, a middle that
goes on into the suffix's text is cut where it does, and broken directories get clear errors."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from published_models import write_diffusion_gemma, ws_infill  # noqa: E402

from fim_server import bidir, families, gemma  # noqa: E402
from fim_server.decoder import DecodeConfig, Middle, reference_infill  # noqa: E402
from fim_server.shared.protocol import InfillRequest  # noqa: E402

PREFIX = "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self."
SUFFIX = "\n\n\ndef add(a, b):\n    return a + b\n"


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """-> (directory, the transformers model holding its weights, special ids)."""
    path = tmp_path_factory.mktemp("published") / "diffusion-gemma"
    ref, ids = write_diffusion_gemma(path)
    return path, ref, ids


def test_directory_is_recognised_with_gemma_special_tokens(gemma_dir):
    path, ref, ids = gemma_dir
    assert families.detect(path) is families.DIFFUSION_GEMMA
    lm, tok, dec = bidir.load(path)
    assert isinstance(dec, gemma.GemmaDecoder) and lm.canvas_length == 16
    assert (tok.mask_id, tok.eom_id, tok.pad_id, tok.bos_id) == (ids["<mask>"], ids["<eos>"], ids["<pad>"],
                                                                 ids["<bos>"])
    assert tok.end_ids == {ids["<eos>"], ids["<end_of_turn>"], ids["<pad>"]}  # eos list from text_config, and pad
    for name, p in ref.state_dict().items():  # every weight (tied ones too) and persistent buffer as written
        assert torch.equal(lm.hf.state_dict()[name], p), name


def test_first_pass_matches_transformers_forward(gemma_dir):
    """Diffill's first pass against transformers' own forward of the same prompt (encoded from scratch) and the
    same noisy canvas: the whole canvas's logits, and those the sampler gets (banned tokens out, ends folded)."""
    path, ref, _ = gemma_dir
    _, tok, dec = bidir.load(path, config=DecodeConfig(heal="off"))
    m = Middle(req=InfillRequest(id="p", prefix=PREFIX, suffix=SUFFIX, language="python", max_tokens=12))
    with torch.inference_mode():
        dec.admit(m)
        first = dec.forward([m])[0]  # (8 masked slots, V)
    canvas, logits = m.approx.canvas, m.approx.sc_logits
    assert canvas.shape == (1, 16)  # the whole canvas, as the model was trained, though 8 slots are read
    with torch.inference_mode():
        want = ref(input_ids=torch.tensor([m.ctx_ids]), decoder_input_ids=canvas).logits  # (1, 16, V)
    assert torch.allclose(logits, want, atol=1e-4), (logits - want).abs().max()
    allowed = torch.ones(want.shape[-1], dtype=torch.bool)
    allowed[dec._banned] = False
    allowed[tok.eom_id] = False  # every end token is folded into it
    assert torch.allclose(first[:, allowed], want[0, :8][:, allowed], atol=1e-4)
    ends = torch.tensor(sorted(tok.end_ids))
    assert torch.allclose(first[:, tok.eom_id], torch.logsumexp(want[0, :8][:, ends], dim=-1), atol=1e-4)
    assert (first[:, dec._banned] == float("-inf")).all()


def test_second_pass_feeds_committed_tokens_and_first_logits(gemma_dir):
    """The self-conditioned pass, pinned: slots committed in pass 1 sit in pass 2's canvas, undecided ones are
    fresh noise, and transformers' forward with pass 1's logits gives pass 2's logits."""
    path, ref, _ = gemma_dir
    _, tok, dec = bidir.load(path, config=DecodeConfig(heal="off", initial_slots=8))
    m = Middle(req=InfillRequest(id="q", prefix=PREFIX, suffix=SUFFIX, language="python", max_tokens=8))
    with torch.inference_mode():
        dec.admit(m)
        logits = torch.full((8, dec.model.vocab_size), -10.0)
        text = tok.encode("x")[0]
        logits[0, text] = 30.0  # slot 0 certain, the rest flat: only it commits
        dec.commit(m, logits)
        assert m.slots.tolist() == [text] + [tok.mask_id] * 7
        dec.forward([m])  # pass 1 (self-conditioning none) ...
        sc1 = m.approx.sc_logits.clone()
        m.steps += 1
        dec.forward([m])  # ... pass 2, conditioned on pass 1
        canvas2 = m.approx.canvas
    assert int(canvas2[0, 0]) == text
    with torch.inference_mode():
        want = ref(input_ids=torch.tensor([m.ctx_ids]), decoder_input_ids=canvas2,
                   self_conditioning_logits=sc1).logits
        unconditioned = ref(input_ids=torch.tensor([m.ctx_ids]), decoder_input_ids=canvas2).logits
    assert torch.allclose(m.approx.sc_logits, want, atol=1e-4), (m.approx.sc_logits - want).abs().max()
    assert not torch.allclose(unconditioned, want, atol=1e-3)  # the signal is really there


def test_prompt_is_bos_suffix_then_prefix(gemma_dir):
    path, _, _ = gemma_dir
    _, tok, dec = bidir.load(path, config=DecodeConfig(heal="off"))
    ctx = dec.build_context("x = 1\n", "y = 2", 8)
    assert ctx.ids == [tok.bos_id] + tok.encode("y = 2") + tok.encode("\n") + tok.encode("x = 1\n")


async def test_engine_infill_ends_at_the_end_token(gemma_dir, monkeypatch):
    """A model whose every pass says the answer ends after three tokens: the engine returns those three tokens'
    text (not the canvas, not max_tokens), and canvases after the committed <eos> hold <pad> past it."""
    from fim_server.engine import Engine, EngineConfig

    path, _, ids = gemma_dir
    eng = Engine.load(path, config=EngineConfig(heal="off", repair=False))
    tok = eng.tok
    words = tok.encode("return a + b")[:3]
    assert len(words) == 3
    seen = []
    real = gemma.GemmaLM.denoise

    def ends_after_three(self, canvas, cache, start, sc):
        logits = real(self, canvas, cache, start, sc)  # transformers' forward runs; then the answer is forced
        seen.append(canvas.clone())
        for i, t in enumerate(words):
            logits[0, i, t] += 100.0
        logits[0, 3, ids["<end_of_turn>"]] += 100.0  # an end-of-turn ends it like <eos>
        return logits

    monkeypatch.setattr(gemma.GemmaLM, "denoise", ends_after_three)
    try:
        res = await eng.infill(InfillRequest(id="e", prefix=PREFIX, suffix=SUFFIX, language="python", max_tokens=12))
    finally:
        await eng.aclose()
    assert res.text == tok.decode(words) and res.tokens == 3
    assert res.forward_passes == 1  # every slot was certain: one pass
    assert seen[0].shape == (1, 16)


async def test_pad_follows_a_committed_end_in_later_canvases(gemma_dir, monkeypatch):
    path, _, ids = gemma_dir
    _, tok, dec = bidir.load(path, config=DecodeConfig(heal="off", repair=False, initial_slots=8))
    m = Middle(req=InfillRequest(id="f", prefix=PREFIX, suffix=SUFFIX, language="python", max_tokens=8))
    with torch.inference_mode():
        dec.admit(m)
        logits = torch.full((8, dec.model.vocab_size), -10.0)
        logits[3, tok.eom_id] = 30.0  # the end is certain at slot 3; slots 0-2 undecided
        dec.commit(m, logits)
        assert m.slots.tolist() == [tok.mask_id] * 3 + [tok.eom_id] and m.ended
        dec.forward([m])
    canvas = m.approx.canvas[0]
    assert int(canvas[3]) == tok.eom_id and canvas[4:].tolist() == [ids["<pad>"]] * 12


def test_middle_that_goes_on_into_the_suffix_is_cut_there(gemma_dir):
    path, _, _ = gemma_dir
    _, tok, dec = bidir.load(path, config=DecodeConfig(heal="off", repair=False))
    m = Middle(req=InfillRequest(id="s", prefix=PREFIX, suffix=SUFFIX, language="python", max_tokens=16))
    with torch.inference_mode():
        dec.admit(m)
        written = tok.encode("y = y\n\n\ndef add(a, b):\n")
        m.slots = torch.tensor(written + [tok.mask_id] * (16 - len(written)))
        dec._resize(m)
    assert m.ended and dec.finished(m)
    assert dec.result(m, 0.0).text == "y = y"


@pytest.mark.parametrize("text, suffix, cut", [
    ("y = y\n\n\ndef add(a, b):\n    x", "\n\n\ndef add(a, b):\n", 5),  # the suffix brings its blank lines
    ("y = 2\nreturn x\n", "return x\n", 6),  # the suffix starts the next line: the middle keeps its newline
    ("y = 2\n    return x\n", "    return x\n", 6),  # and its indentation is the suffix's
    ("return x\n", "return x\n", None),  # the first line continues the prefix's line: never an echo
    ("y = 2\nreturn x", "return x\n", None),  # not a complete line yet
    ("y = 2\nreturn xs\n", "return x\n", None),
    ("y = 2\n\n\ndef f():\n", "\ndef f():\n", 7),  # the suffix brings one of the blank lines
    ("y = 2\n", "\n\n", None),  # a blank suffix has nothing to echo
])
def test_echo_cut(text, suffix, cut):
    assert gemma.echo_cut(text, suffix) == cut


async def test_served_over_websocket(gemma_dir):
    from fim_server.engine import Engine
    from fim_server.server import ServerConfig, start_server

    path, _, _ = gemma_dir
    eng = Engine.load(path)
    srv = await start_server(eng, ServerConfig(port=0))
    port = srv.sockets[0].getsockname()[1]
    try:
        msg = await ws_infill(port, PREFIX, SUFFIX)
        assert msg["type"] == "result" and msg["id"] == "w" and msg["forward_passes"] >= 1
        assert msg["tokens"] <= 8 + 3  # (+ up to 3 healed prefix tokens)
    finally:
        srv.close()
        await srv.wait_closed()
        await eng.aclose()


def test_same_request_gives_the_same_answer(gemma_dir):
    """The noise is seeded by request and pass: the same request gives the same answer twice."""
    path, _, _ = gemma_dir
    _, _, dec = bidir.load(path)
    req = InfillRequest(id="d", prefix=PREFIX, suffix=SUFFIX, language="python", max_tokens=10)
    a, b = reference_infill(dec, req), reference_infill(dec, req)
    assert (a.text, a.tokens, a.forward_passes) == (b.text, b.tokens, b.forward_passes)


# ---- clear errors ---------------------------------------------------------------------------------------------
def _copy(gemma_dir, tmp_path) -> Path:
    dst = tmp_path / "g"
    shutil.copytree(gemma_dir[0], dst)
    return dst


def _text_config(path: Path, **changes) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg["text_config"].update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _drop_weight(path: Path, name: str) -> None:
    sd = load_file(str(path / "model.safetensors"))
    del sd[name]
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("breakage, message", [
    (lambda p: (p / "model.safetensors").unlink(), "no weights"),
    (lambda p: (p / "tokenizer.json").unlink(), "no tokenizer.json"),
    (lambda p: _text_config(p, moe_intermediate_size=48),
     r"model.decoder.layers.0.experts.down_proj has shape \(4, 64, 32\), but config.json implies \(4, 64, 48\)"),
    (lambda p: _drop_weight(p, "model.decoder.self_conditioning.up_proj.weight"),
     "weights missing: model.decoder.self_conditioning.up_proj.weight"),
    (lambda p: _text_config(p, num_hidden_layers=1, layer_types=["full_attention"], per_layer_config={}),
     "weights this diffusion-gemma model does not have: .*model.decoder.layers.1.experts"),
    (lambda p: (p / "config.json").write_text(json.dumps({"model_type": "diffusion_gemma"})), "no text_config"),
])
def test_broken_directories_get_clear_errors(gemma_dir, tmp_path, breakage, message):
    from fim_server.engine import Engine

    path = _copy(gemma_dir, tmp_path)
    breakage(path)
    with pytest.raises(families.ModelLoadError, match=message):
        Engine.load(path)
