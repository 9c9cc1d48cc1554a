"""The fair protocol (METHOD §7) on a real model: SmolLM2-135M-Instruct fine-tuned on a world's people
(lib/realmodel.py), settings chosen on world 0 and reported on worlds 1-3.

    python -m experiments.real_protocol                 # sweep on world 0, grid and default on worlds 1-3
    python -m experiments.real_protocol --sweep_only    # only the sweep on world 0
    python -m experiments.real_protocol --default       # only the default run on worlds 1-3
    python -m experiments.real_protocol --methods ihl+fila ihl+lora ihl+pissa   # a subset of METHODS
    python -m experiments.real_protocol --part 0/2 ...  # share the runs between processes, as reproduce.py

1. Sweep on world 0: every method of METHODS (or of --methods) at each learning rate of LRS (λ = 1, the authors').
2. Selection: reproduce.best_setting (the best model utility among runs that met the stopping rule,
   at the step each met it; else the lowest forget QA at the end).
3. Grid: the chosen settings on worlds 1-3, compared at equal forgetting (reproduce.comparisons_table),
   and the default run (unlearn.DEFAULTS["real"]) with its goals on each world.
Every world's base model and oracle are fine-tuned on first use into <base_dir>/smollm2-135m/world<seed>/.
Writes experiments/results/real/: protocol.md, sweep.json, grid.json, grid.png, tradeoff.png (every run against
the goals); each run's row in runs/.
"""
import argparse
import json
import os
import time

import unlearn
from lib import userio
from experiments import bench, reproduce

MODEL = "smollm2-135m"
METHODS = [("ihl", "fila"), ("ihl", "lora"), ("ihl", "pissa"), ("gd", "lora"), ("ga", "lora"), ("npo", "lora"), ("ihl", "full")]
LRS = {"full": (3e-5, 1e-4), "lora": (1e-4, 3e-4, 1e-3), "pissa": (1e-4, 3e-4, 1e-3), "fila": (1e-4, 3e-4, 1e-3)}
DEV_WORLD, REPORT_WORLDS = 0, (1, 2, 3)
EVAL_EVERY = 3  # steps between evaluations: once an epoch (20 forget sequences in batches of 8)
COMPARISONS = [  # (claim, a, b): the paper says b does better than a
    ("1-2: IHL vs GA", ("ga", "lora"), ("ihl", "lora")), ("2: IHL vs GD", ("gd", "lora"), ("ihl", "lora")),
    ("3: FILA vs LoRA (IHL)", ("ihl", "lora"), ("ihl", "fila")), ("FILA vs PiSSA (IHL)", ("ihl", "pissa"), ("ihl", "fila")),
    ("IHL: LoRA vs full", ("ihl", "full"), ("ihl", "lora"))]


def default_settings():
    """The real-model default run's settings (unlearn.DEFAULTS["real"]), as a protocol run takes them."""
    d = unlearn.DEFAULTS["real"]
    return dict(loss="ihl", adapter="fila", lr=d["lr"], retain_weight=d["retain_weight"], rank=d["rank"])


def grid_job(world, settings, default):
    """(world, tag, settings) of a grid run: the default's own run where the chosen setting is the
    default (its rank filled in), so that the same run is not made twice."""
    return (world, "default-", default) if dict(settings, rank=default["rank"]) == default else (world, "", settings)


def adapters_table(rows):
    """IHL with FILA, LoRA and PiSSA, world by world: steps to the stopping rule, and retain and
    real-world QA there (or at the end, for a run that never met the rule)."""
    lines = ["| world | adapter | met the rule | steps | forget QA | retain QA | real-world QA | fluency |",
             "|---|---|---|---|---|---|---|---|"]
    for w in sorted({r["world"] for r in rows}):
        for ad in ("fila", "lora", "pissa"):
            for r in (r for r in rows if r["world"] == w and (r["loss"], r["adapter"]) == ("ihl", ad)):
                lines.append(f"| {w} | {ad} | {'yes' if r['met'] else 'no'} | {r['steps']} | {r['forget_qa']:.2f} | "
                             f"{r['retain_qa']:.2f} | {r['real_world_qa']:.2f} | {r['fluency']:.2f} |")
    return "\n".join(lines)


