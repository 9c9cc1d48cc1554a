"""A decoder-only language model in one file, after nanoGPT and gpt-fast, shaped for unlearning.
Two families share it; the config picks the parts (METHOD §8):

  GPTConfig    GPT-2:  LayerNorm, learned positions, GELU MLP, biases, head tied to the embedding
  LlamaConfig  Llama:  RMSNorm, rotary positions (RoPE), SwiGLU MLP, grouped-query attention,
               no biases, head tied or not (SmolLM2, Llama 2/3, TinyLlama)

- forward(idx) returns logits at every position, (B, T, V), not only the last: the unlearning losses,
  the Fisher pass and the metrics score every target token. forward(idx, only=mask) returns them at
  the target positions alone, (N, V): the head is a fifth of a real model's FLOPs.
- token_nll is the one place where the per-token loss is computed; ignored labels (-100) never count.
- q, k and v are three Linear layers (GPT-2 stores them fused as c_attn): LoRA then adapts each one,
  as the paper does (METHOD §2). The model names what the rest of the code needs: its blocks, a
  fresh key/value cache, and the linear layers LoRA may adapt (lora_targets). Hugging Face and GGUF
  files are read and written by lib/hf.py and lib/llama_files.py.
- No dropout: memorising facts and removing them both want a deterministic network.
"""
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

IGNORE = -100  # label value that token_nll skips (prompt tokens, padding)


@dataclass
class GPTConfig:  # defaults: the built-in model (GPT-2 small is 1024, 50257, 12, 12, 768)
    block_size: int = 128   # longest sequence (position embeddings); the corpus needs < 60
    vocab_size: int = 2048  # the built-in tokenizer's 2014 tokens, padded to a multiple of 64
    n_layer: int = 1        # transformer blocks; one wide block memorises the corpus fastest on a CPU
    n_head: int = 8         # attention heads; n_embd must divide by it
    n_embd: int = 256       # width of the residual stream
    ln_eps: float = 1e-5    # epsilon of the norms (LayerNorm here, RMSNorm in a Llama)
    arch: ClassVar[str] = "gpt2"  # the family (a class constant: not a field, not in a saved config)


@dataclass
class LlamaConfig(GPTConfig):  # defaults: SmolLM2-135M's shape, but 1 layer and a small vocabulary
    n_embd: int = 576
    n_head: int = 9
    n_kv_head: int = 3        # key/value heads: each serves n_head / n_kv_head query heads (GQA)
    n_hidden: int = 1536      # width of the SwiGLU MLP
    rope_theta: float = 1e5   # RoPE base θ: angle of pair i at position p is p · θ^(−2i/d)
    tie_head: bool = True     # the head reuses the embedding matrix (SmolLM2); False: its own (Llama 2)
    arch: ClassVar[str] = "llama"


def causal_mask(T, S, device):
    """(T, S) bool, True where a query may look: the T new tokens sit at positions S − T .. S − 1 of
    the S keys, so query i sees keys 0 .. S − T + i. Only T > 1 tokens after a filled cache need it:
    without a cache (S == T) it is is_causal's triangle, and one new token (T == 1) sees every key."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


def rope_angles(positions, head_dim, theta):
    """RoPE's (cos, sin), each (T, d), Hugging Face's half-split layout: dimension j and j + d/2 form a
    pair rotated by the angle p · θ^(−2j/d) (computed in float32, as transformers does)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device).float() / head_dim)  # (d/2,)
    angle = positions.float()[:, None] * inv_freq[None, :]  # (T, d/2)
    angle = torch.cat([angle, angle], dim=-1)                # (T, d): both halves of a pair share it
    return angle.cos(), angle.sin()


