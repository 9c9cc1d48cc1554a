import math

import numpy as np

import pytest
import torch

from lib import metrics
from model import IGNORE
from unlearn import ga_loss, ihl_loss, npo_loss


def test_ihl_hand_computed():
    logits = torch.log(torch.tensor([[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]]))  # probabilities as logits
    targets = torch.tensor([[0, 2]])
    # token 1: 1 + 0.6 - 0.3 = 1.3 ; token 2: 1 + 0.3 - 0.5 = 0.8
    assert math.isclose(ihl_loss(logits, targets).item(), (1.3 + 0.8) / 2, rel_tol=1e-6)


def test_ihl_matches_a_float64_brute_force_and_skips_ignored_positions():
    """ℓ_t = max(0, 1 + p(y_t) − max_{v≠y_t} p(v)), mean over the positions that are not IGNORE, written
    out as a loop over positions and vocabulary in float64."""
    torch.manual_seed(0)
    logits = torch.randn(4, 7, 11) * 5
    targets = torch.randint(0, 11, (4, 7))
    targets[:, :3] = IGNORE
    p = logits.double().softmax(-1)
    losses = [max(0.0, 1 + p[b, t, targets[b, t]].item() - max(p[b, t, v].item() for v in range(11) if v != targets[b, t]))
              for b in range(4) for t in range(7) if targets[b, t] != IGNORE]
    assert ihl_loss(logits.double(), targets).item() == pytest.approx(sum(losses) / len(losses), rel=1e-12)
    changed = logits.clone()
    changed[:, :3] = torch.randn(4, 3, 11) * 100  # ignored positions
    assert ihl_loss(changed, targets).item() == ihl_loss(logits, targets).item()
    assert ga_loss(changed, targets).item() == ga_loss(logits, targets).item()


def test_ihl_gradient_on_the_other_tokens_changes_sign_at_the_crossover():
    """∂ℓ/∂z_k = p_k (p(rival) − p(y)) for every token k that is neither the true one nor the rival:
    a descent step lifts them while the true token leads, and lowers them once the rival does."""
    for z in (torch.tensor([3.0, 2.0, 0.5, -1.0]), torch.tensor([2.0, 3.0, 0.5, -1.0])):  # true token 0 ahead, then behind
        z = z.double().requires_grad_(True)
        ihl_loss(z.view(1, 1, -1), torch.tensor([[0]])).backward()
        p = z.detach().softmax(-1)
        assert torch.allclose(z.grad[2:], p[2:] * (p[1] - p[0]), atol=1e-12)


def test_ihl_keeps_pushing_past_the_crossover_until_the_rival_has_all_the_mass():
    """The hinge is not satisfied when the true token loses first place: the loss is still well
    above 0 there, and descent keeps raising the rival (and lowering the rest) until p(rival) ≈ 1."""
    z = torch.tensor([4.0, 2.5, 1.5, 1.0, 0.5, 0.0]).requires_grad_(True)
    y, states = torch.tensor([[0]]), []
    for _ in range(200):
        loss = ihl_loss(z.view(1, 1, -1), y)
        g, = torch.autograd.grad(loss, z)
        p = z.detach().softmax(-1)
        states.append((loss.item(), p[0].item(), p[1].item(), 1 - p[0].item() - p[1].item()))
        with torch.no_grad():
            z -= 2.0 * g
    cross = next(i for i, (_, pt, pr, _) in enumerate(states) if pr > pt)
    assert states[cross][0] > 0.3  # past the crossover the loss is still far from 0
    after = states[cross:]
    assert all(b[2] > a[2] for a, b in zip(after, after[1:]))  # the rival's probability still rises
    assert all(b[3] < a[3] for a, b in zip(after, after[1:]))  # and every other token's mass falls
    assert states[-1][2] > 0.99 and states[-1][0] < 0.02