def goals_table(rows):
    """Every method's goals (report.checks) world by world, at its chosen setting: how many of the five
    it meets, and which it misses."""
    short = lambda name: name.replace(" near the holdout level", "").replace(" kept", "").replace(" met", "")
    worlds = sorted({r["world"] for r in rows})
    lines = ["| loss | adapter | lr | " + " | ".join(f"world {w}" for w in worlds) + " | all goals met |",
             "|---|---|---|" + "---|" * (len(worlds) + 1)]
    for loss, adapter in dict.fromkeys((r["loss"], r["adapter"]) for r in rows):
        runs = {r["world"]: r for r in rows if (r["loss"], r["adapter"]) == (loss, adapter)}
        cells = []
        for w in worlds:
            checks = runs[w]["checks"] if w in runs else []
            missed = [short(name) for name, ok, _ in checks if not ok]
            cell = f"{len(checks) - len(missed)} of {len(checks)}" if checks else "–"
            cells.append(cell + (f" (missed: {', '.join(missed)})" if missed else ""))
        met = sum(bool(r["checks"]) and all(ok for _, ok, _ in r["checks"]) for r in runs.values())
        lrs = ", ".join(f"{lr:g}" for lr in sorted({r["lr"] for r in runs.values()}))
        lines.append(f"| {loss.upper()} | {adapter} | {lrs} | " + " | ".join(cells) + f" | {met} of {len(runs)} |")
    return "\n".join(lines)