def rotate(x, rope):
    """x (B, nh, T, d) rotated pairwise: x·cos + rotate_half(x)·sin, rotate_half(x) = (−x₂, x₁)."""
    cos, sin = (r.to(x.dtype) for r in rope)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class RMSNorm(nn.Module):
    """y = w ⊙ x / sqrt(mean(x²) + ε): LayerNorm without the mean and the bias (Llama), in at least
    float32 and cast back."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = at_least_float32(x)
        return self.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def norm(cfg):
    return RMSNorm(cfg.n_embd, cfg.ln_eps) if cfg.arch == "llama" else nn.LayerNorm(cfg.n_embd, eps=cfg.ln_eps)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.n_embd % cfg.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head, self.hd = cfg.n_head, cfg.n_embd // cfg.n_head
        self.n_kv = cfg.n_kv_head if cfg.arch == "llama" else cfg.n_head  # key/value heads
        assert cfg.n_head % self.n_kv == 0, "n_head must be a multiple of n_kv_head"
        bias = cfg.arch == "gpt2"
        self.c_q = nn.Linear(cfg.n_embd, self.n_head * self.hd, bias=bias)
        self.c_k = nn.Linear(cfg.n_embd, self.n_kv * self.hd, bias=bias)
        self.c_v = nn.Linear(cfg.n_embd, self.n_kv * self.hd, bias=bias)
        self.c_proj = nn.Linear(self.n_head * self.hd, cfg.n_embd, bias=bias)

    def forward(self, x, cache=None, rope=None):
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, n, self.hd).transpose(1, 2)  # (B, heads, T, hd)
                   for lin, n in ((self.c_q, self.n_head), (self.c_k, self.n_kv), (self.c_v, self.n_kv)))
        if rope is not None:  # Llama: rotate q and k by their absolute positions (the cache keeps rotated keys)
            q, k = rotate(q, rope), rotate(k, rope)
        if cache is not None:  # generation: keep keys/values of earlier positions instead of recomputing
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        S = k.size(2)  # keys: S − T cached ones, then these T
        mask = causal_mask(T, S, x.device) if S > T > 1 else None  # T new tokens after a filled cache
        # Grouped-query attention: key/value head j serves query heads j·g .. j·g + g − 1, g = n_head / n_kv.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=S == T > 1,
                                           enable_gqa=self.n_kv != self.n_head)  # (B, nh, T, hd)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.hd)  # re-assemble heads
        return self.c_proj(y)


class MLP(nn.Module):  # GPT-2
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's "gelu_new"


class SwiGLU(nn.Module):  # Llama: down(silu(gate(x)) ⊙ up(x))
    def __init__(self, cfg):
        super().__init__()
        self.gate = nn.Linear(cfg.n_embd, cfg.n_hidden, bias=False)
        self.up = nn.Linear(cfg.n_embd, cfg.n_hidden, bias=False)
        self.down = nn.Linear(cfg.n_hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = norm(cfg)
        self.mlp = SwiGLU(cfg) if cfg.arch == "llama" else MLP(cfg)

    def forward(self, x, cache=None, rope=None):  # pre-norm residual block
        x = x + self.attn(self.ln_1(x), cache, rope)
        return x + self.mlp(self.ln_2(x))


# The linear layers of a block that LoRA may adapt, by short name (the paper's q, k, v, o, and the MLP's).
LORA_TARGETS = {
    "gpt2": {"q": "attn.c_q", "k": "attn.c_k", "v": "attn.c_v", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
    "llama": {"q": "attn.c_q", "k": "attn.c_k", "v": "attn.c_v", "o": "attn.c_proj",
              "gate": "mlp.gate", "up": "mlp.up", "down": "mlp.down"},
}


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        llama = cfg.arch == "llama"
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            **({} if llama else dict(wpe=nn.Embedding(cfg.block_size, cfg.n_embd))),  # Llama: RoPE instead
            h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer)),
            ln_f=norm(cfg),
        ))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if not llama or cfg.tie_head:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith(("c_proj.weight", "down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def blocks(self):
        return self.transformer.h

    @property
    def lora_targets(self):
        """{short name: path inside a block} of the linear layers LoRA may adapt."""
        return LORA_TARGETS[self.config.arch]

    def new_cache(self):
        """An empty key/value cache for forward(idx, cache): one dict per block."""
        return [dict() for _ in self.blocks]

    def forward(self, idx, cache=None, only=None):
        """idx (B, T) token ids -> logits (B, T, V); logits[:, t] predicts token t + 1.
        `cache` (new_cache()) makes generation reuse earlier keys and values. `only`, a (B, T) bool
        mask: the logits at those positions alone, (N, V) in row-major order. The losses need logits
        only where there is a target, and the head (V × C) is a fifth of SmolLM2-135M's FLOPs."""
        past = cache[0]["k"].size(2) if cache and "k" in cache[0] else 0
        T = idx.size(1)
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.transformer.wte(idx)  # (B, T, C)
        if self.config.arch == "llama":
            rope = rope_angles(pos, self.config.n_embd // self.config.n_head, self.config.rope_theta)
        else:
            x, rope = x + self.transformer.wpe(pos), None
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache[i], rope)
        x = self.transformer.ln_f(x)
        return self.lm_head(x if only is None else x[only])  # (B, T, V), or (N, V)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, stop=None):
        """Extend idx (B, T) by max_new_tokens tokens. temperature=0 is greedy (argmax). With `stop`
        (a token id), end early once every row has produced it: the rows then have fewer new tokens."""
        cache, start = None, idx.size(1)
        for i in range(max_new_tokens):
            if cache is None:
                # (Re)fill the cache from the last block_size tokens: at the start, and once the
                # sequence outgrows the context (it is then cropped, as nanoGPT).
                cache = self.new_cache()
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
            if stop is not None and (idx[:, start:] == stop).any(1).all():
                break
            if i + 1 < max_new_tokens:
                if idx.size(1) <= self.config.block_size:
                    logits = self(nxt, cache)[:, -1]  # one new position against the cached ones
                else:
                    cache = None
        return idx
def at_least_float32(x):
    """Half-precision logits (bf16 autocast) are upcast for the softmax; float32 and float64 stay."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def token_nll(logits, targets):
    """Per-token negative log-likelihood. logits (B, T, V) and targets (B, T) are aligned:
    logits[:, t] scores targets[:, t] (collate already shifted the labels by one); or logits (N, V)
    at the target positions alone (forward's `only=targets != IGNORE`).
    Returns (nll, mask), both (B, T); nll is 0 where targets == IGNORE and mask marks the rest."""
    mask = targets != IGNORE
    if logits.dim() == 2:  # (N, V): one row per target, put back in place among zeros
        nll = F.cross_entropy(at_least_float32(logits), targets[mask], reduction="none")
        return torch.zeros(targets.shape, dtype=nll.dtype, device=nll.device).masked_scatter(mask, nll), mask
    nll = F.cross_entropy(at_least_float32(logits).flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                          reduction="none").view(targets.shape)
    return nll, mask


def at_targets(logits, targets):
    """(N, V): the logits at the target positions, from (B, T, V) logits or already (N, V)."""
    return logits if logits.dim() == 2 else logits[targets != IGNORE]


def lm_loss(logits, targets):
    """Mean token NLL over target tokens: the usual language-modelling loss."""
    nll, mask = token_nll(logits, targets)
    return nll.sum() / mask.sum().clamp(min=1)
