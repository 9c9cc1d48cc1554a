"""A GPT-2 language model in one file, after nanoGPT, shaped for unlearning.

- forward(idx) returns logits at every position, (B, T, V): the unlearning losses and the Fisher
  pass need them all, not only the last.
- token_nll is the one place where the per-token loss is computed; ignored labels (-100) never count.
- q, k and v are three Linear layers (GPT-2 stores them fused as c_attn): LoRA then adapts each one,
  as the paper does (METHOD §2). hf.py reads and writes Hugging Face GPT-2 folders.
- No dropout: memorising facts and removing them both want a deterministic network.
"""
import math
from dataclasses import dataclass

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
    ln_eps: float = 1e-5    # LayerNorm epsilon, as GPT-2


def causal_mask(T, S, device):
    """(T, S) bool, True where a query may look: the T new tokens sit at positions S − T .. S − 1 of
    the S keys, so query i sees keys 0 .. S − T + i. Only T > 1 tokens after a filled cache need it:
    without a cache (S == T) it is is_causal's triangle, and one new token (T == 1) sees every key."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=S - T)


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
        S = k.size(2)  # keys: S − T cached ones, then these T
        mask = causal_mask(T, S, x.device) if S > T > 1 else None  # T new tokens after a filled cache
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=S == T > 1)  # (B, nh, T, hs)
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
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, stop=None):
        """Extend idx (B, T) by max_new_tokens tokens. temperature=0 is greedy (argmax). With `stop`
        (a token id), end early once every row has produced it: the rows then have fewer new tokens."""
        cache, start = None, idx.size(1)
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