def test_ihl_step_lowers_the_true_token_and_lifts_the_runner_up():
    logits = torch.tensor([[[3.0, 2.0, 0.5, -1.0]]], requires_grad=True)
    y = torch.tensor([[0]])
    p0 = logits.softmax(-1).detach()
    ihl_loss(logits, y).backward()
    with torch.no_grad():
        p1 = (logits - 0.5 * logits.grad).softmax(-1)
    assert p1[0, 0, 0] < p0[0, 0, 0]  # the true token falls
    assert p1[0, 0, 1] > p0[0, 0, 1]  # the runner-up rises
    assert (p1[0, 0, 1] - p0[0, 0, 1]) > (p1[0, 0, 2] - p0[0, 0, 2])  # more than any other token


def test_ga_is_unbounded_but_ihl_is_not():
    logits = torch.zeros(1, 1, 5, requires_grad=True)
    y = torch.tensor([[2]])
    opt = torch.optim.SGD([logits], lr=10.0)
    values = []
    for _ in range(200):
        opt.zero_grad()
        loss = ga_loss(logits, y)
        loss.backward()
        opt.step()
        values.append(loss.item())
    assert values[-1] < -20 and values[-1] < values[-50]  # still falling: no floor
    logits = torch.zeros(1, 1, 5, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=10.0)
    for _ in range(200):
        opt.zero_grad()
        loss = ihl_loss(logits, y)
        loss.backward()
        opt.step()
    p = logits.softmax(-1)[0, 0]
    assert loss.item() < 0.05 and p.max() > 0.95 and p[2] < 0.05  # it ends, at one-hot on a rival


def test_npo_hand_computed():
    logits = torch.randn(2, 3, 6)
    y = torch.randint(0, 6, (2, 3))
    # π_θ = π_ref: (2/β) log 2
    assert math.isclose(npo_loss(logits, y, logits.clone(), beta=0.1).item(), 20 * math.log(2), rel_tol=1e-6)
    # lower likelihood than the reference -> smaller loss
    assert npo_loss(logits - 5 * torch.nn.functional.one_hot(y, 6), y, logits).item() < 20 * math.log(2)


# ----------------------------------------------------------------------------- metrics on hand-made cases
class Counting(torch.nn.Module):
    """A fake language model that is sure the next token is token + 1 (mod 10)."""

    def new_cache(self):  # no blocks, no keys or values: the cache is an empty list
        return []

    def forward(self, idx, cache=None, only=None):
        logits = 30 * torch.nn.functional.one_hot((idx + 1) % 10, 10).float()
        return logits if only is None else logits[only]


def test_memorization_accuracy_by_hand():
    # tokens 1 2 3 5 9: predictions 2 3 4 6 -> right, right, wrong, wrong
    assert metrics.memorization_accuracy(Counting(), [[1, 2, 3, 5, 9]]) == [0.5]


def test_extraction_likelihood_by_hand():
    # tokens 1 2 3 7 8 9, n = 2. Prefix 1 -> 2 3 4 5 6: 1 of the suffix's 4 bigrams;
    # prefix 1 2 -> 0/3; prefix 1 2 3 -> 0/2; prefix 1 2 3 7 -> 8 9: 1/1. Mean = 1.25 / 4.
    assert metrics.extraction_likelihood(Counting(), [[1, 2, 3, 7, 8, 9]], n=2) == [pytest.approx(0.3125)]
    # too short for a 2-gram suffix: no EL at all (not 0, which would read as "forgotten")
    assert metrics.extraction_likelihood(Counting(), [[1, 2], [1, 2, 3, 7, 8, 9]], n=2)[0] is None
    from lib import data
    report, _ = metrics.split_report(Counting(), data.Encoded(texts=[[1, 2], [1, 2, 3, 7, 8, 9]]), el_n=2)
    assert report["el2"] == pytest.approx(0.3125)
    assert metrics.ngram_overlap([1, 2, 3], [1, 2, 3], 2) == 1.0


def test_qa_metrics_by_hand():
    # prompt 1 2; true answer 3 4 (both predicted: p = 1 each), wrong answer 5 6 (p(5) = 0)
    qa = [([1, 2], [[3, 4], [5, 6]]), ([1, 2], [[3, 7], [3, 4]])]  # the second: last token wrong
    r, ratios, exact = metrics.qa_metrics(Counting(), qa)
    assert exact == [True, False] and ratios.shape == (2,) and ratios[0] < 1e-3 and ratios[1] > 1e3
    # no paraphrases: the truth ratio is measured on the trained answers and their wrong versions
    assert r["truth_ratio"] == pytest.approx(np.mean([max(0, 1 - ratios[0]), 0.0]))


