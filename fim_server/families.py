"""Published diffusion language models, loaded from a local Hugging Face directory through `transformers`.

Which family a directory holds is read from its config.json (`model_type` / `architectures`):

| family      | checkpoints                                   | weights as               | logits  | mask token     |
|-------------|-----------------------------------------------|--------------------------|---------|----------------|
| dream       | Dream-v0, Dream-Coder, DiffuCoder, DreamOn    | Qwen2 (q/k/v bias)       | shifted | `<|mask|>`     |
| open-dcoder | Open-dCoder (model_type qwen2 + a mask token) | Qwen2                    | shifted | `<|mask|>`     |
| llada       | LLaDA-8B Base/Instruct, LLaDA-1.5             | OLMo names, Llama-shaped | aligned | `<|mdm_mask|>` |

"shifted": the model was trained from an autoregressive one and keeps its convention, so the logits at
position i-1 predict the token at slot i (Dream's and Open-dLLM's own samplers shift the same way);
"aligned": position i predicts slot i (LLaDA). Every family attends bidirectionally everywhere.

None of these ship modelling code that runs on the `transformers` we use (theirs is `trust_remote_code`,
pinned to 4.4x), and none of it is executed: the weights are loaded into `transformers`' own Qwen2 / Llama
modules (LLaDA's names mapped onto Llama's), and fim_server/bidir.py runs those modules without a causal
mask. Nothing is downloaded: a directory that lacks a file is an error that names it.

DreamOn (a Dream model whose tokenizer has `<|expand|>`) keeps its own length states (fim_server/bidir.py).

DiffusionGemma (model_type diffusion_gemma, `DiffusionGemmaForBlockDiffusion`) is natively in `transformers`
5.x and is not a one-sequence masked model: an encoder reads the prompt into a KV cache and a decoder denoises
a canvas of uniform noise with self-conditioning. It runs through transformers' own class with its own
decoding loop (fim_server/gemma.py); this module recognises it and reads its tokenizer (GemmaTokenizer's
`<mask>` names the decoder's undecided slots; the model never sees it). Its weights are checked and loaded by
fim_server/gemma.py. Not served yet, with a clear error: LLaDA-MoE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from fim_server.tokenizer import Tokenizer

SUPPORTED = ("Diffill's own (model_type diffill-fim-diffusion); Dream family: Dream, Dream-Coder, DiffuCoder, "
             "DreamOn (model_type Dream); LLaDA (model_type llada); Open-dCoder (model_type qwen2 with a mask "
             "token in its tokenizer); DiffusionGemma (model_type diffusion_gemma)")


class ModelLoadError(ValueError):
    """A model directory that cannot be served: says what is wrong and, for unknown families, which exist."""


@dataclass(frozen=True)
class Family:
    name: str  # "dream" | "open-dcoder" | "llada" | "diffusion-gemma"
    arch: str  # the transformers modules the weights load into: "qwen2" | "llama" | "diffusion_gemma"
    shift: bool  # logits at position i-1 predict slot i
    mask_tokens: tuple[str, ...]  # names the mask token goes by, in the order they are looked for


DREAM = Family("dream", "qwen2", True, ("<|mask|>",))
OPEN_DCODER = Family("open-dcoder", "qwen2", True, ("<|mask|>",))
LLADA = Family("llada", "llama", False, ("<|mdm_mask|>",))
# logits are aligned (the canvas position predicts itself); <mask> is GemmaTokenizer's, used only inside Diffill
DIFFUSION_GEMMA = Family("diffusion-gemma", "diffusion_gemma", False, ("<mask>",))


def read_config(path: Path) -> dict:
    f = path / "config.json"
    if not f.is_file():
        raise ModelLoadError(f"{path}: no config.json (a model directory holds config.json, the weights "
                             f"(*.safetensors) and tokenizer.json)")
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ModelLoadError(f"{f}: expected a JSON object")
    return cfg


def detect(path: str | Path) -> Family | None:
    """The published family in `path`, or None for Diffill's own format. Raises ModelLoadError naming the
    supported families for anything else."""
    path = Path(path)
    cfg = read_config(path)
    mt = str(cfg.get("model_type", "")).lower()
    archs = [str(a) for a in cfg.get("architectures") or []]
    if mt.startswith("diffill"):
        return None
    if mt == "dream" or "DreamModel" in archs:
        return DREAM
    if "moe" in mt or any("MoE" in a for a in archs):
        raise ModelLoadError(f"{path}: mixture-of-experts checkpoints (model_type {mt!r}) are not served yet. "
                             f"Supported: {SUPPORTED}")
    if mt == "llada" or any(a.startswith("LLaDA") for a in archs):
        return LLADA
    if mt.startswith("diffusion_gemma") or any(a.startswith("DiffusionGemma") for a in archs):
        return DIFFUSION_GEMMA
    if mt == "qwen2":
        if _mask_token(path, OPEN_DCODER) is None:
            raise ModelLoadError(f"{path}: a Qwen2 checkpoint without a mask token in its tokenizer is an "
                                 f"autoregressive model, not a diffusion one. Supported: {SUPPORTED}")
        return OPEN_DCODER
    raise ModelLoadError(f"{path}: unknown model family (model_type {cfg.get('model_type')!r}, architectures "
                         f"{archs}). Supported: {SUPPORTED}")


# ---- tokenizer ---------------------------------------------------------------------------------------------
class PublishedTokenizer(Tokenizer):
    """A published model's tokenizer.json with the ids the decoder needs named from its files.

    `eom_id` is the family's end-of-text token: these models end an infill by filling the slots after it
    with end/pad tokens, so the first committed one ends the middle as Diffill's <eom> does. Every other
    end-like token (pad, <|eot_id|>...) is folded into it by the decoder. `bos_id` (or None) starts the
    sequence, as the families' own tokenizers add it."""

    def __init__(self, tk, *, mask_id: int, eom_id: int, end_ids: frozenset[int], bos_id: int | None,
                 pad_id: int, special_ids: frozenset[int], expand_id: int | None = None):
        self._tk = tk
        self.mask_id, self.eom_id, self.pad_id, self.bos_id = mask_id, eom_id, pad_id, bos_id
        self.expand_id = expand_id  # DreamOn: a masked slot that becomes this splits into two masked slots
        self.end_ids = end_ids
        self.special_ids = special_ids
        # Diffill's FIM tokens do not exist in these vocabularies; a file separator may (Qwen2.5-Coder's)
        self.prefix_id = self.suffix_id = self.middle_id = None
        self.file_sep_id = next((t for t in (tk.token_to_id("<|file_sep|>"),) if t in special_ids), None)


