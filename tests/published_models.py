"""Tiny random checkpoints written in each published family's own directory layout (config.json fields, weight
names, tokenizer files with its special tokens), and the `transformers` reference model holding the same
weights. Used by tests/test_published.py; nothing here is downloaded."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

TEXT = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i)\n",
    "import os\nimport sys\n\n\ndef main():\n    path = os.path.join(sys.argv[1], 'x')\n    return path\n",
    "function f(x) {\n  return x * 2;\n}\nconst y = f(3);\n",
] * 4

# family -> (special tokens in id order after the BPE vocabulary, tokenizer_config names)
SPECIALS = {
    "dream": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>"],
              {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "mask_token": "<|mask|>"}),
    "dreamon": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|beginoftext|>", "<|mask|>", "<|expand|>"],
                {"bos_token": "<|beginoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                 "mask_token": "<|mask|>"}),
    "open-dcoder": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"],
                    {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "mask_token": "<|mask|>"}),
    "llada": (["<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>"],
              {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}),
}
async def ws_infill(port: int, prefix: str, suffix: str, max_tokens: int = 8) -> dict:
    """One streamed infill over a `diffill serve` websocket on loopback -> its final message (result or error)."""
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{port}") as ws:
        await ws.send(json.dumps({"type": "infill", "id": "w", "prefix": prefix, "suffix": suffix,
                                  "language": "python", "max_tokens": max_tokens, "stream": True}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if msg["type"] in ("result", "error"):
                return msg


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6)


def write_tokenizer(out: Path, family: str) -> dict[str, int]:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials, names = SPECIALS[family]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=360, show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tk.add_special_tokens(specials)  # after the vocabulary, as these families number them
    tk.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(names))
    return {s: tk.token_to_id(s) for s in specials}


def reference(arch: str, vocab: int, tie: bool = False, seed: int = 0):
    """A transformers Qwen2/Llama model with random weights (eager attention: the reference forward)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    if arch == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, rope_theta=1e6, tie_word_embeddings=tie, **TINY)
        cls = Qwen2ForCausalLM
    else:
        cfg = LlamaConfig(vocab_size=vocab, rope_theta=5e5, tie_word_embeddings=tie, **TINY)
        cls = LlamaForCausalLM
    cfg._attn_implementation = "eager"
    model = cls(cfg).eval()
    with torch.no_grad():  # norms away from 1 so a missed norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def write_dream(out: Path, *, model_type: str = "Dream", dreamon: bool = False):
    """Dream-v0 / Dream-Coder / DiffuCoder layout; `dreamon`: DreamOn's, whose tokenizer adds <|expand|>."""
    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out, "dreamon" if dreamon else "dream")
    vocab = max(ids.values()) + 1 + 7  # an embedding wider than the tokenizer, as Dream's is
    ref = reference("qwen2", vocab)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["DreamModel"], "model_type": model_type,
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "vocab_size": vocab, "max_position_embeddings": 4096, "rope_theta": 1e6, "rope_scaling": None,
        "hidden_act": "silu", "tie_word_embeddings": False, "use_sliding_window": False,
        "mask_token_id": ids["<|mask|>"], "pad_token_id": ids["<|endoftext|>"],
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"], "torch_dtype": "bfloat16",
        **TINY}))
    return ref, ids


def write_open_dcoder(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out, "open-dcoder")
    vocab = max(ids.values()) + 1
    ref = reference("qwen2", vocab, tie=True, seed=1)
    sd = {k: v.contiguous() for k, v in ref.state_dict().items() if k != "lm_head.weight"}  # tied, as 0.5B is
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": vocab,
        "max_position_embeddings": 4096, "rope_theta": 1e6, "tie_word_embeddings": True,
        "eos_token_id": ids["<|endoftext|>"], "pad_token_id": ids["<|endoftext|>"], **TINY}))
    return ref, ids


_LLAMA_TO_LLADA = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ff_norm",
                   "self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
                   "self_attn.o_proj": "attn_out", "mlp.gate_proj": "ff_proj", "mlp.up_proj": "up_proj",
                   "mlp.down_proj": "ff_out"}


