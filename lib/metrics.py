"""What a model remembers, measured (METHOD §5): MA, EL_n, TOFU-style QA metrics, forget quality.

- MA, memorisation accuracy: share of positions where the teacher-forced argmax is the next token.
- EL_n, extraction likelihood: from every prefix, generate greedily as many tokens as the true
  suffix has; the share of the suffix's n-grams that the generation reproduces; mean over prefixes.
- QA: answer probability exp(-mean answer NLL), greedy exact match, and the truth ratio on a
  never-trained paraphrase, R = exp(L(paraphrase) − mean_k L(perturbed paraphrase_k)) (TOFU).
- forget quality: p-value of the two-sample Kolmogorov-Smirnov test between the truth ratios of a
  model and of the oracle (retrained without the forget set); model utility: harmonic mean.
- the stopping rule's thresholds, fluency (NLL of the model's answers under the oracle), and
  privacy leakage (a loss-based membership-inference AUC against the oracle's, MUSE's PrivLeak).
Every function takes token ids (data.Encoded). Answers end in <|endoftext|>, which counts as an
answer token: a model must also know to stop.
"""
import re
from typing import NamedTuple

import numpy as np
import torch

from lib import data
from model import IGNORE, token_nll


class Score(NamedTuple):
    """A model on one data.Example, teacher-forced."""
    nll: float       # mean NLL of the target tokens
    exact: bool      # every target token is the argmax: greedy decoding reproduces them
    accuracy: float  # the share of target tokens that are the argmax


@torch.no_grad()
def score_examples(model, examples, batch_size=64, device="cpu"):
    """[data.Example] -> [Score], one per example."""
    out = []
    for chunk in data.batches(examples, batch_size):
        x, y = data.collate(chunk, device)
        mask = y != IGNORE
        logits = model(x, only=mask)  # (N, V) at the targets alone: a real vocabulary makes (B, T, V) huge
        nll, _ = token_nll(logits, y)
        hit = torch.zeros_like(mask).masked_scatter(mask, logits.argmax(-1) == y[mask])
        n = mask.sum(1)
        out += map(Score, (nll.sum(1) / n).tolist(), (hit.sum(1) == n).tolist(), (hit.sum(1) / n).tolist())
    return out


def memorization_accuracy(model, texts, batch_size=64, device="cpu"):
    """MA per text (token lists): teacher-forced greedy accuracy over its tokens."""
    return [s.accuracy for s in score_examples(model, data.whole(texts), batch_size, device)]


def text_nll(model, texts, batch_size=64, device="cpu"):
    """Mean token NLL per text (token lists): the loss a membership-inference attack looks at."""
    return [s.nll for s in score_examples(model, data.whole(texts), batch_size, device)]


def exact_matches(model, qa, device="cpu"):
    """Per question: 1 if the greedy answer is exactly the trained one, else 0 (wrong answers unscored)."""
    return [float(s[0].exact) for s in answer_scores(model, [(p, answers[:1]) for p, answers in qa], device=device)]


def answer_scores(model, qa, batch_size=128, device="cpu"):
    """qa: [(prompt tokens, [answer tokens, *alternatives])] -> per question, a [Score] for the answer
    and each alternative."""
    examples = [data.answer_example(p, a) for p, answers in qa for a in answers]
    it = iter(score_examples(model, examples, batch_size, device))
    return [[next(it) for _ in answers] for _, answers in qa]


def truth_ratios(per_question):
    """Per question R = exp(L(true) − mean_k L(wrong_k)), L the mean token NLL of an answer (TOFU):
    the geometric mean of the wrong answers' per-token probabilities over the true one's. R ≪ 1: the
    model knows the fact; R ≈ 1: it cannot tell the truth from the perturbations.
    per_question: answer_scores' output, the true answer first. None without wrong answers."""
    if not per_question or min(map(len, per_question)) < 2:  # every question needs a wrong answer
        return None
    return np.array([np.exp(true.nll - np.mean([w.nll for w in wrong])) for true, *wrong in per_question])


def truth_ratio_summary(R, forget_like):
    """TOFU's aggregate: on forget-like sets mean min(R, 1/R) (1 = no preference for the truth), on
    retain-side sets mean max(0, 1 − R) (1 = always prefers the truth)."""
    if R is None:
        return None
    return float(np.mean(np.minimum(R, 1 / R) if forget_like else np.maximum(0.0, 1 - R)))