def _tokenizer_files(path: Path) -> tuple[list[dict], dict]:
    """-> (added tokens as {"id", "content", "special"}, tokenizer_config.json or {})."""
    tc = path / "tokenizer_config.json"
    tj = path / "tokenizer.json"
    try:
        conf = json.loads(tc.read_text()) if tc.is_file() else {}
        if tj.is_file():
            added = json.loads(tj.read_text()).get("added_tokens", [])
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            added = [{"id": int(i), **t} for i, t in (conf.get("added_tokens_decoder") or {}).items()]
        else:
            raise ModelLoadError(f"{path}: no tokenizer.json (nor vocab.json + merges.txt): the tokenizer files the "
                                 f"model was published with")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, AttributeError) as e:
        if isinstance(e, ModelLoadError):
            raise
        raise ModelLoadError(f"{path}: tokenizer file is not valid ({e})") from None
    added = [t for t in added if isinstance(t, dict) and isinstance(t.get("id"), int) and "content" in t]
    return sorted(added, key=lambda t: t["id"]), conf


def _read_tokenizer(path: Path, added: list[dict]):
    """The `tokenizers` object: tokenizer.json, or (Dream's checkpoints ship the slow files) a Qwen2 byte-level
    BPE built by transformers' own Qwen2Tokenizer from vocab.json + merges.txt, with the added tokens of
    tokenizer_config.json at their ids."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTok

    if (path / "tokenizer.json").is_file():
        try:
            return HFTok.from_file(str(path / "tokenizer.json"))
        except Exception as e:  # the tokenizers library raises its own exception types
            raise ModelLoadError(f"{path}/tokenizer.json cannot be read: {e}") from None
    from transformers import Qwen2Tokenizer

    try:
        vocab = json.loads((path / "vocab.json").read_text())
        merges = [tuple(line.split(" ")) for line in (path / "merges.txt").read_text().splitlines()
                  if line and not line.startswith("#version")]
        tk = Qwen2Tokenizer(vocab=vocab, merges=merges)._tokenizer
    except Exception as e:
        raise ModelLoadError(f"{path}: vocab.json / merges.txt cannot be read: {e}") from None
    for t in added:
        if tk.token_to_id(t["content"]) is None:
            tk.add_tokens([AddedToken(t["content"], special=bool(t.get("special", True)), normalized=False)])
        if tk.token_to_id(t["content"]) != t["id"]:
            raise ModelLoadError(f"{path}: added token {t['content']!r} should have id {t['id']}, the vocabulary "
                                 f"gives it {tk.token_to_id(t['content'])}")
    return tk


def _token_name(v) -> str | None:
    """tokenizer_config.json names a special token as a string or as {"content": ...}."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _mask_token(path: Path, fam: Family) -> int | None:
    tokens, conf = _tokenizer_files(path)
    added = {t["content"]: t["id"] for t in tokens}
    names = [n for n in (_token_name(conf.get("mask_token")), *fam.mask_tokens) if n]
    for n in names:
        if n in added:
            return added[n]
    return None


