"""What a model remembers, measured (METHOD §5): MA, EL_n, TOFU-style QA metrics, forget quality.

- MA, memorisation accuracy: share of positions where the teacher-forced argmax is the next token.
- EL_n, extraction likelihood: from every prefix, generate greedily as many tokens as the true
  suffix has; the share of the suffix's n-grams that the generation reproduces; mean over prefixes.
- QA: answer probability exp(-mean answer NLL), greedy exact match, truth ratio
  R = mean_wrong P(a_wrong)^(1/|a|) / P(a_true)^(1/|a|).
- forget quality: p-value of the two-sample Kolmogorov-Smirnov test between the truth ratios of a
  model and of the oracle (retrained without the forget set); model utility: harmonic mean.
Every function takes token ids (data.Encoded). Answers end in <|endoftext|>, which counts as an
answer token: a model must also know to stop.
"""
import numpy as np
import torch

import data
from model import token_nll


@torch.no_grad()
def _score(model, examples, batch_size, device):
    """Per example: (mean target NLL, all targets are the argmax, share of targets that are)."""
    out = []
    for chunk in data.batches(examples, batch_size):
        x, y = data.collate(chunk, device)
        logits = model(x)
        nll, mask = token_nll(logits, y)
        hit = (logits.argmax(-1) == y) & mask
        n = mask.sum(1)
        out += zip((nll.sum(1) / n).tolist(), (hit.sum(1) == n).tolist(), (hit.sum(1) / n).tolist())
    return out


def memorization_accuracy(model, texts, batch_size=64, device="cpu"):
    """MA per text (token lists): teacher-forced greedy accuracy over its tokens."""
    return [s[2] for s in _score(model, [(t, [True] * len(t)) for t in texts], batch_size, device)]


def qa_metrics(model, qa, batch_size=128, device="cpu"):
    """qa: [(prompt tokens, [answer tokens, *wrong answers])]. Mean answer probability, exact-match
    accuracy and truth ratio, plus the per-question truth ratios (for the KS test). Without wrong
    answers the truth ratio is None."""
    examples = [(p + a, [False] * len(p) + [True] * len(a)) for p, answers in qa for a in answers]
    scores = iter(_score(model, examples, batch_size, device))
    prob, exact, ratios = [], [], []
    for _, answers in qa:
        s = [next(scores) for _ in answers]
        p = np.exp(-np.array([nll for nll, _, _ in s]))  # P(a)^(1/|a|) for the true and the wrong answers
        prob.append(p[0])
        exact.append(s[0][1])
        if len(p) > 1:
            ratios.append(p[1:].mean() / p[0])
    return dict(prob=float(np.mean(prob)), acc=float(np.mean(exact)),
                truth_ratio=float(np.mean(ratios)) if ratios else None), (np.array(ratios) if ratios else None)


@torch.no_grad()
def extraction_likelihood(model, texts, n=4, device="cpu", chunk=128):
    """EL_n per text (token lists; None for a text too short to have one). Every prefix of a text ends, after its greedy continuation, at the
    text's own length, so all prefixes ("rows") run in lockstep over positions p = 0, 1, ...: at
    p + 1 a row is fed the true token while still inside its prefix, else its own greedy prediction.
    With the key/value cache that is one single-token forward per position, for all rows at once."""
    rows = [(i, t) for i, s in enumerate(texts) for t in range(1, len(s) - n + 1)]  # suffix >= n tokens
    scores = [[] for _ in texts]
    for c in range(0, len(rows), chunk):
        part = rows[c:c + chunk]
        L = max(len(texts[i]) for i, _ in part)
        true = torch.tensor([texts[i] + [0] * (L - len(texts[i])) for i, _ in part], device=device)  # (R, L)
        prefix = torch.tensor([t for _, t in part], device=device)                               # (R,)
        gen, cache = true.clone(), [dict() for _ in model.transformer.h]
        for p in range(L - 1):
            nxt = model(gen[:, p:p + 1], cache)[:, -1].argmax(-1)  # (R,)
            gen[:, p + 1] = torch.where(p + 1 < prefix, true[:, p + 1], nxt)
        for (i, t), g in zip(part, gen.tolist()):
            scores[i].append(ngram_overlap(g[t:len(texts[i])], texts[i][t:], n))
    return [sum(s) / len(s) if s else None for s in scores]  # None: too short for an n-gram suffix


def ngram_overlap(generated, truth, n):
    """Share of the true suffix's n-grams that also occur among the generated n-grams (as sets:
    a repeated n-gram is counted once on each side)."""
    grams = lambda s: {tuple(s[i:i + n]) for i in range(len(s) - n + 1)}
    true = grams(truth)
    return len(grams(generated) & true) / len(true)


def ks_2samp_pvalue(a, b):
    """Two-sided two-sample Kolmogorov-Smirnov test, exact p-value (scipy's default for small
    samples, which TOFU's forget quality uses). Under the null every interleaving of the sorted
    samples is equally likely: a lattice path from (0, 0) to (n, m). The p-value is the probability
    that a random path leaves the band |i/n - j/m| < D. Summing the mass that leaves (rather than
    1 - the mass that stays) keeps tiny p-values exact. O(n m) time; no scipy needed."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    n, m = len(a), len(b)
    both = np.concatenate([a, b])
    i, j = np.searchsorted(a, both, side="right"), np.searchsorted(b, both, side="right")
    d = int(np.abs(i * m - j * n).max())  # the statistic D, times n m: an integer, compared exactly
    if d == 0:
        return 1.0
    row, out = np.zeros(m + 1), 0.0  # row[j] = P(path reaches (i, j) without leaving the band)
    for i in range(n + 1):
        new = np.zeros(m + 1)
        for j in range(m + 1):
            if i == j == 0:
                new[0] = 1.0
                continue
            mass = (row[j] * (n - i + 1) / (n - i + 1 + m - j) if i else 0.0) + \
                   (new[j - 1] * (m - j + 1) / (n - i + m - j + 1) if j else 0.0)
            if abs(i * m - j * n) < d:
                new[j] = mass
            else:
                out += mass
        row = new
    return min(1.0, out)


def split_report(model, split, el_n=None, device="cpu"):
    """Everything about one data.Encoded split: QA (qa_prob, qa_acc, truth_ratio) if it has questions,
    mean MA over its texts if it has texts, and mean EL_n when el_n is given (the costly one).
    Returns (report, per-question truth ratios or None)."""
    was_training = model.training
    model.eval()
    report, ratios = {}, None
    if split.qa:
        qa, ratios = qa_metrics(model, split.qa, device=device)
        report.update(qa_acc=qa["acc"], qa_prob=qa["prob"], truth_ratio=qa["truth_ratio"])
    if split.texts:
        report["ma"] = float(np.mean(memorization_accuracy(model, split.texts, device=device)))
        el = [v for v in extraction_likelihood(model, split.texts, el_n, device) if v is not None] if el_n else []
        if el:  # texts shorter than n + 1 tokens have no EL_n and are left out of the mean
            report[f"el{el_n}"] = float(np.mean(el))
    model.train(was_training)
    return report, ratios


def model_utility(qa_results):
    """Harmonic mean of answer probability, accuracy and max(0, 1 - truth ratio) over the
    retain-side QA results given (e.g. retain and general); None if none has questions."""
    vals = [v for r in qa_results if "qa_acc" in r for v in
            (r["qa_prob"], r["qa_acc"]) + (() if r["truth_ratio"] is None else (max(0.0, 1 - r["truth_ratio"]),))]
    if not vals:
        return None
    return 0.0 if min(vals) <= 0 else len(vals) / sum(1 / v for v in vals)
