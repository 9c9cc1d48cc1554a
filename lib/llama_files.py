"""Llama-family checkpoints in and out (METHOD §8): Hugging Face folders (config.json, model.safetensors
or shards with their index) and GGUF files (llama.cpp's format, read with its own `gguf` package).

Our names (model.py) against Hugging Face's and GGUF's, for block i:
  transformer.wte / ln_f / lm_head     model.embed_tokens / model.norm / lm_head     token_embd / output_norm / output
  h.i.ln_1, h.i.ln_2                   layers.i.input_layernorm, post_attention_layernorm   blk.i.attn_norm, ffn_norm
  h.i.attn.c_q, c_k, c_v, c_proj       layers.i.self_attn.q_proj, k_proj, v_proj, o_proj    blk.i.attn_q, attn_k, attn_v, attn_output
  h.i.mlp.gate, up, down               layers.i.mlp.gate_proj, up_proj, down_proj          blk.i.ffn_gate, ffn_up, ffn_down
Rotary positions: model.py rotates Hugging Face's half-split pairs (j, j + d/2). llama.cpp stores the
rows of q and k in Meta's interleaved order (pairs 2j, 2j + 1); `unpermute` puts them back, so every
format ends up in one convention.
"""
import functools
import json
import os

import torch

from lib.userio import UserError
from model import GPT, LlamaConfig

BLOCK = {"ln_1.weight": ("input_layernorm.weight", "attn_norm"), "ln_2.weight": ("post_attention_layernorm.weight", "ffn_norm"),
         "attn.c_q.weight": ("self_attn.q_proj.weight", "attn_q"), "attn.c_k.weight": ("self_attn.k_proj.weight", "attn_k"),
         "attn.c_v.weight": ("self_attn.v_proj.weight", "attn_v"), "attn.c_proj.weight": ("self_attn.o_proj.weight", "attn_output"),
         "mlp.gate.weight": ("mlp.gate_proj.weight", "ffn_gate"), "mlp.up.weight": ("mlp.up_proj.weight", "ffn_up"),
         "mlp.down.weight": ("mlp.down_proj.weight", "ffn_down")}
TOP = {"transformer.wte.weight": ("model.embed_tokens.weight", "token_embd"), "transformer.ln_f.weight": ("model.norm.weight", "output_norm"),
       "lm_head.weight": ("lm_head.weight", "output")}


def names(cfg, fmt):
    """{our parameter name: its name in the file}, fmt 0 for Hugging Face, 1 for GGUF."""
    out = {ours: theirs[fmt] + (".weight" if fmt else "") for ours, theirs in TOP.items()
           if ours != "lm_head.weight" or not cfg.tie_head}
    for i in range(cfg.n_layer):
        for ours, theirs in BLOCK.items():
            out[f"transformer.h.{i}.{ours}"] = f"model.layers.{i}.{theirs[0]}" if fmt == 0 else f"blk.{i}.{theirs[1]}.weight"
    return out


def build(cfg, sd, fmt, where):
    """A GPT from a state dict in a file's names; missing or unexpected tensors are named."""
    want = names(cfg, fmt)
    if cfg.tie_head and fmt == 0:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}  # some tied files store the head too
    if missing := [theirs for theirs in want.values() if theirs not in sd]:
        raise UserError(f"{where} is missing {missing[0]!r}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    if extra := sorted(set(sd) - set(want.values())):
        raise UserError(f"{where} has unexpected tensors: {', '.join(extra[:5])}")
    with torch.device("meta"):  # no random init of weights about to be replaced
        model = GPT(cfg)
    result = model.load_state_dict({ours: sd[theirs].float() for ours, theirs in want.items()}, strict=False, assign=True)
    assert result.missing_keys == (["lm_head.weight"] if cfg.tie_head else []), result.missing_keys
    if cfg.tie_head:  # assign=True replaced the embedding's Parameter: tie the head to the new one
        model.lm_head.weight = model.transformer.wte.weight
    return model.eval()


# ----------------------------------------------------------------------------- Hugging Face folders
def config_from_hf(hf, where):
    """LlamaConfig from a Hugging Face config.json; a variant model.py does not compute is refused by key."""
    need = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
    if missing := [k for k in need if k not in hf]:
        raise UserError(f"{where}/config.json lacks {', '.join(missing)}: not a Llama config")
    rope = hf.get("rope_parameters") or {}  # transformers 5 writes θ and the scaling type here
    unsupported = {"rope_scaling": None, "attention_bias": False, "mlp_bias": False, "hidden_act": "silu",
                   "pretraining_tp": 1}
    for key, value, ok in [(k, hf.get(k, ok), ok) for k, ok in unsupported.items()] + \
                          [("rope_parameters", rope.get("rope_type", "default"), "default")]:
        if value != ok:
            raise UserError(f"{where}: unsupported Llama variant, {key}={value!r} (supported: {ok!r})")
    head_dim = hf.get("head_dim") or hf["hidden_size"] / hf["num_attention_heads"]
    if head_dim * hf["num_attention_heads"] != hf["hidden_size"] or head_dim != int(head_dim):
        raise UserError(f"{where}: unsupported Llama variant, head_dim={head_dim} (supported: hidden_size / heads)")
    return LlamaConfig(block_size=hf.get("max_position_embeddings", 2048), vocab_size=hf["vocab_size"],
                       n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
                       n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                       n_hidden=hf["intermediate_size"], rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                       ln_eps=hf.get("rms_norm_eps", 1e-6), tie_head=bool(hf.get("tie_word_embeddings", False)))


def read_safetensors(folder):
    """{name: tensor} from model.safetensors, or from the shards that model.safetensors.index.json lists."""
    from safetensors.torch import load_file
    single, index = os.path.join(folder, "model.safetensors"), os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(single):
        return load_file(single)
    if not os.path.exists(index):
        raise UserError(f"{folder}: no model.safetensors or model.safetensors.index.json")
    sd = {}
    for shard in sorted(set(json.load(open(index))["weight_map"].values())):
        if not os.path.exists(os.path.join(folder, shard)):
            raise UserError(f"{folder}: shard {shard} named by the index is missing")
        sd.update(load_file(os.path.join(folder, shard)))
    return sd


def load_hf(folder, hf):
    return build(config_from_hf(hf, folder), read_safetensors(folder), 0, folder)


def hf_files(model, hf_config=None):
    """{file name: bytes} of a Hugging Face Llama folder that transformers loads: config.json (the one
    the model came with, updated to its shape) and model.safetensors, the head left out when tied."""
    from safetensors.torch import save
    c = model.config
    cfg = dict(hf_config or dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_act="silu",
                                 attention_bias=False, mlp_bias=False, rope_scaling=None),
               hidden_size=c.n_embd, intermediate_size=c.n_hidden, num_attention_heads=c.n_head,
               num_key_value_heads=c.n_kv_head, num_hidden_layers=c.n_layer, vocab_size=c.vocab_size,
               max_position_embeddings=c.block_size, rope_theta=c.rope_theta, rms_norm_eps=c.ln_eps,
               tie_word_embeddings=c.tie_head)
    sd = model.state_dict()
    tensors = {theirs: sd[ours].detach().cpu().contiguous() for ours, theirs in names(c, 0).items()}
    return {"config.json": json.dumps(cfg, indent=2).encode(), "model.safetensors": save(tensors)}


