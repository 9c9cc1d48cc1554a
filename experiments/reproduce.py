"""The fair protocol (METHOD §7): settings are chosen on one world and reported on five others.

    python -m experiments.reproduce              # sweep on world 0, selection, grid on worlds 1-5 -> experiments/results/
    python -m experiments.reproduce --quick      # a smaller version: worlds 1-2, one learning rate per adapter
    python -m experiments.reproduce --default    # only the default run (IHL + FILA at unlearn.py's lr) on worlds 1-5

0. The world itself and the default's settings were chosen on world 0 by experiments/world_search.py.
1. Sweep, on the development world (corpus seed 0): every loss x adapter at every learning rate
   of LRS[adapter] and, for the losses with a retain term (GD, NPO, IHL), every λ of LAMBDAS.
2. Selection, by a rule fixed before the final runs (`best_setting`): among a setting's runs that met
   the stopping rule, the highest model utility at the step where each first met it; if none met
   it, the lowest forget QA at the end (then the highest utility).
3. Grid: the chosen settings on worlds 1-5, each world with its own base model and oracle (trained
   on first use into out/world<seed>/). Every run is compared at equal forgetting: its metrics at
   the first evaluation that met the stopping rule; runs that never met it are reported at their
   end, and counted as such.
Also per world: does the oracle meet the stopping rule (it must), and the default run's goals; and
the paper's comparisons (`COMPARISONS`), world by world: "at equal forgetting" only where both
runs met the rule, else "not comparable", with both end states.
Writes experiments/results/sweep.json, grid.json, protocol.md and grid.png; every run's row in experiments/results/full/runs/,
which later invocations read instead of rerunning (delete that folder after changing the code).
Every run evaluates every EVAL_EVERY steps, the default run here included.
"""
import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np

import train
import unlearn
from lib import evaluation, metrics, report, tasks, userio
from experiments import bench

LOSSES, ADAPTERS = ("ga", "gd", "npo", "ihl"), ("full", "lora", "pissa", "fila")
LRS = {"full": (1e-4, 3e-4), "lora": (1e-3, 2e-3), "pissa": (1e-3, 2e-3), "fila": (1e-3, 2e-3)}
LAMBDAS = (1.0, 2.0)  # the retain term's weight, for the losses that have one
COMPARISONS = [  # (claim, a, b): the paper says b does better than a
    ("1-2: IHL vs GA", ("ga", "lora"), ("ihl", "lora")), ("2: IHL vs GD", ("gd", "fila"), ("ihl", "fila")),
    ("3: FILA vs LoRA (IHL)", ("ihl", "lora"), ("ihl", "fila")), ("FILA vs PiSSA (IHL)", ("ihl", "pissa"), ("ihl", "fila")),
    ("4: IHL + FILA vs GD + FILA", ("gd", "fila"), ("ihl", "fila"))]
DEV_WORLD, REPORT_WORLDS = 0, (1, 2, 3, 4, 5)
EVAL_EVERY = 13  # steps between evaluations: once an epoch (13 steps), as the default run
EPOCHS = 20  # every method's cap in the sweep and the grid (the default run keeps its own, unlearn.py's)
COLUMNS = [  # (key, header, format); every value is taken at the rule-met step, or at the end
    ("steps", "steps to the rule", "{:.0f}"), ("forget_qa", "forget QA", "{:.2f}"),
    ("well_formed", "forget answers well-formed", "{:.2f}"), ("retain_qa", "retain QA", "{:.2f}"),
    ("general_qa", "general QA", "{:.2f}"), ("pretraining_qa", "pretraining QA", "{:.2f}"),
    ("real_world_qa", "real-world QA", "{:.2f}"),  # on a real model, in the place of the two before
    ("model_utility", "model utility", "{:.2f}"),
    ("fluency", "fluency (NLL)", "{:.2f}"), ("privacy_leakage", "privacy leakage", "{:+.2f}"),
    ("forget_quality", "forget quality (log10 p)", "{:.1f}"), ("forget_tr", "forget truth ratio", "{:.2f}")]


