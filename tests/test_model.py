"""Model invariants that make caching exact, on a tiny random model; tokenizer round trip."""

import torch

from fim_server.model import FIMDiffusionModel, context_slot_mask, training_mask


def test_cached_context_gives_the_same_middle_as_a_full_pass(tiny_model):
    m = tiny_model
    L, S, n = 24, 14, 20
    ids = torch.randint(10, 500, (1, L))
    pos = torch.arange(L)[None]
    full, _ = m.hidden(ids, pos, mask=training_mask(torch.tensor([S]), torch.tensor([n]), L))
    # prefill in two pieces (a user typing), then denoise the middle block against the cache
    kv = m.prefill(ids[:, 8:S], past=m.prefill(ids[:, :8]))
    mask = context_slot_mask(torch.tensor([S]), torch.tensor([n - S]), S, n - S)
    mid = m.denoise_hidden(ids[:, S:n], pos[:, S:n], kv, mask)
    assert torch.allclose(full[0, S:n], mid[0], atol=1e-5)


def test_context_is_causal_and_middle_is_bidirectional(tiny_model):
    m = tiny_model
    L, S, n = 16, 10, 16
    ids = torch.randint(10, 500, (1, L))
    pos = torch.arange(L)[None]
    mask = training_mask(torch.tensor([S]), torch.tensor([n]), L)
    h, _ = m.hidden(ids, pos, mask=mask)
    later = ids.clone()
    later[0, 13] += 1  # change a middle slot
    h2, _ = m.hidden(later, pos, mask=mask)
    assert torch.equal(h[0, :S], h2[0, :S])  # context never sees the middle
    assert not torch.allclose(h[0, S:13], h2[0, S:13])  # earlier slots do see later ones


def test_batched_middles_match_single(tiny_model):
    m = tiny_model
    a, b = torch.randint(10, 500, (1, 9)), torch.randint(10, 500, (1, 5))
    ka, kb = m.prefill(a), m.prefill(b)
    sa, sb = torch.randint(10, 500, (1, 4)), torch.randint(10, 500, (1, 3))
    ha = m.denoise_hidden(sa, torch.arange(9, 13)[None], ka, None)
    hb = m.denoise_hidden(sb, torch.arange(5, 8)[None], kb, None)
    past = [(torch.cat([k1, torch.nn.functional.pad(k2, (0, 0, 0, 4))]),
             torch.cat([v1, torch.nn.functional.pad(v2, (0, 0, 0, 4))])) for (k1, v1), (k2, v2) in zip(ka, kb)]
    slots = torch.cat([sa, torch.nn.functional.pad(sb, (0, 1))])
    pos = torch.stack([torch.arange(9, 13), torch.arange(5, 9)])
    h = m.denoise_hidden(slots, pos, past, context_slot_mask(torch.tensor([9, 5]), torch.tensor([4, 3]), 9, 4))
    assert torch.allclose(h[0], ha[0], atol=1e-5) and torch.allclose(h[1, :3], hb[0], atol=1e-5)


def test_save_and_load_round_trip(tiny_model, tmp_path):
    tiny_model.save(tmp_path, dtype=torch.float32)
    loaded = FIMDiffusionModel.load(tmp_path)
    ids = torch.randint(10, 500, (1, 7))
    pos = torch.arange(7)[None]
    assert torch.allclose(tiny_model.hidden(ids, pos, causal=True)[0], loaded.hidden(ids, pos, causal=True)[0])


def test_tokenizer_round_trips_code_and_names_its_specials(tokenizer):
    for text in ["def f(x):\n\treturn x  # ünïcödé 🎉 中文\r\n", "", "    \n\n", "a\x00b"]:
        assert tokenizer.decode(tokenizer.encode(text)) == text
    ids = {tokenizer.mask_id, tokenizer.eom_id, tokenizer.prefix_id, tokenizer.suffix_id, tokenizer.middle_id,
           tokenizer.file_sep_id, tokenizer.pad_id}
    assert len(ids) == 7  # all distinct
    assert tokenizer.decode([tokenizer.encode("x")[0], tokenizer.mask_id, tokenizer.eom_id]) == "x"


def test_token_char_spans_cover_non_ascii(tokenizer):
    text = "s = '🎉中'"
    ids = tokenizer.encode(text)
    spans = tokenizer.token_char_spans(ids)
    assert spans[-1][1] == len(text)
    assert all(a <= b for a, b in spans)
