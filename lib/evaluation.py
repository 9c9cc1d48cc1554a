"""What an unlearning run measures, and when it stops (METHOD §5).

- evaluate: every scored split's metrics (split_scores), forget quality and model utility; on the
  forget split also EL_n where the stopping rule can use it, the fluency of the model's own answers
  (judged by the oracle) and the privacy leakage of a membership-inference attack. The forget split
  alone is what the rule needs, and a fifth of the cost: a run scores the rest (`complete`) at the
  start, every few evaluations, where the rule is first met and at the end.
- split_scores: metrics.split_report, then what the greedy answers say. On the built-in world each
  answer is classified (the true value, a well-formed wrong answer, a malformed one, or no value:
  metrics.answer_kind) and qa_acc is the share that states the fact, in any wording; on the user's
  own questions, which name no value, qa_acc is the trained answer word for word. qa_acc_verbatim is
  always the word-for-word figure.
- rule_thresholds / rule_met: the stopping rule (METHOD §5.3). The thresholds come from the
  starting model on unseen people (the holdout), with a margin for sampling noise.
- measure_start: the starting point of a run, which is the same for every run of a world (cached).
- Evaluation and Start: what these return, typed; to_json / from_json give metrics.json's layout.
"""
from dataclasses import dataclass, field, fields

import numpy as np

from lib import metrics


def el_key(n):
    """The key of EL_n in a split's report: "el4" for n = 4."""
    return f"el{n}"


@dataclass
class Evaluation:
    """One evaluation: where the run was and what every scored split scored there."""
    epoch: float
    step: int
    loss: float                 # the last step's loss (None at the start)
    splits: dict                # split name -> its report (split_scores); "forget" first
    forget_quality: float       # KS p-value against the oracle's truth ratios (None without an oracle)
    model_utility: float = None
    complete: bool = False      # whether every split was scored, or the forget split alone

    @property
    def forget(self):
        return self.splits["forget"]

    def split(self, name):
        """A split's report, or {} where it was not scored at this evaluation."""
        return self.splits.get(name, {})

    def to_json(self):
        """metrics.json's layout: epoch, step, loss (not at the start, step 0, where no step has been
        taken), then each split by name, forget quality after the forget split, and model utility
        after the rest once every split is scored."""
        out = dict(epoch=self.epoch, step=self.step) | (dict(loss=self.loss) if self.step else {}) | \
            dict(forget=self.forget, forget_quality=self.forget_quality)
        if self.complete:
            out |= {k: v for k, v in self.splits.items() if k != "forget"} | dict(model_utility=self.model_utility)
        return out

    @classmethod
    def from_json(cls, d):
        splits = {k: v for k, v in d.items() if isinstance(v, dict)}
        return cls(d["epoch"], d["step"], d.get("loss"), splits, d["forget_quality"], d.get("model_utility"),
                   complete="model_utility" in d)


@dataclass
class Start:
    """What is measured once on the starting model besides its scores (measure_start)."""
    thresholds: metrics.Thresholds  # the stopping rule's, None without holdout texts long enough for EL_n
    holdout: dict                   # the holdout people's scores: what a model that never saw them knows
    before: list = field(default_factory=list)  # the starting model's answers to the task's prompts

    def to_json(self):
        return dict(thresholds=self.thresholds and self.thresholds.to_json(), holdout=self.holdout, before=self.before)

    @classmethod
    def from_json(cls, d):
        return cls(d["thresholds"] and metrics.Thresholds(**d["thresholds"]), d["holdout"], d["before"])


@dataclass
class RunResults:
    """What a run reports (unlearn.run). metrics.json holds all of it in this order but the times,
    which go to timing.json."""
    config: dict
    outcome: str                    # "finished", or why the run stopped early
    thresholds: metrics.Thresholds  # the stopping rule's (None: no rule for this data)
    stopped_at_epoch: float         # where the rule was first met, or None
    steps: int
    rule_met: Evaluation            # the evaluation where the rule was first met, or None: runs are compared
                                    # there, at equal forgetting
    trainable_params: int
    oracle_forget: dict             # the oracle's scores on the forget split (None without an oracle)
    holdout_start: dict             # the starting model's scores on the holdout people
    start: dict                     # forget quality and model utility at the start ...
    end: dict                       # ... and at the end
    generations: list               # [{whose, prompt, before, after}]: the task's prompts answered
    history: list                   # [Evaluation], the start first
    seconds: float                  # wall time of the whole run
    eval_seconds: list              # wall time at each evaluation
    step_seconds: float             # time in training steps alone

    TIMING = ("seconds", "eval_seconds", "step_seconds")

    def metrics_json(self):
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.TIMING}
        return out | dict(thresholds=self.thresholds and self.thresholds.to_json(),
                          rule_met=self.rule_met and self.rule_met.to_json(),
                          history=[h.to_json() for h in self.history])

    def timing_json(self):
        return {k: getattr(self, k) for k in self.TIMING}