def S(nll):
    """An answer's score with mean NLL `nll` (exact match and accuracy do not enter the truth ratio)."""
    return metrics.Score(nll, False, 0.0)


def test_truth_ratio_is_tofus_formula():
    """R = exp(L(paraphrase) − mean_k L(perturbed_k)) with per-token mean losses L, by hand."""
    # the mean answer NLL of the paraphrase, then of three perturbed paraphrases
    scores = [[S(0.5), S(1.0), S(2.0), S(3.0)],   # knows: R = e^(0.5 − 2) = e^−1.5
              [S(2.0), S(1.0), S(1.0), S(1.0)]]  # prefers a wrong value: R = e^1
    R = metrics.truth_ratios(scores)
    assert R == pytest.approx([math.exp(-1.5), math.e])
    # TOFU's aggregates: forget mean min(R, 1/R); retain side mean max(0, 1 − R)
    assert metrics.truth_ratio_summary(R, forget_like=True) == pytest.approx((math.exp(-1.5) + 1 / math.e) / 2)
    assert metrics.truth_ratio_summary(R, forget_like=False) == pytest.approx((1 - math.exp(-1.5) + 0) / 2)
    # the geometric mean over perturbations, not the arithmetic one: e^(0.5 - mean(1, 3)) = e^-1.5
    assert metrics.truth_ratios([[S(0.5), S(1.0), S(3.0)]])[0] == pytest.approx(math.exp(-1.5))
    # and through a model: paraphrase [3, 4] is certain (L = 0), the perturbed [5, 6] impossible
    from lib import data
    split = data.Encoded(qa=[([1, 2], [[3, 4], [5, 6]])], paraphrased=[([1, 2], [[3, 4], [3, 9], [7, 8]])])
    r, R = metrics.split_report(Counting(), split, forget_like=True)
    assert R.shape == (1,) and R[0] < 1e-6 and r["truth_ratio"] == pytest.approx(R[0])


def test_membership_auc_and_privacy_leakage_by_hand():
    # member NLLs 1, 2 vs non-members 1.5, 3: pairs (1<1.5, 1<3, 2>1.5, 2<3) -> 3/4
    assert metrics.mia_auc([1, 2], [1.5, 3]) == 0.75
    assert metrics.mia_auc([1, 2], [1, 2]) == 0.5  # ties count one half
    assert metrics.privacy_leakage(0.75, 0.5) == 0.5 and metrics.privacy_leakage(0.5, 0.5) == 0.0


def test_stopping_thresholds_by_hand():
    ma, el = [0.6, 0.8], [0.1, 0.3, 0.2]  # sd (ddof 1): 0.1414..., 0.1
    t = metrics.stopping_thresholds(ma, el, n_forget=4)
    assert t.ma == pytest.approx(0.7 + 1.645 * math.sqrt(0.02) * math.sqrt(1 / 4 + 1 / 2))
    assert t.el == pytest.approx(0.2 + 1.645 * 0.1 * math.sqrt(1 / 4 + 1 / 3)) and t.qa is None


def test_greedy_answers_batched_equal_one_at_a_time():
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=12)).eval()
    prompts = [[1, 2, 3], [4], [5, 6, 7], [8, 9], [3]]
    eot = 11
    batched = metrics.greedy_answers(gpt, prompts, eot, max_new=6)
    for p, got in zip(prompts, batched):
        one = gpt.generate(torch.tensor([p]), 6, temperature=0)[0, len(p):].tolist()
        assert got == (one[:one.index(eot) + 1] if eot in one else one)


