"""A GPT-2 language model in one file, after nanoGPT, shaped for unlearning.

- forward(idx) returns logits at every position, (B, T, V): the unlearning losses and the Fisher
  pass need them all, not only the last.
- token_nll is the one place where the per-token loss is computed; ignored labels (-100) never count.
- q, k and v are three Linear layers (GPT-2 stores them fused as c_attn): LoRA then adapts each one,
  as the paper does (METHOD §2). from_pretrained splits Hugging Face's fused weight.
- No dropout: memorising facts and removing them both want a deterministic network.
"""
import json
import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -100  # label value that token_nll skips (prompt tokens, padding)


@dataclass
class GPTConfig:  # defaults: the built-in model (GPT-2 small is 1024, 50257, 12, 12, 768)
    block_size: int = 128   # longest sequence (position embeddings); the corpus needs < 60
    vocab_size: int = 2048  # the built-in tokenizer's 2018 tokens, padded to a multiple of 64
    n_layer: int = 1        # transformer blocks; one wide block memorises the corpus fastest on a CPU
    n_head: int = 8         # attention heads; n_embd must divide by it
    n_embd: int = 256       # width of the residual stream
    ln_eps: float = 1e-5    # LayerNorm epsilon, as GPT-2


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = cfg.n_head
        self.c_q = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_k = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_v = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x, cache=None):
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
                   for lin in (self.c_q, self.c_k, self.c_v))
        if cache is not None:  # generation: keep keys/values of earlier positions instead of recomputing
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        # A prompt (T > 1, empty cache) is masked causally; one new token sees every cached key.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads: (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None):  # pre-LayerNorm residual block
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx, cache=None):
        """idx (B, T) token ids -> logits (B, T, V); logits[:, t] predicts token t + 1.
        `cache`, a list of one dict per block, makes generation reuse earlier keys and values."""
        past = cache[0]["k"].size(2) if cache and "k" in cache[0] else 0
        T = idx.size(1)
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if cache is None else cache[i])
        return self.lm_head(self.transformer.ln_f(x))  # (B, T, V)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Extend idx (B, T) by max_new_tokens tokens. temperature=0 is greedy (argmax)."""
        cache = None
        for i in range(max_new_tokens):
            if cache is None:
                # (Re)fill the cache from the last block_size tokens: at the start, and once the
                # sequence outgrows the position embeddings (the context is then cropped, as nanoGPT).
                cache = [dict() for _ in self.transformer.h]
                logits = self(idx[:, -self.config.block_size:], cache)[:, -1]  # (B, V)
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat([idx, nxt], dim=1)
            if i + 1 < max_new_tokens:
                if idx.size(1) <= self.config.block_size:
                    logits = self(nxt, cache)[:, -1]  # one new position against the cached ones
                else:
                    cache = None
        return idx

    @classmethod
    def from_pretrained(cls, path):
        """Load a Hugging Face GPT-2 checkpoint from a local folder (config.json and model.safetensors
        or pytorch_model.bin). A hub name such as 'gpt2' is downloaded only if huggingface_hub is
        installed and the network answers."""
        path = _resolve_checkpoint(path)
        with open(os.path.join(path, "config.json")) as f:
            hf = json.load(f)
        if missing := [k for k in ("n_positions", "vocab_size", "n_layer", "n_head", "n_embd") if k not in hf]:
            raise ValueError(f"{path}/config.json lacks {', '.join(missing)}: not a GPT-2 config")
        allowed = {"activation_function": ("gelu_new",), "n_inner": (None, 4 * hf["n_embd"]),
                   "scale_attn_by_inverse_layer_idx": (False,), "reorder_and_upcast_attn": (False,)}
        for key, ok in allowed.items():
            if hf.get(key, ok[0]) not in ok:
                raise ValueError(f"{path}: unsupported GPT-2 variant, {key}={hf[key]!r} (supported: {ok})")
        cfg = GPTConfig(block_size=hf["n_positions"], vocab_size=hf["vocab_size"], n_layer=hf["n_layer"],
                        n_head=hf["n_head"], n_embd=hf["n_embd"], ln_eps=hf.get("layer_norm_epsilon", 1e-5))
        model = cls(cfg)
        model.load_state_dict(hf_to_ours(_read_weights(path), cfg))
        model.hf_config, model.hf_folder = hf, path  # for saving back in the same layout, and the tokenizer
        return model

    def hf_files(self, hf_config=None):
        """{file name: bytes} of a Hugging Face GPT-2 folder (config.json, model.safetensors). hf_config:
        the config.json this model was loaded from, kept as it was (else a plain GPT-2 config)."""
        from safetensors.torch import save
        c = self.config
        cfg = dict(hf_config or dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], activation_function="gelu_new",
                                     n_inner=None, tie_word_embeddings=True),
                   n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, vocab_size=c.vocab_size,
                   n_positions=c.block_size, layer_norm_epsilon=c.ln_eps)
        return {"config.json": json.dumps(cfg, indent=2).encode(), "model.safetensors": save(ours_to_hf(self))}


def at_least_float32(x):
    """Half-precision logits (bf16 autocast) are upcast for the softmax; float32 and float64 stay."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def token_nll(logits, targets):
    """Per-token negative log-likelihood. logits (B, T, V) and targets (B, T) are aligned:
    logits[:, t] scores targets[:, t] (collate already shifted the labels by one).
    Returns (nll, mask), both (B, T); nll is 0 where targets == IGNORE and mask marks the rest."""
    mask = targets != IGNORE
    nll = F.cross_entropy(at_least_float32(logits).flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                          reduction="none").view(targets.shape)
    return nll, mask


def lm_loss(logits, targets):
    """Mean token NLL over target tokens: the usual language-modelling loss."""
    nll, mask = token_nll(logits, targets)
    return nll.sum() / mask.sum().clamp(min=1)


# ----------------------------------------------------------------------------- Hugging Face GPT-2 files
HF_BUFFERS = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers some GPT-2 files carry; not weights


def hf_to_ours(sd, cfg):
    """Hugging Face GPT-2 state dict -> ours. Conv1D stores weights as (in, out): transpose to
    nn.Linear's (out, in); split the fused c_attn into q, k, v. Missing or extra keys are named."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items() if not k.endswith(HF_BUFFERS)}
    if "lm_head.weight" in sd and "wte.weight" in sd and not torch.equal(sd.pop("lm_head.weight"), sd["wte.weight"]):
        raise ValueError("checkpoint has an untied lm_head.weight; GPT-2 ties it to wte.weight")
    out, used = {}, set()

    def take(key):
        if key not in sd:
            raise ValueError(f"checkpoint is missing {key!r}")
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
        raise ValueError(f"checkpoint has unexpected keys: {', '.join(extra[:5])}")
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
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")


def _resolve_checkpoint(path):
    """A local folder as it is; otherwise try to download a hub name (e.g. 'gpt2')."""
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face GPT-2 folder)")
        return path
    hint = (f"put config.json, model.safetensors and vocab.json from https://huggingface.co/{path} "
            f"into a folder and pass its path")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{path!r} is not a folder and huggingface_hub is not installed: {hint}") from None
    try:
        return snapshot_download(path, allow_patterns=["config.json", "model.safetensors", "vocab.json"])
    except Exception as e:
        raise FileNotFoundError(f"could not download {path!r} ({type(e).__name__}): {hint}") from None
