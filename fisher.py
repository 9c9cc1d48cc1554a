"""Fisher information and FILA, the Fisher-weighted LoRA initialisation (METHOD §3-§4).

Empirical diagonal Fisher of an adapted weight W on a data set D (METHOD §3):
    F_D[i, j] = (1 / N_D) · Σ_batches n_b · (∂ NLL_b / ∂W[i, j])²
with NLL_b the mean token NLL of batch b, n_b its target tokens, N_D = Σ n_b. With one sequence per
batch this is the exact per-sequence empirical Fisher.

FILA (METHOD §4): which rows of W matter for the forget set relative to the retain set,
    I = F_f / (F_r + ε),   w_i = sqrt(Σ_j I[i, j])          (one weight per output row)
then the best rank-r approximation of W in the w-weighted norm ‖diag(w)(W − X)‖_F:
    diag(w) W = U S Vᵀ,   B = diag(1/(w+ε)) U_r sqrt(S_r/s),   A = sqrt(S_r/s) V_rᵀ,   W ← W − s·BA.
With w = 1 this is PiSSA. The model's outputs are unchanged at initialisation.
"""
import torch

from lib import data
from lora import lora_layers
from model import IGNORE, token_nll

EPS = 1e-5  # ε of METHOD §4, in the importance ratio and in 1/(w + ε)


def fisher_diagonal(model, batches, device="cpu", reduce=None):
    """{adapted layer name: F (out, in), float32} for the frozen weight W of every LoRALinear.
    `batches` yields lists of examples (data.collate). Gradients are taken with autograd.grad for
    those weights only: one float32 accumulator per weight and no .grad buffers anywhere.
    `reduce` (e.g. ddp.all_reduce_sum) sums the accumulators and the token count over processes
    that each saw a share of the batches, before the division."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers: call lora.add_lora first")
    weights = [m.base.weight for m in layers.values()]
    fisher = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    n_total = 0
    try:
        for w in weights:
            w.requires_grad_(True)
        for batch in batches:
            x, y = data.collate(batch, device)
            nll, mask = token_nll(model(x, only=y != IGNORE), y)  # the head at the targets alone
            n_b = int(mask.sum())
            if n_b == 0:
                continue
            grads = torch.autograd.grad(nll.sum() / n_b, weights)  # ∂ NLL_b / ∂W
            for f, g in zip(fisher, grads):
                f.add_(g.float().square(), alpha=n_b)
            n_total += n_b
    finally:
        for w in weights:
            w.requires_grad_(False)
    if reduce is not None:
        for acc in fisher:
            reduce(acc)
        n_total = int(reduce(torch.tensor(n_total, dtype=torch.long, device=fisher[0].device)).item())
    if n_total == 0:
        raise ValueError("no target tokens in the Fisher data")
    return {name: f / n_total for name, f in zip(layers, fisher)}


def weighted_lowrank(W, row_weights, rank, scaling, eps=EPS, randomized=False, niter=4):
    """(B, A) with s·BA = diag(1/(w+ε)) U_r S_r V_rᵀ, the best rank-r approximation of W in the
    row-weighted Frobenius norm (exact when ε = 0). W: (out, in), row_weights: (out,), non-negative.
    The SVD runs in float32 (float64 if W is float64); randomized uses torch.svd_lowrank, as the
    authors' code."""
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    W, w = W.to(dtype), row_weights.to(W.device, dtype)
    M = w[:, None] * W  # diag(w) W: (out, in)
    if randomized:
        U, S, V = torch.svd_lowrank(M, q=rank, niter=niter)
        Vh = V.T
    else:
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    root = (S[:rank] / scaling).sqrt()                  # sqrt(S_r / s): (r,)
    B = U[:, :rank] * root / (w + eps)[:, None]         # (out, r)
    A = root[:, None] * Vh[:rank]                        # (r, in)
    return B, A


def row_importance(f_forget, f_retain, eps=EPS):
    """w_i = sqrt(Σ_j F_f[i, j] / (F_r[i, j] + ε)): (out,). The one place the Fisher is checked:
    NaN/Inf or negative entries, and a forget Fisher that is zero (no gradient reached the layer,
    so there is nothing to choose the directions by), are errors."""
    for name, f in (("forget", f_forget), ("retain", f_retain)):
        if not torch.isfinite(f).all():
            raise ValueError(f"the {name} Fisher has NaN or Inf entries (did the loss overflow?)")
        if (f < 0).any():
            raise ValueError(f"the {name} Fisher has negative entries: it must be a mean of squares")
    if not (f_forget > 0).any():
        raise ValueError("the forget Fisher is zero: no gradient reached this layer")
    return (f_forget / (f_retain + eps)).sum(1).sqrt()


@torch.no_grad()
def init_adapters(model, method, fisher_forget=None, fisher_retain=None, randomized=False, eps=EPS):
    """Initialise every LoRALinear in place from its original weight W: 'pissa' (the top-r singular
    directions of W) or 'fila' (of diag(w) W, w the Fisher row weights). Returns {layer: w} for fila
    (for inspection), else {}. eps: FILA's ε (METHOD §4). Default LoRA needs no call: LoRALinear
    starts at B = 0."""
    if method not in ("pissa", "fila"):
        raise ValueError(f"unknown adapter init {method!r}: pissa or fila")
    weights = {}
    for name, m in lora_layers(model).items():
        W = m.original_weight()
        if method == "pissa":
            w = torch.ones(W.shape[0], device=W.device)
        else:
            if name not in (fisher_forget or {}) or name not in (fisher_retain or {}):
                raise ValueError(f"FILA needs the forget and retain Fisher of {name}")
            w = weights[name] = row_importance(fisher_forget[name], fisher_retain[name], eps)
        B, A = weighted_lowrank(W, w, m.rank, m.scaling, eps=0.0 if method == "pissa" else eps, randomized=randomized)
        m.init_residual(B.to(W.dtype), A.to(W.dtype))
    return weights
