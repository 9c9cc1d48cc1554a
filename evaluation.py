"""What an unlearning run measures, and when it stops (METHOD §5).

- evaluate: every scored split's metrics (metrics.split_report), forget quality and model utility;
  on the forget split also EL_n where the stopping rule can use it, the fluency of the model's
  own answers (judged by the oracle) and the privacy leakage of a membership-inference attack.
- rule_thresholds / rule_met: the stopping rule (METHOD §5.3). The thresholds come from the
  starting model on unseen people (the holdout), with a margin for sampling noise.
- measure_start: the starting point of a run, which is the same for every run of a world (cached).
"""
import metrics


def evaluate(model, task, cfg, thresholds=None, final=False):
    """Every scored split's report, with forget quality and model utility. EL_n (the costly one) is
    computed on the forget split at the start (no thresholds), at the end (final) and whenever forget
    MA and QA accuracy are already below their thresholds: before that the rule cannot be met."""
    reports, ratios = {}, None
    for name, split in task.scored.items():
        reports[name], r = metrics.split_report(model, split, None, cfg.device, forget_like=name == "forget")
        ratios = r if name == "forget" else ratios
    f, forget, thr = reports["forget"], task.scored["forget"], thresholds
    if "ma" in f and (thr is None or final or (f["ma"] < thr["ma"] and f.get("qa_acc", 0) < thr.get("qa", 2))):
        el = metrics.mean_extraction_likelihood(model, forget.texts, cfg.el_n, cfg.device)
        if el is not None:
            f[f"el{cfg.el_n}"] = el
    if task.oracle is not None and forget.qa:
        prompts = [p for p, _ in forget.qa]
        f["fluency"], f["fluency_sd"] = metrics.fluency(task.oracle, prompts, metrics.greedy_answers(
            model, prompts, task.enc.eot_token, device=cfg.device), cfg.device)
    if task.holdout and task.holdout.texts and forget.texts:
        f["mia_auc"] = metrics.mia_auc(metrics.text_nll(model, forget.texts, device=cfg.device),
                                       metrics.text_nll(model, task.holdout.texts, device=cfg.device))
        if task.oracle_forget and "mia_auc" in task.oracle_forget:
            f["privacy_leakage"] = metrics.privacy_leakage(f["mia_auc"], task.oracle_forget["mia_auc"])
    ok = ratios is not None and task.oracle_ratios is not None
    return dict(reports, forget_quality=metrics.ks_2samp_pvalue(ratios, task.oracle_ratios) if ok else None,
                model_utility=metrics.model_utility([reports[s] for s in task.utility_splits])
                if task.utility_splits else None)


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
    hits = metrics.exact_matches(model, task.holdout.qa, cfg.device) if task.holdout.qa else None
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
        holdout=metrics.split_report(model, task.holdout, None, cfg.device, forget_like=True)[0] if task.holdout else None,
        before=[greedy_text(model, task.enc, p, cfg.device) for p in task.prompts])


def greedy_text(model, enc, prompt, device):
    """The model's greedy answer to a token prompt as text (metrics.greedy_answers, without the
    <|endoftext|>). The embedding is padded past the tokenizer's last id; an unlearned model may pick
    such an id (it was never trained): it is shown as "<?>"."""
    out = metrics.greedy_answers(model, [prompt], enc.eot_token, device=device)[0]
    out = out[:-1] if out and out[-1] == enc.eot_token else out
    text, run = [], []
    for t in out + [None]:  # decode each stretch of real ids at once (a character can span tokens)
        if t is not None and t < enc.n_vocab:
            run.append(t)
            continue
        text += [enc.decode(run)] + (["<?>"] if t is not None else [])
        run = []
    return "".join(text).strip()