def run_key(corpus_seed, settings, tag=""):
    """The name of a run's row in <work>/runs/: its world and settings."""
    return f"{tag}w{corpus_seed}-" + "-".join(f"{k}{v}" for k, v in sorted(settings.items()))


def one_run(work, corpus_seed, base_dir, epochs=EPOCHS, tag="", eval_every=EVAL_EVERY, **settings):
    """One unlearning run -> a row: the settings, whether and when the rule was met, and the metrics
    at that point (or at the end), with the start's for reference. Rows are kept in <work>/runs/, so
    an interrupted protocol continues where it stopped, and --part i/n processes share the work."""
    key = run_key(corpus_seed, settings, tag)
    path = os.path.join(work, "runs", key + ".json")
    if os.path.exists(path):
        return json.load(open(path))
    row = json.loads(json.dumps(measure(work, corpus_seed, base_dir, epochs, key, eval_every, **settings)))
    userio.atomic_write(path, json.dumps(row).encode())
    return row  # as a later invocation reads it: lists, not tuples


def measure(work, corpus_seed, base_dir, epochs, key, eval_every, **settings):
    cfg = unlearn.UnlearnConfig(corpus_seed=corpus_seed, base_dir=base_dir, eval_every=eval_every, epochs=epochs,
                                out=os.path.join(base_dir, "protocol-runs", key), **settings)
    t0 = time.time()
    _, r = unlearn.run(cfg, log=lambda line: None)
    at, first = r.rule_met or r.history[-1], r.history[0]
    f = at.forget
    kept = [s for s in report.KEPT if s in first.splits]  # retain, general, pretraining; or retain, real_world
    return dict(settings, world=corpus_seed, met=r.rule_met is not None, steps=at.step,
                forget_qa=f["qa_acc"], well_formed=f.get("answers_well_formed"),
                **{f"{s}_qa": at.split(s)["qa_acc"] for s in kept},
                model_utility=at.model_utility, answer_after=r.generations[0]["after"], fluency=f.get("fluency"),
                privacy_leakage=f.get("privacy_leakage"),
                forget_quality=np.log10(max(at.forget_quality, 1e-300)), forget_tr=f["truth_ratio"],
                start={f"{s}_qa": first.split(s)["qa_acc"] for s in kept} | dict(fluency=first.forget["fluency"]),
                holdout_qa=r.holdout_start["qa_acc"], thresholds=r.thresholds and r.thresholds.to_json(),
                oracle=r.oracle_forget, el_n=cfg.el_n,
                checks=[list(c) for c in report.checks(r)], seconds=time.time() - t0,
                curve=[(h.step, h.forget["qa_acc"], h.split("retain").get("qa_acc")) for h in r.history])


def best_setting(runs):
    """The selection rule, fixed in advance: the best model utility among runs that met the stopping
    rule (at the step each met it); if none did, the lowest forget QA at the end, then the best utility."""
    met = [r for r in runs if r["met"]]
    if met:
        return max(met, key=lambda r: r["model_utility"])
    return min(runs, key=lambda r: (r["forget_qa"], -r["model_utility"]))


def mean_std(vals, fmt):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    return fmt.format(np.mean(vals)) + (" ± " + fmt.format(np.std(vals)) if len(vals) > 1 else "")


def settings(loss, adapter, lrs=LRS):
    """The sweep's settings of one method: every learning rate, and every λ if it has a retain term."""
    return [dict(loss=loss, adapter=adapter, lr=lr, retain_weight=lam)
            for lr in lrs[adapter] for lam in ((0.0,) if loss == "ga" else LAMBDAS)]