def answers(model, enc, split, device):
    """The greedy answers to a split's questions: (tokens, up to and with the end token; their text,
    without it; whether each ended)."""
    tokens = metrics.greedy_answers(model, [p for p, _ in split.qa], enc.eot_token, device=device)
    ended = [bool(t) and t[-1] == enc.eot_token for t in tokens]
    return tokens, [decode(enc, t[:-1] if e else t) for t, e in zip(tokens, ended)], ended


def split_scores(model, enc, split, device, forget_like, el_n=None):
    """(report, per-question truth ratios, greedy answers as tokens or None) of one data.Encoded split."""
    report, ratios = metrics.split_report(model, split, el_n, device, forget_like=forget_like)
    if not split.facts:
        if split.qa:
            report["qa_acc"] = report["qa_acc_verbatim"]
        return report, ratios, None
    tokens, texts, ended = answers(model, enc, split, device)
    kinds, right = metrics.answer_report(texts, ended, split.facts)
    report.update(qa_acc=float(np.mean(right)), **kinds)
    return report, ratios, tokens


def evaluate(model, task, cfg, epoch=0, step=0, loss=None, thresholds=None, final=False, everything=True):
    """-> Evaluation: every scored split's report, with forget quality and model utility
    (everything=False: the forget split and forget quality only, what the stopping rule needs;
    `complete` adds the rest). EL_n (the costly one) is computed on the forget split at the start
    (no thresholds), at the end (final) and whenever forget MA and QA accuracy are already below
    their thresholds: before that the rule cannot be met."""
    forget, thr = task.scored["forget"], thresholds
    f, ratios, said = split_scores(model, task.enc, forget, cfg.device, forget_like=True)
    if "ma" in f and (thr is None or final or (f["ma"] < thr.ma and f.get("qa_acc", 0) < (2 if thr.qa is None else thr.qa))):
        el = metrics.mean_extraction_likelihood(model, forget.texts, cfg.el_n, cfg.device)
        if el is not None:
            f[el_key(cfg.el_n)] = el
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
    e = Evaluation(epoch, step, loss, dict(forget=f),
                   metrics.ks_2samp_pvalue(ratios, task.oracle_ratios) if ok else None)
    return complete(e, model, task, cfg) if everything else e


def complete(e, model, task, cfg):
    """Adds the other scored splits (retain, general, ...) and model utility to a forget-only Evaluation."""
    for name, split in task.scored.items():
        if name != "forget":
            e.splits[name] = split_scores(model, task.enc, split, cfg.device, forget_like=False)[0]
    e.model_utility = metrics.model_utility([e.splits[s] for s in task.utility_splits]) if task.utility_splits else None
    e.complete = True
    return e


def rule_thresholds(model, task, cfg):
    """Jang et al.'s rule: stop once the forget set's mean MA and EL_n are both below what the starting
    model scores on unseen texts of the same kind, allowing for sampling noise (metrics.stopping_thresholds);
    with questions, forget QA accuracy too: the biographies can look unseen while the answers are
    still known. QA accuracy here is what split_scores calls it: the fact stated where the questions
    say what fact they ask for, else the trained answer word for word. None without holdout texts
    long enough for EL_n, or without forget texts."""
    texts = task.holdout.texts if task.holdout else []
    el = [v for v in metrics.extraction_likelihood(model, texts, cfg.el_n, cfg.device) if v is not None]
    if len(el) < 2 or not task.scored["forget"].texts:
        return None
    ma = metrics.memorization_accuracy(model, texts, device=cfg.device)
    hits = None
    if task.holdout.qa:
        hits = metrics.exact_matches(model, task.holdout.qa, cfg.device) if not task.holdout.facts else \
            [float(r) for r in metrics.answer_report(*answers(model, task.enc, task.holdout, cfg.device)[1:],
                                                      task.holdout.facts)[1]]
    return metrics.stopping_thresholds(ma, el, len(task.scored["forget"].texts), hits, len(task.scored["forget"].qa))


def rule_met(forget, thresholds, el_n):
    """Forget MA and EL_n below their thresholds, and forget QA accuracy too where there are questions.
    An EL_n threshold of 0 (nothing extracted from any holdout text) is met by an EL_n of 0."""
    t, el = thresholds, el_key(el_n)
    return t is not None and "ma" in forget and el in forget and forget["ma"] < t.ma \
        and (forget[el] < t.el or forget[el] == t.el == 0) and (t.qa is None or forget["qa_acc"] < t.qa)


def measure_start(model, task, cfg):
    """(Evaluation, Start): the starting point's scores, the stopping rule's thresholds (from unseen
    data), the holdout people's scores (what a model that never saw them knows) and the answers "before"."""
    return evaluate(model, task, cfg), Start(
        thresholds=rule_thresholds(model, task, cfg),
        holdout=split_scores(model, task.enc, task.holdout, cfg.device, forget_like=True)[0] if task.holdout else None,
        before=[greedy_text(model, task.enc, p, cfg.device) for _, p in task.prompts])


def greedy_text(model, enc, prompt, device):
    """The model's greedy answer to a token prompt as text (metrics.greedy_answers, without the end
    token), with decode's "<?>" for ids past the tokenizer."""
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
