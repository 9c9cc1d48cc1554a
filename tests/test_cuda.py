"""GPU checks: bf16 autocast on CUDA must not change what the losses and FILA compute, beyond bf16 rounding.

Every test but the last builds its model and data on "cuda" and is skipped where there is no CUDA device;
the last one checks, on a machine without one, that `python -m experiments.bench_gpu` says so and exits 0.
Tolerances: bf16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%); a 2-layer model's logits
carry a few of those roundings, so losses are compared at rtol 2e-2 and logits (of size ~10) at atol 0.1 +
rtol 2e-2; float32 paths at 1e-4.
"""
import os
import subprocess
import sys

import pytest
import torch

import fisher
import lora
from model import IGNORE, GPT, GPTConfig, lm_loss
from unlearn import ihl_loss

DEVICE = "cuda"
HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
CFG = GPTConfig(block_size=64, vocab_size=512, n_layer=2, n_head=4, n_embd=128)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_gpt(seed=0):
    """A small GPT on DEVICE whose output distribution is not flat (token embeddings scaled up), so that
    the probabilities IHL compares differ from token to token."""
    torch.manual_seed(seed)
    with torch.device(DEVICE):
        model = GPT(CFG).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(4)  # tied: the output logits grow with it
    return model


def tokens(B=4, T=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (B, T), generator=g)
    y = torch.roll(x, -1, 1)
    y[:, :8] = IGNORE  # a prompt: not a target
    return x.to(DEVICE), y.to(DEVICE)


def examples(n, seed):
    """n random (tokens, is_target) sequences for fisher.fisher_diagonal; the first 4 tokens are prompt."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, CFG.vocab_size, (24 + i % 5,), generator=g).tolist(), [False] * 4 + [True] * (20 + i % 5))
            for i in range(n)]


def bf16():
    return torch.autocast(DEVICE, dtype=torch.bfloat16)


@cuda_only
def test_losses_and_gradients_under_bf16_autocast_match_float32():
    model = small_gpt()
    x, y = tokens()
    with bf16():
        logits16 = model(x)
    assert logits16.dtype == torch.bfloat16  # autocast is really on
    logits32 = model(x)
    assert logits32.dtype == torch.float32
    # Every other target is the model's own top token: IHL's hinge is then active with p(y) large, not
    # only with p(y) ≈ 0 as for random targets.
    y[:, ::2] = torch.where(y[:, ::2] == IGNORE, IGNORE, logits32.detach().argmax(-1)[:, ::2])
    for loss in (lm_loss, ihl_loss):
        torch.testing.assert_close(loss(logits16, y), loss(logits32, y), rtol=2e-2, atol=0)
    # The gradient the unlearning step follows: same direction in bf16 as in float32.
    grads = []
    for ctx in (bf16, torch.enable_grad):
        model.zero_grad()
        with ctx():
            ihl_loss(model(x), y).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.isfinite(grads[0]).all()
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.99


@cuda_only
def test_fila_init_keeps_logits_under_bf16_autocast():
    model = small_gpt()
    lora.add_lora(model, rank=4, alpha=8)
    x, _ = tokens()
    with torch.no_grad():
        ref = model(x)
        with bf16():
            before = model(x).float()
    batches = lambda seed: [examples(4, seed + i) for i in range(3)]  # noqa: E731
    with bf16():  # the Fisher pass under autocast too, as a bf16 run takes it
        F_f = fisher.fisher_diagonal(model, batches(0), device=DEVICE)
        F_r = fisher.fisher_diagonal(model, batches(100), device=DEVICE)
    assert all(f.dtype == torch.float32 and torch.isfinite(f).all() for f in (*F_f.values(), *F_r.values()))
    fisher.init_adapters(model, "fila", F_f, F_r)
    assert all(m.B.abs().sum() > 0 for m in lora.lora_layers(model).values())  # the adapters did move
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=1e-4, atol=1e-4)  # float32: unchanged
        with bf16():
            after = model(x).float()
    # bf16 now rounds W − s·BA and B, A instead of W: the logits stay within bf16 tolerance of float32,
    # and no further from it than twice (plus a little) what bf16 rounding of the untouched model gave.
    torch.testing.assert_close(after, ref, rtol=2e-2, atol=1e-1)
    assert (after - ref).abs().max() <= 2 * (before - ref).abs().max() + 1e-2


@pytest.mark.skipif(HAS_CUDA, reason="checks the message a machine without CUDA gets")
def test_bench_gpu_without_cuda_says_so_and_exits_0():
    r = subprocess.run([sys.executable, "-m", "experiments.bench_gpu"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "CUDA" in r.stdout