def grid_table(rows):
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]  # the kept splits the model has
    lines = ["| loss | adapter | lr | λ | met the rule | " + " | ".join(h for _, h, _ in columns) + " |",
             "|" + "---|" * (len(columns) + 5)]
    for loss in LOSSES:
        for adapter in ADAPTERS:
            for lr, lam in sorted({(r["lr"], r["retain_weight"]) for r in rows if r["loss"] == loss and r["adapter"] == adapter}):
                runs = [r for r in rows if (r["loss"], r["adapter"], r["lr"], r["retain_weight"]) == (loss, adapter, lr, lam)]
                cells = [mean_std([r[k] for r in runs if r["met"]] if k == "steps" else [r[k] for r in runs], fmt)
                         for k, _, fmt in columns]
                lines.append(f"| {loss.upper()} | {adapter} | {lr:g} | {lam:g} | {sum(r['met'] for r in runs)}/{len(runs)} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_table(rows, comparisons=COMPARISONS):
    """The paper's comparisons, world by world. Where both runs met the stopping rule they are read at
    equal forgetting: steps to the rule, retain QA and fluency there, what the second does better and
    then what the first does. Otherwise not comparable: the two end states are given instead."""
    lines = ["| claim | world | verdict | first (steps, forget QA, retain QA, fluency) | second (the same) |",
             "|---|---|---|---|---|"]
    name = lambda m: f"{m[0].upper()} + {m[1]}"
    gains = lambda x, y: [k for k, d in (("fewer steps", x["steps"] - y["steps"]), ("more retain QA", y["retain_qa"] - x["retain_qa"]),
                                         ("more fluent", x["fluency"] - y["fluency"])) if d > 0]  # where y beats x
    state = lambda r: f"{'met at ' + str(r['steps']) if r['met'] else 'not met, end'}: {r['forget_qa']:.2f}, " \
                      f"{r['retain_qa']:.2f}, {r['fluency']:.2f}"
    for claim, a, b in comparisons:
        for w in sorted({r["world"] for r in rows}):
            ra, rb = (next(r for r in rows if (r["loss"], r["adapter"]) == m and r["world"] == w) for m in (a, b))
            if ra["met"] and rb["met"]:
                better, worse = gains(ra, rb), gains(rb, ra)
                verdict = f"equal forgetting: {name(b)} " + (", ".join(better) or "no better") + \
                          (f"; {name(a)} " + ", ".join(worse) if worse else "")
            else:
                verdict = "not comparable (" + " and ".join(name(m) for m, r in ((a, ra), (b, rb))
                                                            if not r["met"]) + " never met the rule)"
            lines.append(f"| {claim} | {w} | {verdict} | {state(ra)} | {state(rb)} |")
    return "\n".join(lines)


def oracle_table(rows):
    """Per world: the thresholds and what the oracle scores on the forget split (it must be below)."""
    lines = ["| world | MA: threshold / oracle | EL4: threshold / oracle | QA: threshold / oracle | oracle meets the rule |",
             "|---|---|---|---|---|"]
    for w in sorted({r["world"] for r in rows}):
        r = next(r for r in rows if r["world"] == w)
        t, o, n = metrics.Thresholds(**r["thresholds"]), r["oracle"], r.get("el_n", unlearn.UnlearnConfig.el_n)  # older rows: the default's
        lines.append(f"| {w} | {t.ma:.3f} / {o['ma']:.3f} | {t.el:.3f} / {o[evaluation.el_key(n)]:.3f} | "
                     f"{t.qa:.3f} / {o['qa_acc']:.3f} | {'yes' if evaluation.rule_met(o, t, n) else 'NO'} |")
    return "\n".join(lines)


def checks_table(rows):
    """The default run's goals (report.checks) on every world."""
    names = [c[0] for c in rows[0]["checks"]]
    lines = ["| world | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in sorted(rows, key=lambda r: r["world"]):
        lines.append(f"| {r['world']} | " + " | ".join(f"{'yes' if ok else 'NO'} ({d})" for _, ok, d in r["checks"]) + " |")
    met = sum(all(ok for _, ok, _ in r["checks"]) for r in rows)
    return "\n".join(lines) + f"\n\nAll goals met on {met} of {len(rows)} worlds."


def figure(rows, path):
    """Forgetting vs retention for every run of the grid (a Pareto picture), and QA curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    colors = dict(ga="tab:red", gd="tab:orange", npo="tab:purple", ihl="tab:blue")
    marks = dict(full="s", lora="o", pissa="^", fila="*")
    for loss in LOSSES:
        for adapter in ADAPTERS:
            runs = [r for r in rows if r["loss"] == loss and r["adapter"] == adapter]
            if runs:
                axes[0].scatter([1 - r["forget_qa"] for r in runs], [r["retain_qa"] for r in runs], s=50,
                                marker=marks[adapter], color=colors[loss], label=f"{loss.upper()} + {adapter}",
                                facecolors=[colors[loss] if r["met"] else "none" for r in runs])
    axes[0].set(xlabel="forgotten: 1 − forget QA", ylabel="retain QA", title="every run at the rule (filled) or its end (hollow)")
    axes[0].legend(fontsize=7, ncol=2)
    for r in rows:
        if r["loss"] == "ihl" and r["adapter"] in ("lora", "fila"):
            s, f, ret = zip(*r["curve"])
            c = "tab:green" if r["adapter"] == "fila" else "tab:blue"
            axes[1].plot(s, f, "-", color=c, alpha=0.5)
            axes[1].plot(*zip(*[(x, v) for x, v in zip(s, ret) if v is not None]), "--", color=c, alpha=0.5)
    axes[1].set(title="IHL + FILA (green) vs IHL + LoRA (blue): forget (—) and retain (--) QA", xlabel="step",
                ylim=(-0.03, 1.03))
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="worlds 1-2 and one learning rate per adapter")
    p.add_argument("--default", action="store_true", help="only the default run, on the report worlds")
    p.add_argument("--base_dir", default="out", help="where the worlds' base models and oracles live")
    p.add_argument("--out", default=os.path.join("experiments", "results"), help="folder for the tables, the runs and the figure")
    p.add_argument("--worlds", type=int, nargs="+", help=f"report worlds (default {' '.join(map(str, REPORT_WORLDS))})")
    p.add_argument("--part", default="0/1", help="i/n: do every n-th run, from the i-th (run n processes "
                   "with 0/n .. n-1/n side by side, then once more without --part to write the tables)")
    a = p.parse_args()
    part, parts = map(int, a.part.split("/"))
    if not 0 <= part < parts:
        p.error(f"--part {a.part}: expected i/n with 0 <= i < n")
    worlds = a.worlds or (REPORT_WORLDS[:2] if a.quick else REPORT_WORLDS)
    lrs = {k: v[-1:] for k, v in LRS.items()} if a.quick else LRS
    t0, work = time.time(), os.path.join(a.out, "quick" if a.quick else "full")
    say = lambda r: print(f"{time.time() - t0:5.0f}s  world {r['world']} {r['loss']:3s} + {r['adapter']:5s} lr {r['lr']:g} "
                          f"λ {r['retain_weight']:g}: "
                          f"{'met at step ' + str(r['steps']) if r['met'] else 'not met':16s} forget QA {r['forget_qa']:.2f}  "
                          f"retain {r['retain_qa']:.2f}  general {r['general_qa']:.2f}  fluency {r['fluency']:.2f}", flush=True)
    md = ["# Results of `python -m experiments.reproduce" + (" --quick" if a.quick else "") + (" --default" if a.default else "") + "`", ""]
    default = unlearn.resolve(unlearn.UnlearnConfig())
    default = dict(loss=default.loss, adapter=default.adapter, lr=default.lr, retain_weight=default.retain_weight,
                   rank=default.rank)
    default_run = lambda w: one_run(work, w, a.base_dir, unlearn.DEFAULTS["built-in"]["epochs"], tag="default-", **default)
    if a.default:
        rows = [default_run(w) for w in worlds]
        for r in rows:
            say(r)
        md += ["## The default run on the report worlds", "", checks_table(rows), "", oracle_table(rows)]
        userio.atomic_write(os.path.join(a.out, "default.md"), "\n".join(md).encode())
        return print("\n".join(md))
    todo = [s for loss in LOSSES for adapter in ADAPTERS for s in settings(loss, adapter, lrs)]
    for i, s in enumerate(todo):
        if i % parts == part:
            say(one_run(work, DEV_WORLD, a.base_dir, **s))
    while parts > 1 and not all(os.path.exists(os.path.join(work, "runs", run_key(DEV_WORLD, s) + ".json")) for s in todo):
        time.sleep(5)  # the other parts' sweep runs: the grid needs all of them for the selection
    sweep = [one_run(work, DEV_WORLD, a.base_dir, **s) for s in todo]
    chosen = {(l, ad): best_setting([r for r in sweep if r["loss"] == l and r["adapter"] == ad]) for l in LOSSES for ad in ADAPTERS}
    userio.atomic_write(os.path.join(a.out, "sweep.json"), json.dumps(sweep, indent=1).encode())
    grid = [(w, dict(loss=loss, adapter=adapter, lr=best["lr"], retain_weight=best["retain_weight"]))
            for w in worlds for (loss, adapter), best in chosen.items()]
    for w in worlds[part::parts]:  # each part fine-tunes its share of the worlds' base models and oracles first
        folder = tasks.world_dir(a.base_dir, w)
        tasks.finetune_missing(folder, print, lambda which: train.finetune(which, folder, replace(train.TrainConfig(), corpus_seed=w)))
    while not all(os.path.exists(os.path.join(tasks.world_dir(a.base_dir, w), f"{m}.pt")) for w in worlds for m in ("base", "oracle")):
        time.sleep(5)
    for i, (w, s) in enumerate(grid):
        if i % parts == part:
            say(one_run(work, w, a.base_dir, **s))
    for w in worlds[part::parts]:
        say(default_run(w))
    if parts > 1:
        return print(f"part {a.part} done; when every part is, run the same command without --part for the tables")
    rows = [one_run(work, w, a.base_dir, **s) for w, s in grid]
    userio.atomic_write(os.path.join(a.out, "grid.json"), json.dumps(rows, indent=1).encode())
    figure(rows, os.path.join(a.out, "grid.png"))
    md += ["## 1. Sweep on the development world (corpus seed 0)", "", grid_table(sweep), "",
           "One run per row (world 0 only, so no ± here). Chosen by `best_setting`: " +
           "; ".join(f"{l.upper()} + {ad}: lr {chosen[l, ad]['lr']:g}, λ {chosen[l, ad]['retain_weight']:g}"
                     for l, ad in chosen), "",
           f"## 2. The chosen settings on worlds {', '.join(map(str, worlds))} (mean ± std over worlds)", "",
           grid_table(rows), "",
           f"Each value at the first evaluation (every {EVAL_EVERY} steps) that met the stopping rule, or at the end "
           f"({EPOCHS} epochs) for runs that never met it; *steps to the rule* averages the runs that met it.", "",
           "## The paper's comparisons, world by world", "", comparisons_table(rows), "",
           "## 3. The stopping rule against the oracle", "", oracle_table(rows), "",
           f"## 4. The default run (IHL + FILA, rank {default['rank']}, lr {default['lr']:g}, λ {default['retain_weight']:g}, "
           f"up to {unlearn.DEFAULTS['built-in']['epochs']} epochs) on every report world", "",
           checks_table([default_run(w) for w in worlds]), "",
           f"Wall time of this command: {time.time() - t0:.0f} s on {os.cpu_count()} CPU cores (runs kept from an "
           f"earlier or parallel invocation are read, not rerun); float32 matmul peak measured now: "
           f"{bench.matmul_peak():.0f} GFLOP/s."]
    userio.atomic_write(os.path.join(a.out, "protocol.md"), "\n".join(md).encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