def tradeoff_figure(rows, path):
    """Every run's trade-off against four of the goals (inside the grey band and above the line meets
    them; fluency is not drawn): how far forget QA stays above the holdout people's, against retain and
    real-world QA (as shares of their start) and the well-formed forget answers. Colour: the method;
    marker: the world; filled: met the stopping rule."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), sharex=True)
    panels = [("retain QA / start", lambda r: r["retain_qa"] / r["start"]["retain_qa"], 0.95),
              ("real-world QA / start", lambda r: r["real_world_qa"] / r["start"]["real_world_qa"], 0.95),
              ("forget answers well-formed", lambda r: r["well_formed"], 0.90)]
    methods = dict.fromkeys([*METHODS, *((r["loss"], r["adapter"]) for r in rows)])  # METHODS' colours first
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for ax, (label, y, goal) in zip(axes, panels):
        ax.axvspan(-1, 0.10, ymin=0, ymax=1, color="0.93")
        ax.axhline(goal, color="0.5", lw=0.8)
        for r in rows:
            c = colors[r["loss"], r["adapter"]]
            ax.scatter(r["forget_qa"] - r["holdout_qa"], y(r), marker="os^D"[r["world"] % 4], s=45, color=c,
                       facecolors=c if r["met"] else "none")
        ax.set(xlabel="forget QA − holdout QA (goal ≤ 0.10)", ylabel=label)
        ax.set_xlim(left=min([-0.1] + [r["forget_qa"] - r["holdout_qa"] - 0.02 for r in rows]))
    for m, c in colors.items():
        if any((r["loss"], r["adapter"]) == m for r in rows):
            axes[0].scatter([], [], color=c, label=f"{m[0].upper()} + {m[1]}")
    for w in sorted({r["world"] for r in rows}):
        axes[0].scatter([], [], marker="os^D"[w % 4], color="k", facecolors="none", label=f"world {w}")
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("every run at the stopping rule (filled) or its end (hollow); the goals: the grey band and above the line")
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--default", action="store_true", help="only the default run, on the report worlds")
    p.add_argument("--sweep_only", action="store_true", help="only the sweep on world 0 (to choose the default from)")
    p.add_argument("--base_dir", default="out", help="where the worlds' base models and oracles live")
    p.add_argument("--out", default=os.path.join("experiments", "results", "real"), help="tables, runs, figure")
    p.add_argument("--worlds", type=int, nargs="+", default=list(REPORT_WORLDS), help="report worlds")
    p.add_argument("--methods", nargs="+", default=[f"{l}+{ad}" for l, ad in METHODS],
                   help="which of METHODS, as loss+adapter (default: all)")
    p.add_argument("--part", default="0/1", help="i/n: do every n-th run, from the i-th")
    a = p.parse_args()
    methods = list(dict.fromkeys(tuple(m.split("+")) for m in a.methods))
    if unknown := [m for m in a.methods if tuple(m.split("+")) not in METHODS]:
        p.error(f"unknown method {unknown[0]}; choose from {', '.join(l + '+' + ad for l, ad in METHODS)}")
    part, parts = map(int, a.part.split("/"))
    t0, epochs = time.time(), unlearn.DEFAULTS["real"]["epochs"]
    run = lambda w, tag="", **s: reproduce.one_run(a.out, w, a.base_dir, epochs, tag, EVAL_EVERY, init_from=MODEL, **s)
    say = lambda r: print(f"{time.time() - t0:5.0f}s  world {r['world']} {r['loss']:3s} + {r['adapter']:5s} lr {r['lr']:g}: "
                          f"{'met at step ' + str(r['steps']) if r['met'] else 'not met':16s} forget QA {r['forget_qa']:.2f}  "
                          f"retain {r['retain_qa']:.2f}  real-world {r['real_world_qa']:.2f}  fluency {r['fluency']:.2f}  "
                          f"({r['seconds']:.0f}s)", flush=True)
    default = default_settings()
    todo = [] if a.default else [(DEV_WORLD, dict(loss=l, adapter=ad, lr=lr, retain_weight=0.0 if l == "ga" else 1.0))
                                 for l, ad in methods for lr in LRS[ad]]
    for i, (w, s) in enumerate(todo):
        if i % parts == part:
            say(run(w, **s))
    while parts > 1 and not all(os.path.exists(os.path.join(a.out, "runs", reproduce.run_key(w, dict(s, init_from=MODEL)) + ".json"))
                                for w, s in todo):
        time.sleep(5)
    sweep = [run(w, **s) for w, s in todo]
    if a.sweep_only:
        return print(reproduce.grid_table(sweep))
    chosen = {m: reproduce.best_setting([r for r in sweep if (r["loss"], r["adapter"]) == m]) for m in methods} if sweep else {}
    grid = [(w, dict(loss=l, adapter=ad, lr=c["lr"], retain_weight=c["retain_weight"])) for w in a.worlds for (l, ad), c in chosen.items()]
    job = lambda w, s: grid_job(w, s, default)
    jobs = [job(w, s) for w, s in grid] + [(w, "default-", default) for w in a.worlds]
    jobs = [j for i, j in enumerate(jobs) if j not in jobs[:i]]
    for i, (w, tag, s) in enumerate(jobs):
        if i % parts == part:
            say(run(w, tag, **s))
    if parts > 1:
        return print(f"part {a.part} done; when every part is, run the same command without --part for the tables")
    rows, defaults = [run(*job(w, s)[:2], **job(w, s)[2]) for w, s in grid], [run(w, "default-", **default) for w in a.worlds]
    flags = (" --default" if a.default else "") + ("" if set(methods) == set(METHODS) else " --methods " + " ".join(a.methods))
    md = [f"# Results of `python -m experiments.real_protocol{flags}`", "",
          f"Model: {MODEL} fine-tuned per world (lib/realmodel.py); every run evaluates every {EVAL_EVERY} steps "
          f"(one epoch), up to {epochs} epochs, and is read at the first evaluation that met the stopping rule, "
          f"or at its end.", ""]
    if sweep:
        userio.atomic_write(os.path.join(a.out, "sweep.json"), json.dumps(sweep, indent=1).encode())
        userio.atomic_write(os.path.join(a.out, "grid.json"), json.dumps(rows, indent=1).encode())
        reproduce.figure(rows, os.path.join(a.out, "grid.png"))
        md += ["## 1. Sweep on world 0 (λ = 1; GA has no retain term)", "", reproduce.grid_table(sweep), "",
               "Chosen by `reproduce.best_setting`: " + "; ".join(f"{l.upper()} + {ad}: lr {chosen[l, ad]['lr']:g}"
                                                                  for l, ad in chosen), "",
               f"## 2. The chosen settings on worlds {', '.join(map(str, a.worlds))} (mean ± std over worlds)", "",
               reproduce.grid_table(rows), "", "## Every goal, method by method (at the chosen settings)", "",
               goals_table(rows), "", "## The paper's comparisons, world by world", "",
               reproduce.comparisons_table(rows, [c for c in COMPARISONS if {c[1], c[2]} <= set(methods)]), ""]
        if {("ihl", "fila"), ("ihl", "lora"), ("ihl", "pissa")} & set(methods):
            md += ["## FILA against LoRA and PiSSA (IHL)", "", adapters_table(rows), ""]
    tradeoff_figure(sweep + rows + defaults, os.path.join(a.out, "tradeoff.png"))
    md += ["## 3. The stopping rule against the oracle", "", reproduce.oracle_table(defaults), "",
           f"## 4. The default run ({', '.join(f'{k} {v}' for k, v in default.items())}) on every report world", "",
           reproduce.checks_table(defaults), "",
           f"Wall time of this command: {time.time() - t0:.0f} s on {os.cpu_count()} CPU cores (runs kept from an "
           f"earlier invocation are read, not rerun); float32 matmul peak measured now: {bench.matmul_peak():.0f} GFLOP/s."]
    userio.atomic_write(os.path.join(a.out, "protocol.md"), "\n".join(md).encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