def load_tokenizer(path: Path, fam: Family, cfg: dict) -> PublishedTokenizer:
    added, conf = _tokenizer_files(path)
    tk = _read_tokenizer(path, added)
    by_name = {t["content"]: t["id"] for t in added}

    def named(key: str) -> int | None:
        n = _token_name(conf.get(key))
        return by_name.get(n, tk.token_to_id(n)) if n else None

    mask = cfg.get("mask_token_id")
    if not isinstance(mask, int):
        mask = _mask_token(path, fam)
    if mask is None:
        raise ModelLoadError(f"{path}: no mask token (looked for config.json mask_token_id, tokenizer_config "
                             f"mask_token and {', '.join(fam.mask_tokens)})")
    ends = [i for i in _ids(cfg.get("eos_token_id")) + [named("eos_token")] if i is not None]
    ends += [by_name[n] for n in ("<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<turn|>")
             if n in by_name]
    if not ends:
        raise ModelLoadError(f"{path}: no end-of-text token (config.json eos_token_id or tokenizer_config "
                             f"eos_token)")
    pad = next((i for i in _ids(cfg.get("pad_token_id")) + [named("pad_token")] if i is not None), ends[0])
    bos = named("bos_token")
    if bos is None and fam in (LLADA, DIFFUSION_GEMMA):
        bos = next(iter(_ids(cfg.get("bos_token_id"))), None)
    special = frozenset(t["id"] for t in added if t.get("special", True)) | {mask, pad, *ends}
    expand = by_name.get("<|expand|>") if fam is DREAM else None
    return PublishedTokenizer(tk, mask_id=mask, eom_id=ends[0], end_ids=frozenset(ends) | {pad}, bos_id=bos,
                              pad_id=pad, special_ids=special, expand_id=expand)


def _ids(v) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]
    if isinstance(v, list):
        return [i for i in v if isinstance(i, int) and not isinstance(i, bool)]
    return []


# ---- configs and weights -----------------------------------------------------------------------------------
def _require(cfg: dict, path: Path, *keys: str) -> list:
    missing = [k for k in keys if not isinstance(cfg.get(k), (int, float)) or isinstance(cfg.get(k), bool)]
    if missing:
        raise ModelLoadError(f"{path}/config.json: missing or non-numeric {', '.join(missing)}")
    return [cfg[k] for k in keys]


def hf_config(fam: Family, cfg: dict, path: Path):
    """The transformers config of the modules `fam`'s weights load into."""
    from transformers import LlamaConfig, Qwen2Config

    rope = cfg.get("rope_scaling")
    if rope and str(rope.get("rope_type", rope.get("type", "default"))) != "default":
        raise ModelLoadError(f"{path}: rope_scaling {rope!r} is not supported (plain RoPE only)")
    if fam.arch == "qwen2":
        v, d, ff, n, h = _require(cfg, path, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                  "num_attention_heads")
        if cfg.get("use_sliding_window"):
            raise ModelLoadError(f"{path}: sliding-window attention is not supported")
        return Qwen2Config(vocab_size=v, hidden_size=d, intermediate_size=ff, num_hidden_layers=n,
                           num_attention_heads=h, num_key_value_heads=cfg.get("num_key_value_heads") or h,
                           rms_norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=cfg.get("rope_theta", 10000.0),
                           max_position_embeddings=cfg.get("max_position_embeddings", 32768),
                           tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                           hidden_act=cfg.get("hidden_act", "silu"))
    # LLaDA (OLMo-style config)
    d, h, n = _require(cfg, path, "d_model", "n_heads", "n_layers")
    bad = {k: cfg.get(k) for k, ok in (("block_type", "llama"), ("layer_norm_type", "rms"),
                                       ("activation_type", "silu")) if cfg.get(k, ok) != ok}
    bad.update({k: cfg[k] for k in ("alibi", "include_bias", "include_qkv_bias", "input_emb_norm",
                                    "scale_logits", "multi_query_attention", "attention_layer_norm")
                if cfg.get(k)})
    if cfg.get("rope") is False:
        bad["rope"] = False
    if bad:
        raise ModelLoadError(f"{path}: LLaDA options not supported: {bad}")
    ff = cfg.get("mlp_hidden_size") or int(cfg.get("mlp_ratio", 4) * d)
    return LlamaConfig(vocab_size=cfg.get("embedding_size") or cfg.get("vocab_size"), hidden_size=d,
                       intermediate_size=ff, num_hidden_layers=n, num_attention_heads=h,
                       num_key_value_heads=cfg.get("n_kv_heads") or h, rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
                       rope_theta=cfg.get("rope_theta", 10000.0),
                       max_position_embeddings=cfg.get("max_sequence_length", 4096),
                       tie_word_embeddings=bool(cfg.get("weight_tying", False)), attention_bias=False,
                       mlp_bias=False)