def test_fluency_by_hand():
    # judged by Counting itself every answer token is the argmax of a near one-hot: NLL ≈ 0; a jump costs a lot
    mean, sd = metrics.fluency(Counting(), [[1, 2], [1, 2]], [[3, 4], [9, 4]])
    nll_jump = (-torch.log_softmax(Counting()(torch.tensor([[1, 2, 9]]))[0, 1], -1)[9]
                - torch.log_softmax(Counting()(torch.tensor([[1, 2, 9]]))[0, 2], -1)[4]).item() / 2
    assert mean == pytest.approx((0 + nll_jump) / 2, abs=1e-4) and sd == pytest.approx(nll_jump / 2, abs=1e-4)


def test_ks_pvalues_match_known_values():
    # fully separated samples of 3 and 3: D = 1, p = 2 / C(6, 3) = 0.1 (by hand)
    assert metrics.ks_2samp_pvalue([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert metrics.ks_2samp_pvalue([1, 2, 3], [1, 2, 3]) == 1.0
    # values from scipy.stats.ks_2samp (scipy 1.16, method="exact")
    assert metrics.ks_2samp_pvalue([1, 2, 3, 4], [2.5, 5, 6]) == pytest.approx(0.39999999999999997, rel=1e-9)
    rng = __import__("numpy").random.default_rng(0)
    a, b = rng.normal(size=20), rng.normal(0.5, 1, size=15)
    assert metrics.ks_2samp_pvalue(a, b) == pytest.approx(0.10191783128372234, rel=1e-9)
    a, b = rng.normal(size=137), rng.normal(1.0, 1, size=137)
    assert metrics.ks_2samp_pvalue(a, b) == pytest.approx(8.128110320249485e-06, rel=1e-9)


def test_model_utility_is_a_harmonic_mean():
    r = dict(qa_prob=0.5, qa_acc=1.0, truth_ratio=0.25)  # truth_ratio: the retain-side summary max(0, 1 − R)
    assert metrics.model_utility([r]) == pytest.approx(3 / (2 + 1 + 4))
    assert metrics.model_utility([r, dict(qa_prob=0.5, qa_acc=0.0, truth_ratio=0.9)]) == 0.0
    assert metrics.model_utility([dict(qa_prob=0.5, qa_acc=1.0, truth_ratio=None)]) == pytest.approx(2 / 3)
    assert metrics.model_utility([dict(ma=0.3)]) is None


def test_float64_logits_give_float64_losses():
    """Only half precision is upcast: a float64 check of a loss stays exact."""
    import unlearn
    from model import lm_loss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 11, (2, 5), generator=g)
    for loss in (lm_loss(logits, targets), unlearn.ihl_loss(logits, targets),
                 unlearn.npo_loss(logits, targets, logits.detach() + 0.1)):
        assert loss.dtype == torch.float64
    assert lm_loss(logits.bfloat16(), targets).dtype == torch.float32


def test_a_holdout_with_no_question_right_still_gives_a_passable_qa_threshold():
    # 0 of 4 holdout questions right: the sample sd is 0; Laplace's p = 1/6 gives sd = sqrt(5/36)
    t = metrics.stopping_thresholds([0.6, 0.8], [0.1, 0.3], n_forget=2, qa_hits=[0, 0, 0, 0], n_forget_qa=8)
    assert t.qa == pytest.approx(1.645 * math.sqrt(5 / 36) * math.sqrt(1 / 8 + 1 / 4)) and t.qa > 0
    # a question without wrong answers: no truth ratio for the set, rather than a NaN
    assert metrics.truth_ratios([[S(0.5), S(1.0)], [S(0.5)]]) is None


def test_greedy_text_survives_ids_past_the_tokenizer():
    """The embedding is padded past the tokenizer's last id; an unlearned model may generate one."""
    from lib import data, evaluation
    enc = data.get_tokenizer()
    they, play = enc.encode_ordinary(" They")[0], enc.encode_ordinary(" play")[0]

    class Fake(torch.nn.Module):
        config = type("C", (), {"block_size": 64})()

        def generate(self, x, n, temperature=0, stop=None):
            return torch.cat([x, torch.tensor([[they, enc.n_vocab + 2, play, enc.eot_token, 3]])], 1)
    assert evaluation.greedy_text(Fake(), enc, [1, 2], "cpu") == "They<?> play"