def qa_metrics(model, qa, paraphrased=(), forget_like=False, device="cpu"):
    """Mean answer probability exp(−L) of the trained answers and the truth ratio summary, and per
    question whether the trained answer is the teacher-forced argmax (what greedy decoding
    reproduces). The truth ratio is measured on the paraphrases when the split has them (TOFU: a
    wording never trained with the fact, so it measures the fact, not the string), else on the
    trained answers and their wrong versions. Returns (report, per-question R or None, [exact])."""
    if paraphrased:
        trained = answer_scores(model, [(p, answers[:1]) for p, answers in qa], device=device)
        R = truth_ratios(answer_scores(model, paraphrased, device=device))
    else:
        trained = answer_scores(model, qa, device=device)
        R = truth_ratios(trained)
    report = dict(qa_prob=float(np.mean([np.exp(-s[0].nll) for s in trained])),
                  truth_ratio=truth_ratio_summary(R, forget_like))
    return report, R, [s[0].exact for s in trained]


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
        gen, cache = true.clone(), model.new_cache()
        for p in range(L - 1):
            nxt = model(gen[:, p:p + 1], cache)[:, -1].argmax(-1)  # (R,)
            gen[:, p + 1] = torch.where(p + 1 < prefix, true[:, p + 1], nxt)
        for (i, t), g in zip(part, gen.tolist()):
            scores[i].append(ngram_overlap(g[t:len(texts[i])], texts[i][t:], n))
    return [sum(s) / len(s) if s else None for s in scores]  # None: too short for an n-gram suffix


def mean_extraction_likelihood(model, texts, n, device="cpu"):
    """Mean EL_n over the texts that have one (shorter than n + 1 tokens: left out); None if none has."""
    el = [v for v in extraction_likelihood(model, texts, n, device) if v is not None]
    return float(np.mean(el)) if el else None


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
    return float(min(1.0, out))


def split_report(model, split, el_n=None, device="cpu", forget_like=False):
    """Everything about one data.Encoded split that needs no generation: qa_prob and truth_ratio if
    it has questions, mean MA over its texts if it has texts, mean EL_n when el_n is given (the costly
    one), then qa_acc_verbatim, the share of questions whose trained answer greedy decoding gives
    word for word. Returns (report, per-question truth ratios R or None)."""
    report, ratios, exact = {}, None, None
    if split.qa:
        qa, ratios, exact = qa_metrics(model, split.qa, split.paraphrased, forget_like, device)
        report.update(qa)
    if split.texts:
        report["ma"] = float(np.mean(memorization_accuracy(model, split.texts, device=device)))
        el = mean_extraction_likelihood(model, split.texts, el_n, device) if el_n else None
        if el is not None:
            report[f"el{el_n}"] = el
    if exact is not None:
        report["qa_acc_verbatim"] = float(np.mean(exact))
    return report, ratios


class Thresholds(NamedTuple):
    """The stopping rule's thresholds (stop once the forget set is below every one), each with its
    margin for sampling noise, threshold − holdout mean. metrics.json stores them as a dict."""
    ma: float         # memorisation accuracy
    ma_margin: float
    el: float         # extraction likelihood EL_n (a split report's "el<n>")
    el_margin: float
    qa: float = None  # QA accuracy, where the data has questions
    qa_margin: float = None

    def to_json(self):
        return {k: v for k, v in self._asdict().items() if v is not None}


def stopping_thresholds(ma, el, n_forget, qa_hits=None, n_forget_qa=0, z=1.645):
    """The stopping rule's thresholds from the starting model's per-item scores on unseen data (the
    holdout): mean + z·sd·sqrt(1/n_forget + 1/n_holdout) for MA and EL_n over texts, and, for question
    data, for exact-match accuracy over questions (qa_hits, 0/1 each). A forget set that the model
    knows no better than unseen data has a mean below mean + z·sd/sqrt(n_forget) 95% of the time
    (z = 1.645, one-sided); the 1/n_holdout term adds the uncertainty of the holdout mean itself. A
    holdout with no question right would give sd 0 and a threshold of 0 that nothing can pass; its
    sd is then taken from Laplace's estimate (k + 1)/(n + 2) of the hit rate. -> Thresholds, or None
    without two MA and two EL_n scores."""
    out = {}
    for key, v, n in (("ma", ma, n_forget), ("el", el, n_forget), ("qa", qa_hits, n_forget_qa)):
        v = np.asarray([x for x in (v or []) if x is not None], float)
        if len(v) > 1 and n:
            sd = v.std(ddof=1)
            if key == "qa" and sd == 0:  # no (or every) holdout question right: use Laplace's (k+1)/(n+2)
                p = (v.sum() + 1) / (len(v) + 2)
                sd = np.sqrt(p * (1 - p))
            out[key] = float(v.mean() + z * sd * np.sqrt(1 / n + 1 / len(v)))
            out[key + "_margin"] = out[key] - float(v.mean())  # the allowance for sampling noise
    return Thresholds(**out) if "ma" in out and "el" in out else None