_LLADA_TOP = {"model.transformer.wte.weight": "model.embed_tokens.weight",
              "model.transformer.ln_f.weight": "model.norm.weight",
              "model.transformer.ff_out.weight": "lm_head.weight"}
_LLADA_BLOCK = {"attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm", "q_proj": "self_attn.q_proj",
                "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj", "attn_out": "self_attn.o_proj",
                "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}


def llada_to_llama(name: str) -> str | None:
    """LLaDA's weight name -> the Llama module's (None: not a weight we know)."""
    if name in _LLADA_TOP:
        return _LLADA_TOP[name]
    parts = name.split(".")  # model.transformer.blocks.{i}.{module}.weight
    if len(parts) == 6 and parts[:3] == ["model", "transformer", "blocks"] and parts[4] in _LLADA_BLOCK:
        return f"model.layers.{parts[3]}.{_LLADA_BLOCK[parts[4]]}.{parts[5]}"
    return None


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{index}: not a safetensors index ({e})") from None
        missing = [n for n in names if not (path / n).is_file()]
        if missing:
            raise ModelLoadError(f"{path}: weight shards missing: {', '.join(missing)}")
        return [path / n for n in names]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    raise ModelLoadError(f"{path}: no weights (model.safetensors or model.safetensors.index.json); "
                         f".bin checkpoints are not loaded (pickle), convert them to safetensors")


def load_weights(module: torch.nn.Module, fam: Family, path: Path, device: str, dtype: torch.dtype) -> None:
    """Read every tensor (memory-mapped, straight to `device` in `dtype`) into `module`, whose parameters are
    on the meta device; any missing, unknown or mis-shaped weight is an error naming it."""
    from safetensors import safe_open

    expected = dict(module.named_parameters())
    state, unknown = {}, []
    for f in weight_files(path):
        with safe_open(str(f), framework="pt", device=str(device)) as st:
            for name in st.keys():
                target = llada_to_llama(name) if fam is LLADA else name
                if target is None or target not in expected:
                    unknown.append(name)
                    continue
                t = st.get_tensor(name)
                if tuple(t.shape) != tuple(expected[target].shape):
                    raise ModelLoadError(f"{path}: weight {name} has shape {tuple(t.shape)}, but config.json "
                                         f"implies {tuple(expected[target].shape)}")
                state[target] = t.to(dtype)
    tied = module.config.tie_word_embeddings
    if tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ModelLoadError(f"{path}: weights missing: {', '.join(missing[:5])}{more}")
    if unknown:
        more = f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        raise ModelLoadError(f"{path}: weights this {fam.name} model does not have: {', '.join(unknown[:5])}{more}")
    module.load_state_dict(state, strict=False, assign=True)
    if tied:
        module.lm_head.weight = module.model.embed_tokens.weight


def load(path: str | Path, fam: Family, device: str = "cpu", dtype: torch.dtype | None = None):
    """-> (transformers model in eval mode on `device`, PublishedTokenizer, the raw config dict)."""
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    path = Path(path)
    cfg = read_config(path)
    tok = load_tokenizer(path, fam, cfg)
    hcfg = hf_config(fam, cfg, path)
    if dtype is None:
        dtype = torch.float32 if str(device).startswith("cpu") else torch.bfloat16
    with torch.device("meta"):
        model = (Qwen2ForCausalLM if fam.arch == "qwen2" else LlamaForCausalLM)(hcfg)
    load_weights(model, fam, path, device, dtype)
    if tok.vocab_size > hcfg.vocab_size:
        raise ModelLoadError(f"{path}: tokenizer has {tok.vocab_size} ids, the model's embedding only "
                             f"{hcfg.vocab_size}")
    return model.eval(), tok, cfg
