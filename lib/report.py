"""What an unlearning run prints: the progress line of each evaluation, the before/after table beside
the oracle, the default's goals (checks) and overshoot, and the plot saved with the run (plot.png).
"""
import io

from lib import evaluation

# The splits unlearning must leave alone: the retain people, and on the built-in model the general facts and
# the pretraining people, on a real model the real-world questions (realworld.py).
KEPT = ("retain", "general", "pretraining", "real_world")


def plot(results):
    """Forget vs retain over the steps: QA accuracy, MA and EL_n with the stopping thresholds. -> PNG bytes"""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    h, n = results.history, results.config["el_n"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("qa_acc", "ma", f"el{n}"),
                              ("QA accuracy", "MA (biographies)", f"EL{n} (biographies)")):
        for split, style in (("forget", "r-o"), ("retain", "b-o"), ("general", "g-o"), ("real_world", "g-o")):
            points = [(e.step, e.split(split)[key]) for e in h if e.split(split).get(key) is not None]
            if points:  # EL_n is measured only where the rule needs it (evaluation.evaluate)
                ax.plot(*zip(*points), style, ms=3, label=split)
        t = results.thresholds
        thr = t and {"ma": t.ma, evaluation.el_key(n): t.el}.get(key)
        if thr is not None:
            ax.axhline(thr, color="k", lw=0.8, ls="--", label="stop below (from unseen people)")
        ax.set(title=title, xlabel="step", ylim=(-0.02, 1.02))
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:  # text-only data has no QA panel to label
            ax.legend(fontsize=8)
    c = results.config
    fig.suptitle(f"{c['loss']} + {c['adapter']} (rank {c['rank']}, lr {c['lr']})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})  # no version stamp: same bytes
    plt.close(fig)
    return buf.getvalue()


def progress(e, el_n, seconds, left=None):
    """The line an evaluation prints: where the run is (e, an evaluation.Evaluation), the loss and brief()."""
    return f"epoch {e.epoch:2g} step {e.step:3d}  loss {e.loss:7.3f}  {brief(e, el_n)}  {seconds:.0f}s" + \
        ("" if left is None else f" (~{left:.0f}s more to the cap, at this pace)")


def brief(e, el_n):
    """One evaluation in a few numbers: forget QA, well-formed answers, MA, EL_n; the kept splits' QA
    (retain; general and pretraining people, or real-world); fluency."""
    f, el = e.forget, evaluation.el_key(el_n)
    parts = [f"forget QA {f['qa_acc']:.0%}"] if "qa_acc" in f else []
    parts += [f"({f['answers_well_formed']:.0%} well-formed)"] if "answers_well_formed" in f else []
    parts += [f"MA {f['ma']:.3f}"] if "ma" in f else []
    parts += [f"EL{el_n} {f[el]:.3f}" if el in f else f"EL{el_n} –"] if "ma" in f else []
    for split in KEPT:
        r, name = e.split(split), split.replace("_", "-")
        parts += [f"{name} QA {r['qa_acc']:.0%}" if "qa_acc" in r else f"{name} MA {r['ma']:.3f}"] if r else []
    parts += [f"fluency {f['fluency']:.2f}"] if "fluency" in f else []
    return "  ".join(parts)


WELL_FORMED = 0.9  # the share of forget answers that must still be well-formed (one answer of the asked kind)


def checks(results, at=None):
    """The default run's goals, each (what, met, the numbers), read at evaluation `at` (default: the
    last) of an evaluation.RunResults: the stopping rule met; forget QA (the fact stated, in any
    wording) within 10 points of the holdout people's, i.e. of a model that never saw them; the kept
    splits' QA (KEPT) at >= 95% of their start; the forget answers as fluent as the starting model's
    (mean NLL under the oracle within one standard deviation of the start's) and >= 90% of them
    well-formed."""
    first, hold = results.history[0], results.holdout_start or {}
    last = at or results.history[-1]
    out = [("stopping rule met", results.rule_met is not None,
            f"at step {results.rule_met.step}" if results.rule_met else "not met")]
    f0, f1 = first.forget, last.forget
    if "qa_acc" in f1 and "qa_acc" in hold:
        out.append(("forget QA near the holdout level", f1["qa_acc"] <= hold["qa_acc"] + 0.10,
                    f"{f1['qa_acc']:.2f} vs holdout {hold['qa_acc']:.2f} + 0.10"))
    for split in KEPT:
        if "qa_acc" in last.split(split):
            a, b = first.split(split)["qa_acc"], last.split(split)["qa_acc"]
            out.append((f"{split.replace('_', '-')} QA kept", b >= 0.95 * a, f"{b:.2f} vs 95% of {a:.2f}"))
    if "fluency" in f1:
        bound, wf = f0["fluency"] + f0["fluency_sd"], f1.get("answers_well_formed")
        ok = f1["fluency"] <= bound and (wf is None or wf >= WELL_FORMED)
        out.append(("fluent forget answers", ok, f"NLL {f1['fluency']:.2f} vs {bound:.2f}" +
                    ("" if wf is None else f", {wf:.0%} well-formed vs {WELL_FORMED:.0%}")))
    return out


def overshoot(forget, oracle_forget, thresholds, el_n):
    """The forget metrics (a forget split's report) that are below the oracle's by more than the
    stopping rule's noise margin: the forget people now look *less* known than people never seen,
    which sets them apart as much as remembering them does (MUSE calls it over-unlearning).
    -> [(metric, value, the oracle's, margin)]"""
    if thresholds is None or not oracle_forget:
        return []
    el = evaluation.el_key(el_n)
    return [(name, forget[k], oracle_forget[k], margin) for name, k, margin in
            (("MA", "ma", thresholds.ma_margin), (el.upper(), el, thresholds.el_margin))
            if k in forget and k in oracle_forget and forget[k] < oracle_forget[k] - margin]


def summary(results):
    """The before/after table (and the oracle, exact unlearning, beside it), the stopping rule, the
    goals, and the generations, as text."""
    first, last, n = results.history[0], results.history[-1], results.config["el_n"]
    oracle = results.oracle_forget or {}
    names = {"qa_acc": "QA accuracy", "qa_acc_verbatim": "QA, verbatim", "answers_well_formed": "well-formed",
             "ma": "MA", evaluation.el_key(n): f"EL{n}", "truth_ratio": "truth ratio", "fluency": "fluency (NLL)",
             "privacy_leakage": "privacy leakage"}
    lines = [f"{'':30s}{'before':>10s}{'after':>10s}{'oracle':>10s}"]
    for split in ("forget", *KEPT):
        for key, label in names.items():
            if first.split(split).get(key) is not None:
                o = 0.0 if key == "privacy_leakage" else oracle.get(key) if split == "forget" else None
                after = last.split(split).get(key)
                lines.append(f"{split.replace('_', '-') + ' ' + label:30s}{first.split(split)[key]:10.3f}" +
                             (f"{after:10.3f}" if after is not None else f"{'–':>10s}") + ("" if o is None else f"{o:10.3f}"))
    for k in ("forget_quality", "model_utility"):
        if results.end[k] is not None:
            lines.append(f"{k.replace('_', ' '):30s}{results.start[k]:10.3g}{results.end[k]:10.3g}")
    if (results.holdout_start or {}).get("qa_acc") is not None:
        lines.append(f"{'holdout QA (never seen)':30s}{results.holdout_start['qa_acc']:10.3f}")
    met, thr = results.rule_met, results.thresholds
    rule = f"met at step {met.step} (epoch {met.epoch})" if met else "not met"
    if thr:
        rule += f"; thresholds MA {thr.ma:.3f}, EL{n} {thr.el:.3f}" + (f", QA {thr.qa:.3f}" if thr.qa is not None else "")
    lines.append(f"stopping rule: {rule}; {results.outcome}; {results.steps} steps, {results.seconds:.0f}s")
    if over := overshoot(last.forget, results.oracle_forget, thr, n):
        lines.append("overshot: forget " + ", ".join(f"{m} {v:.3f} vs the oracle's {o:.3f}" for m, v, o, _ in over) +
                     " (more below it than the rule's margin for noise): the forget people now stand out as less "
                     "known than people never seen")
    if results.config.get("forget_file") is None:
        c = checks(results)
        lines.append(f"goals: {sum(ok for _, ok, _ in c)} of {len(c)} met: " +
                     "; ".join(f"{what} {'yes' if ok else 'NO'} ({detail})" for what, ok, detail in c))
    for g in results.generations:
        lines.append(f"{g['whose']}: {g['prompt']!r}\n   before: {g['before']}\n   after:  {g['after']}")
    return "\n".join(lines)