def mia_auc(member_nll, nonmember_nll):
    """AUC of the loss attack that calls a text a member when its NLL is low: the probability that a
    random member has a lower NLL than a random non-member, ties counting one half (Mann–Whitney)."""
    a, b = np.asarray(member_nll, float)[:, None], np.asarray(nonmember_nll, float)[None, :]
    return float(np.mean((a < b) + 0.5 * (a == b)))


def privacy_leakage(auc, auc_oracle):
    """MUSE's PrivLeak: (AUC − AUC_oracle) / AUC_oracle. 0: as private as retraining without the forget
    set; > 0: the forget set is still recognisable; < 0: it stands out as *less* likely (over-unlearned).
    None where the oracle's AUC is 0 (a tiny holdout can rank every forget text as unseen): undefined."""
    return None if auc_oracle == 0 else (auc - auc_oracle) / auc_oracle


@torch.no_grad()
def greedy_answers(model, prompts, eot, max_new=24, device="cpu"):
    """The greedy answer (token list, up to and including <|endoftext|>) to each token prompt. Prompts
    of equal length are generated together, so no padding is needed."""
    out = [None] * len(prompts)
    by_length = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    for n, idx in by_length.items():
        x = torch.tensor([prompts[i] for i in idx], device=device)
        gen = model.generate(x, min(max_new, model.config.block_size - n), temperature=0, stop=eot)[:, n:].tolist()
        for i, g in zip(idx, gen):
            out[i] = g[:g.index(eot) + 1] if eot in g else g
    return out


# ----------------------------------------------------------------------------- what an answer says
ANSWER_KINDS = ("right", "wrong_well_formed", "wrong_malformed", "no_value")


def says(text, value):
    """Whether `value` occurs in `text` as a whole word (or words): "red" is not in "Redkite"."""
    return re.search(r"(?<!\w)" + re.escape(value) + r"(?!\w)", text) is not None


def answer_kind(text, ended, fact):
    """What a greedy answer says about a question on `fact` (a corpus.QA: its value, every value of
    its kind, every phrasing an answer of the kind may take). text: the answer without
    <|endoftext|>; ended: whether the model did end it.
      right              it states the true value, in any wording;
      wrong_well_formed  exactly one answer of the asked kind: one of the phrasings with another
                         value of the kind, then the end of text (what unlearning should produce);
      wrong_malformed    a value of the kind, in anything else;
      no_value           no value of the asked kind at all."""
    if says(text, fact.value):
        return "right"
    if not any(says(text, v) for v in fact.values):
        return "no_value"
    return "wrong_well_formed" if well_formed(text, ended, fact) else "wrong_malformed"


def well_formed(text, ended, fact):
    """One of the kind's phrasings with one of its values (the true one or another), then the end."""
    return ended and any(text.strip() == form.format(v=v) for form in fact.forms for v in fact.values)


def answer_report(texts, ended, facts):
    """Shares of the four kinds of answer (ANSWER_KINDS), and of well-formed answers (right or wrong)."""
    kinds = [answer_kind(t, e, f) for t, e, f in zip(texts, ended, facts)]
    report = {f"answers_{k}": kinds.count(k) / len(kinds) for k in ANSWER_KINDS}
    report["answers_well_formed"] = float(np.mean([well_formed(t, e, f) for t, e, f in zip(texts, ended, facts)]))
    return report, [k == "right" for k in kinds]


def fluency(judge, prompts, answers, device="cpu"):
    """(mean, standard deviation) over answers of their mean token NLL under `judge` (the oracle: it
    knows the language and the templates, not the forget people). Degenerate text ("They were They
    were born in ...") costs many nats per token; a fluent answer with a wrong value costs about what
    the true one does."""
    examples = [data.answer_example(p, a) for p, a in zip(prompts, answers) if a]
    nll = [s.nll for s in score_examples(judge, examples, 128, device)]
    return float(np.mean(nll)), float(np.std(nll))


def model_utility(qa_results):
    """Harmonic mean of answer probability, accuracy and the truth-ratio summary max(0, 1 − R) over
    the retain-side QA results given (e.g. retain and general); None if none has questions."""
    vals = [v for r in qa_results if "qa_acc" in r for v in
            (r["qa_prob"], r["qa_acc"]) + (() if r["truth_ratio"] is None else (r["truth_ratio"],))]
    if not vals:
        return None
    return 0.0 if min(vals) <= 0 else len(vals) / sum(1 / v for v in vals)
