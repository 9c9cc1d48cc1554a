"""What an unlearning run measures, and when it stops (METHOD §5).

- evaluate: every scored split's metrics (split_scores), forget quality and model utility; on the
  forget split also EL_n where the stopping rule can use it, the fluency of the model's own answers
  (judged by the oracle) and the privacy leakage of a membership-inference attack. The forget split
  alone is what the rule needs, and a fifth of the cost: a run scores the rest (`complete`) at the
  start, every few evaluations, where the rule is first met and at the end.
- split_scores: metrics.split_report, and on the built-in world what the greedy answers say: the
  true value, a well-formed wrong answer, a malformed one, or no value (metrics.answer_kind). QA
  accuracy is then the share that states the fact, in any wording; qa_acc_verbatim, the trained
  wording's exact match.
- rule_thresholds / rule_met: the stopping rule (METHOD §5.3). The thresholds come from the
  starting model on unseen people (the holdout), with a margin for sampling noise.
- measure_start: the starting point of a run, which is the same for every run of a world (cached).
"""
import numpy as np

import metrics


def answers(model, enc, split, device):
    """The greedy answers to a split's questions: (tokens, up to and with <|endoftext|>; their text,
    without it; whether each ended)."""
    tokens = metrics.greedy_answers(model, [p for p, _ in split.qa], enc.eot_token, device=device)
    ended = [bool(t) and t[-1] == enc.eot_token for t in tokens]
    return tokens, [decode(enc, t[:-1] if e else t) for t, e in zip(tokens, ended)], ended


def split_scores(model, enc, split, device, forget_like, el_n=None):
    """(report, per-question truth ratios, greedy answers as tokens or None) of one data.Encoded split."""
    report, ratios = metrics.split_report(model, split, el_n, device, forget_like=forget_like)
    if not split.facts:
        return report, ratios, None
    tokens, texts, ended = answers(model, enc, split, device)
    kinds, right = metrics.answer_report(texts, ended, split.facts)
    report["qa_acc_verbatim"] = report.pop("qa_acc")
    report.update(qa_acc=float(np.mean(right)), **kinds)
    return report, ratios, tokens


def evaluate(model, task, cfg, thresholds=None, final=False, everything=True):
    """Every scored split's report, with forget quality and model utility (everything=False: the
    forget split and forget quality only, what the stopping rule needs; `complete` adds the rest).
    EL_n (the costly one) is computed on the forget split at the start (no thresholds), at the end
    (final) and whenever forget MA and QA accuracy are already below their thresholds: before that
    the rule cannot be met."""
    forget, thr = task.scored["forget"], thresholds
    f, ratios, said = split_scores(model, task.enc, forget, cfg.device, forget_like=True)
    if "ma" in f and (thr is None or final or (f["ma"] < thr["ma"] and f.get("qa_acc", 0) < thr.get("qa", 2))):
        el = metrics.mean_extraction_likelihood(model, forget.texts, cfg.el_n, cfg.device)
        if el is not None:
            f[f"el{cfg.el_n}"] = el
    if task.oracle is not None and forget.qa:
        prompts = [p for p, _ in forget.qa]
        said = said or metrics.greedy_answers(model, prompts, task.enc.eot_token, device=cfg.device)
        f["fluency"], f["fluency_sd"] = metrics.fluency(task.oracle, prompts, said, cfg.device)
    if task.holdout and task.holdout.texts and forget.texts:
        f["mia_auc"] = metrics.mia_auc(metrics.text_nll(model, forget.texts, device=cfg.device),
                                       metrics.text_nll(model, task.holdout.texts, device=cfg.device))
        if task.oracle_forget and "mia_auc" in task.oracle_forget:
            f["privacy_leakage"] = metrics.privacy_leakage(f["mia_auc"], task.oracle_forget["mia_auc"])
    ok = ratios is not None and task.oracle_ratios is not None
    scores = dict(forget=f, forget_quality=metrics.ks_2samp_pvalue(ratios, task.oracle_ratios) if ok else None)
    return complete(scores, model, task, cfg) if everything else scores


def complete(scores, model, task, cfg):
    """Adds the other scored splits (retain, general, ...) and model utility to a forget-only evaluation."""
    for name, split in task.scored.items():
        if name != "forget":
            scores[name] = split_scores(model, task.enc, split, cfg.device, forget_like=False)[0]
    scores["model_utility"] = metrics.model_utility([scores[s] for s in task.utility_splits]) if task.utility_splits else None
    return scores


def rule_thresholds(model, task, cfg):
    """Jang et al.'s rule: stop once the forget set's mean MA and EL_n are both below what the starting
    model scores on unseen texts of the same kind, allowing for sampling noise (metrics.stopping_thresholds);
    with questions, forget QA accuracy too: the biographies can look unseen while the answers are
    still known. None without holdout texts long enough for EL_n, or without forget texts."""
    texts = task.holdout.texts if task.holdout else []
    el = [v for v in metrics.extraction_likelihood(model, texts, cfg.el_n, cfg.device) if v is not None]
    if len(el) < 2 or not task.scored["forget"].texts:
        return None
    ma = metrics.memorization_accuracy(model, texts, device=cfg.device)
    hits = None
    if task.holdout.qa:  # did the model state the fact: by what the answer says, else by exact match
        hits = metrics.exact_matches(model, task.holdout.qa, cfg.device) if not task.holdout.facts else \
            [float(r) for r in metrics.answer_report(*answers(model, task.enc, task.holdout, cfg.device)[1:],
                                                      task.holdout.facts)[1]]
    return metrics.stopping_thresholds(ma, el, len(task.scored["forget"].texts), hits, len(task.scored["forget"].qa))


def rule_met(forget, thresholds, el_key):
    """Forget MA and EL_n below their thresholds, and forget QA accuracy too where there are questions."""
    t = thresholds
    return bool(t) and "ma" in forget and el_key in forget and forget["ma"] < t["ma"] and forget[el_key] < t["el"] \
        and ("qa" not in t or forget["qa_acc"] < t["qa"])


def measure_start(model, task, cfg):
    """The starting point: its scores, the stopping rule's thresholds (from unseen data), the holdout
    people's scores (what a model that never saw them knows) and the answers "before"."""
    return evaluate(model, task, cfg), dict(
        thresholds=rule_thresholds(model, task, cfg),
        holdout=split_scores(model, task.enc, task.holdout, cfg.device, forget_like=True)[0] if task.holdout else None,
        before=[greedy_text(model, task.enc, p, cfg.device) for _, p in task.prompts])


def greedy_text(model, enc, prompt, device):
    """The model's greedy answer to a token prompt as text (metrics.greedy_answers, without the
    <|endoftext|>). The embedding is padded past the tokenizer's last id; an unlearned model may pick
    such an id (it was never trained): it is shown as "<?>"."""
    out = metrics.greedy_answers(model, [prompt], enc.eot_token, device=device)[0]
    return decode(enc, out[:-1] if out and out[-1] == enc.eot_token else out).strip()


def decode(enc, ids):
    """Token ids -> text; an id past the tokenizer's last one (the embedding is padded, and an
    unlearned model may pick one) shows as "<?>"."""
    text, run = [], []
    for t in list(ids) + [None]:  # decode each stretch of real ids at once (a character can span tokens)
        if t is not None and t < enc.n_vocab:
            run.append(t)
            continue
        text += [enc.decode(run)] + (["<?>"] if t is not None else [])
        run = []
    return "".join(text)
