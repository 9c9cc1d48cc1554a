import numpy as np
import pytest
import torch
from torch.func import functional_call, grad, vmap

import fisher
import lora
from lib import data
from model import GPT, GPTConfig, lm_loss, token_nll

TINY = GPTConfig(block_size=16, vocab_size=40, n_layer=2, n_head=2, n_embd=16)


def tiny(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return GPT(TINY).to(dtype).eval()


def examples(n, seed=0, vocab=40):
    """n random (tokens, is_target) sequences of different lengths; the first 2 tokens are prompt."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        toks = torch.randint(0, vocab, (5 + i % 4,), generator=g).tolist()
        out.append((toks, [False, False] + [True] * (len(toks) - 2)))
    return out


def test_lora_starts_as_identity_and_merged_copy_is_exact():
    m = tiny()
    x = torch.randint(0, 40, (2, 10))
    before = m(x)
    layers = lora.add_lora(m, rank=4, alpha=8)
    assert len(layers) == 2 * 6
    assert torch.equal(m(x), before)  # B = 0
    for l in layers.values():
        torch.nn.init.normal_(l.B)
    W = {n: l.base.weight.clone() for n, l in layers.items()}
    adapted = m(x)
    plain = lora.merged_copy(m)
    assert (plain(x) - adapted).abs().max() < 1e-5  # W + s·BA in one matrix computes the same
    assert all(torch.equal(l.base.weight, W[n]) for n, l in layers.items())  # the adapted model is untouched
    # the copy's weights are as frozen as the ones it was made from (it used to turn them all trainable)
    assert not any(p.requires_grad for p in plain.parameters())


def test_only_adapters_train_and_the_head_stays_tied():
    m = tiny()
    lora.add_lora(m, rank=2, alpha=4, layers=("q", "v", "down"))
    x, y = torch.randint(0, 40, (2, 8)), torch.randint(0, 40, (2, 8))
    lm_loss(m(x), y).backward()
    for name, p in m.named_parameters():
        is_adapter = name.endswith((".A", ".B"))
        assert p.requires_grad == is_adapter, name
        assert (p.grad is not None) == is_adapter, name
    # per block: q and v are 16x16 (A 2x16, B 16x2), down is 16x64 (A 2x64, B 16x2)
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 2 * (2 * (2 * 16 + 16 * 2) + (2 * 64 + 16 * 2))
    assert m.lm_head.weight is m.transformer.wte.weight
    plain = lora.merged_copy(m)
    assert plain.lm_head.weight is plain.transformer.wte.weight
    assert not lora.lora_layers(plain)


def test_bad_rank_and_layers():
    with pytest.raises(ValueError, match="rank"):
        lora.add_lora(tiny(), rank=17, alpha=1)
    with pytest.raises(ValueError, match="rank"):
        lora.add_lora(tiny(), rank=0, alpha=1)
    with pytest.raises(ValueError, match="unknown LoRA layers"):
        lora.add_lora(tiny(), rank=2, alpha=1, layers=("lm_head",))


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_fisher_equals_per_example_squared_gradients():
    """One sequence per batch: F = Σ_i n_i g_i² / Σ_i n_i with g_i = ∂ mean-NLL_i / ∂W, the
    per-example gradients computed independently with torch.func in float64."""
    m = tiny(dtype=torch.float64)
    ex = examples(6)
    names = [f"transformer.h.{i}.{t}.weight" for i in range(2) for t in ("attn.c_q", "mlp.c_fc")]
    params = {k: v.detach() for k, v in m.named_parameters()}
    x, y = data.collate(ex)  # padded: causal attention keeps padding out of every real position

    def mean_nll(w, xi, yi):
        logits = functional_call(m, {**params, **w}, (xi[None],))
        nll, mask = token_nll(logits, yi[None])
        return nll.sum() / mask.sum()

    g = vmap(grad(mean_nll), in_dims=(None, 0, 0))({k: params[k] for k in names}, x, y)
    n = (y != data.IGNORE).sum(1).double()
    lora.add_lora(m, rank=2, alpha=4, layers=("q", "up"))
    F = fisher.fisher_diagonal(m, [[e] for e in ex])
    for k in names:
        want = (n[:, None, None] * g[k] ** 2).sum(0) / n.sum()
        got = F[k.removesuffix(".weight")]
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-12), k
    assert all(p.grad is None for p in m.parameters())
    assert not any(l.base.weight.requires_grad for l in lora.lora_layers(m).values())


def test_weighted_lowrank_reaches_the_optimum():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(12, 9, generator=g, dtype=torch.float64)
    w = torch.rand(12, generator=g, dtype=torch.float64) * 3 + 0.1
    for r in (1, 3, 9):
        B, A = fisher.weighted_lowrank(W, w, r, scaling=2.0, eps=0.0)
        assert B.shape == (12, r) and A.shape == (r, 9)
        err = torch.linalg.norm(w[:, None] * (W - 2.0 * B @ A))
        S = np.linalg.svd((w[:, None] * W).numpy(), compute_uv=False)  # numpy: an independent SVD
        assert abs(err.item() - np.sqrt((S[r:] ** 2).sum())) < 1e-10
    # another rank-3 matrix is never better in the weighted norm
    X = torch.randn(12, 3, dtype=torch.float64, generator=g) @ torch.randn(3, 9, dtype=torch.float64, generator=g)
    B, A = fisher.weighted_lowrank(W, w, 3, 2.0, eps=0.0)
    assert torch.linalg.norm(w[:, None] * (W - 2.0 * B @ A)) <= torch.linalg.norm(w[:, None] * (W - X))


def test_unit_weights_give_pissa_top_singular_directions():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(10, 7, generator=g, dtype=torch.float64)
    B, A = fisher.weighted_lowrank(W, torch.ones(10, dtype=torch.float64), 3, scaling=0.5, eps=0.0)
    U, S, Vt = np.linalg.svd(W.numpy(), full_matrices=False)
    assert np.allclose((0.5 * B @ A).numpy(), U[:, :3] * S[:3] @ Vt[:3], atol=1e-12)
    # PiSSA's split: B = U_r sqrt(S_r/s), A = sqrt(S_r/s) V_rᵀ (up to the sign of each direction)
    assert np.allclose(np.abs(B.numpy()), np.abs(U[:, :3] * np.sqrt(S[:3] / 0.5)), atol=1e-12)


def test_randomized_svd_is_close_on_a_low_rank_matrix():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(30, 4, generator=g) @ torch.randn(4, 20, generator=g)
    w = torch.rand(30, generator=g) + 0.5
    Be, Ae = fisher.weighted_lowrank(W, w, 4, 1.0)
    Br, Ar = fisher.weighted_lowrank(W, w, 4, 1.0, randomized=True)
    assert torch.allclose(Be @ Ae, Br @ Ar, atol=1e-4)


@pytest.mark.parametrize("method", ["pissa", "fila"])
def test_init_keeps_the_model_function_and_adapter_round_trip(method):
    m = tiny()
    x = torch.randint(0, 40, (3, 12))
    before = m(x)
    lora.add_lora(m, rank=4, alpha=8)
    Ff = fisher.fisher_diagonal(m, [[e] for e in examples(4, seed=1)])
    Fr = fisher.fisher_diagonal(m, [examples(8, seed=2)])
    weights = fisher.init_adapters(m, method, Ff, Fr)
    assert (m(x) - before).abs().max() <= 1e-5
    assert all(l.B.abs().sum() > 0 for l in lora.lora_layers(m).values())
    assert (len(weights) == 12) == (method == "fila")
    # train a little, save only the adapters, load them onto a fresh copy of the original model
    for l in lora.lora_layers(m).values():
        l.A.data += 0.01
    after = m(x)
    fresh = tiny()
    lora.add_lora(fresh, rank=4, alpha=8)
    lora.load_lora_state_dict(fresh, lora.lora_state_dict(m))
    assert (fresh(x) - after).abs().max() <= 1e-5
    assert (lora.merged_copy(m)(x) - after).abs().max() <= 1e-5


def test_bad_fisher_gets_a_clear_error():
    m = tiny()
    lora.add_lora(m, rank=2, alpha=4, layers=("q",))
    F = fisher.fisher_diagonal(m, [examples(3)])
    zero = {k: torch.zeros_like(v) for k, v in F.items()}
    nan = {k: v.clone().fill_(float("nan")) for k, v in F.items()}
    with pytest.raises(ValueError, match="forget Fisher is zero"):
        fisher.init_adapters(m, "fila", zero, F)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fisher.init_adapters(m, "fila", F, nan)
    with pytest.raises(ValueError, match="needs the forget and retain Fisher"):
        fisher.init_adapters(m, "fila")
    with pytest.raises(ValueError, match="needs the forget and retain Fisher"):
        fisher.init_adapters(m, "fila", F, None)
    with pytest.raises(ValueError, match="no LoRA layers"):
        fisher.fisher_diagonal(tiny(), [examples(2)])


def test_loading_an_adapter_of_another_rank_is_a_clear_error():
    m = tiny()
    lora.add_lora(m, rank=4, alpha=8)
    fisher.init_adapters(m, "pissa")
    other = tiny()
    lora.add_lora(other, rank=2, alpha=4)
    W = {n: l.base.weight.clone() for n, l in lora.lora_layers(other).items()}
    with pytest.raises(ValueError, match="has rank 4, the model 2"):
        lora.load_lora_state_dict(other, lora.lora_state_dict(m))
    assert all(torch.equal(l.base.weight, W[n]) for n, l in lora.lora_layers(other).items())  # untouched


def test_fila_eps_decides_whether_the_retain_fisher_counts():
    """w_i = sqrt(Σ_j F_f / (F_r + ε)), by hand: with ε far below the retain Fisher, a row the retain
    set leans on (row 1) is weighted down; with ε far above it (the authors' 1e-5 against a retain
    Fisher of 1e-10 to 1e-8 here), both rows get the same weight: only the forget Fisher counts."""
    Ff = torch.full((2, 3), 1e-6, dtype=torch.float64)
    Fr = torch.tensor([[1e-10] * 3, [1e-8] * 3], dtype=torch.float64)
    for eps in (1e-12, 1e-5):
        want = torch.sqrt((Ff / (Fr + eps)).sum(1))
        assert torch.allclose(fisher.row_importance(Ff, Fr, eps), want, rtol=1e-12)
    small, large = fisher.row_importance(Ff, Fr, 1e-12), fisher.row_importance(Ff, Fr, 1e-5)
    assert small[0] / small[1] == pytest.approx(10, rel=1e-2)  # sqrt(100)
    assert large[0] / large[1] == pytest.approx(1, abs=0.01)