def llada_name(name: str) -> str:
    top = {"model.embed_tokens.weight": "model.transformer.wte.weight", "model.norm.weight":
           "model.transformer.ln_f.weight", "lm_head.weight": "model.transformer.ff_out.weight"}
    if name in top:
        return top[name]
    _, _, i, rest = name.split(".", 3)  # model.layers.{i}.{module}.weight
    module, w = rest.rsplit(".", 1)
    return f"model.transformer.blocks.{i}.{_LLAMA_TO_LLADA[module]}.{w}"


def write_llada(out: Path, *, shards: bool = False):
    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out, "llada")
    vocab = max(ids.values()) + 1
    ref = reference("llama", vocab, seed=2)
    sd = {llada_name(k): v.contiguous() for k, v in ref.state_dict().items()}
    if shards:  # as the 8B checkpoints are published: an index and several files
        names = sorted(sd)
        half = len(names) // 2
        parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
        for f, keys in parts.items():
            save_file({k: sd[k] for k in keys}, str(out / f))
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {}, "weight_map": {k: f for f, keys in parts.items() for k in keys}}))
    else:
        save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({
        "architectures": ["LLaDAModelLM"], "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "d_model": TINY["hidden_size"], "n_heads": TINY["num_attention_heads"],
        "n_kv_heads": TINY["num_key_value_heads"], "n_layers": TINY["num_hidden_layers"],
        "mlp_hidden_size": TINY["intermediate_size"], "mlp_ratio": 4, "vocab_size": vocab, "embedding_size": vocab,
        "rope": True, "rope_theta": 5e5, "alibi": False, "block_type": "llama", "layer_norm_type": "rms",
        "rms_norm_eps": TINY["rms_norm_eps"], "activation_type": "silu", "include_bias": False,
        "include_qkv_bias": False, "weight_tying": False, "scale_logits": False, "input_emb_norm": False,
        "max_sequence_length": 4096, "mask_token_id": ids["<|mdm_mask|>"], "eos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"], "bos_token_id": ids["<|startoftext|>"]}))
    return ref, ids


# ---- DiffusionGemma ---------------------------------------------------------------------------------------
# GemmaTokenizer's fixed ids first (<pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4), then the turn markers
GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, global_head_dim=32, num_global_key_value_heads=1,
                  sliding_window=8, layer_types=["sliding_attention", "full_attention"], num_experts=4,
                  top_k_experts=2, moe_intermediate_size=32, max_position_embeddings=4096)
GEMMA_VISION = dict(model_type="gemma4_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=2, head_dim=16, position_embedding_size=64)


def write_gemma_tokenizer(out: Path) -> dict[str, int]:
    """tokenizer.json in GemmaTokenizer's pipeline (spaces as "▁", no pre-split, byte fallback) and its
    tokenizer_config.json naming the special tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tk.normalizer = normalizers.Replace(" ", "▁")
    tk.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous", invert=False)
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=300, special_tokens=GEMMA_SPECIALS,
                                                     show_progress=False))
    tk.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "mask_token": "<mask>", "add_bos_token": True}))
    return {s: tk.token_to_id(s) for s in GEMMA_SPECIALS}


def write_diffusion_gemma(out: Path, *, canvas_length: int = 16):
    """A DiffusionGemma directory as transformers writes it (`save_pretrained`: config.json with text_config and
    vision_config, generation_config.json, model.safetensors with each tied weight once under its own name).
    -> (the transformers model holding the same weights, special ids)."""
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

    out.mkdir(parents=True, exist_ok=True)
    ids = write_gemma_tokenizer(out)
    vocab = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    text = dict(GEMMA_TEXT, vocab_size=max(vocab.values()) + 1, pad_token_id=ids["<pad>"], bos_token_id=ids["<bos>"],
                eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]])
    cfg = DiffusionGemmaConfig(text_config=text, vision_config=GEMMA_VISION, canvas_length=canvas_length)
    torch.manual_seed(3)
    model = DiffusionGemmaForBlockDiffusion(cfg).eval()
    with torch.no_grad():  # norms and scales away from 1 so a missed one shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("scale"):
                p.uniform_(0.5, 1.5)
        for name, b in model.named_buffers():
            if name.endswith("layer_scalar"):
                b.fill_(0.9)
    model.save_pretrained(str(out))
    return model, ids