# ----------------------------------------------------------------------------- GGUF files
def unpermute(w, n_head):
    """llama.cpp's q/k rows -> Hugging Face's: within each head, interleaved row 2j + s becomes row
    s·d/2 + j (s = 0, 1; j < d/2). w: (n_head · d, in)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, -1).transpose(1, 2).reshape(w.shape)


@functools.lru_cache(maxsize=1)  # the model and its tokenizer read the same file one after the other
def open_gguf(path):
    """(metadata {key: value}, reader) of a GGUF file; a file that is not one, or is cut short, is an error."""
    import gguf
    try:
        reader = gguf.GGUFReader(path)
        fields = {k: f.contents() for k, f in reader.fields.items()}
    except (ValueError, OSError, IndexError, KeyError, TypeError) as e:
        raise UserError(f"{path} is not a complete GGUF file ({type(e).__name__}: {str(e)[:80]})") from None
    return fields, reader


def config_from_gguf(f, has_head, where):
    """LlamaConfig from a GGUF file's metadata; has_head: whether it stores output.weight (else tied)."""
    need = ["tokenizer.ggml.tokens"] + [f"llama.{k}" for k in ("block_count", "context_length", "embedding_length",
            "feed_forward_length", "attention.head_count", "attention.layer_norm_rms_epsilon")]
    if f.get("general.architecture") == "llama" and (missing := [k for k in need if k not in f]):
        raise UserError(f"{where}: the GGUF metadata lacks {', '.join(missing)}")
    if f.get("general.architecture") != "llama":
        raise UserError(f"{where}: general.architecture={f.get('general.architecture')!r}; only 'llama' is supported")
    g = lambda k, default=None: f.get(f"llama.{k}", default)
    if (s := g("rope.scaling.type", "none")) != "none":
        raise UserError(f"{where}: unsupported Llama variant, llama.rope.scaling.type={s!r}")
    n_embd, n_head = g("embedding_length"), g("attention.head_count")
    if g("rope.dimension_count", n_embd // n_head) != n_embd // n_head:
        raise UserError(f"{where}: unsupported Llama variant, llama.rope.dimension_count={g('rope.dimension_count')}")
    return LlamaConfig(block_size=g("context_length"), vocab_size=len(f["tokenizer.ggml.tokens"]),
                       n_layer=g("block_count"), n_head=n_head, n_embd=n_embd,
                       n_kv_head=g("attention.head_count_kv", n_head), n_hidden=g("feed_forward_length"),
                       rope_theta=float(g("rope.freq_base", 10000.0)), ln_eps=float(g("attention.layer_norm_rms_epsilon")),
                       tie_head=not has_head)


def load_gguf(path):
    """A GPT from a llama-architecture GGUF file, every tensor dequantized to float32."""
    import gguf
    fields, reader = open_gguf(path)
    cfg = config_from_gguf(fields, any(t.name == "output.weight" for t in reader.tensors), path)
    sd = {}
    try:
        for t in reader.tensors:
            w = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())  # (out, in), float32
            if ".attn_q." in t.name or ".attn_k." in t.name:
                w = unpermute(w, cfg.n_head if ".attn_q." in t.name else cfg.n_kv_head)
            sd[t.name] = w
    except (ValueError, NotImplementedError) as e:
        raise UserError(f"{path}: cannot read tensor {t.name} ({type(e).__name__}: {str(e)[:80]})") from None
    return build(cfg, sd, 1, path)
