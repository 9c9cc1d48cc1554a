"""The search for the built-in world and the default's settings, on the development world only.

    python -m experiments.world_search                  # -> experiments/results/world_search.md, .json
    OMP_NUM_THREADS=1 python -m experiments.world_search --part 0/2 &   # two processes side by side, a core each,
    OMP_NUM_THREADS=1 python -m experiments.world_search --part 1/2      # then once more without --part for the table

Candidate worlds (WORLDS) differ in how the world is built: the shape of the pretrained model, one
wording or any wording for a person's answers, how long the fine-tune is. Each is built for corpus
seed 0 only (its own pretrained model where the shape differs, then its base and oracle), and
IHL + FILA runs on it with every setting of SETTINGS, evaluating every SEARCH_EVAL_EVERY steps, up to
SEARCH_EPOCHS epochs, stopping at the rule.

Round 2 (REFINE) runs on the world that round 1 chose, with the settings there that kept everything
but forgot too slowly, for twice as many epochs; the final choice is `best_run` over that world's rows
of both rounds (round 2 was added, and written down here, after round 1's table was in).

The selection rule (`best_run`): among the runs that met the stopping rule (they forgot, to the level
of people never seen), the one that meets the most of the default's goals (report.checks), read
where it stopped; among equals the highest share of well-formed forget answers, then the highest
model utility. If no run met the rule, the same order over all runs. A first version, written before
any run, ranked by goals met alone; the first rows showed that it prefers runs that barely forget
(forget QA 0.78 met 4 of the 6 goals, the four about keeping), and it was replaced by this one when
8 of the 24 rows were in (RESULTS.md §1). The report worlds 1-5 are never touched here: they are
the protocol's (reproduce.py).
"""
import argparse
import json
import os
import time
from dataclasses import replace

import train
from lib import data, tasks, userio
from experiments import reproduce
from model import GPTConfig

WORLDS = {  # name: (the pretrained model's shape, the world's fine-tune: train.TrainConfig fields)
    "1x256, one wording": (GPTConfig(), {}),
    "1x256, any wording": (GPTConfig(), dict(any_wording=True)),
    "1x256, 10 fine-tune epochs": (GPTConfig(), dict(epochs=10)),
    "2x256, one wording": (GPTConfig(n_layer=2), {}),
}
SETTINGS = [dict(retain_weight=w, lr=lr) for w in (1.0, 2.0, 4.0) for lr in (1e-3, 2e-3)]  # IHL + FILA, rank 4
SEARCH_EPOCHS, SEARCH_EVAL_EVERY = 20, 10  # round 1's cap, and how often every search run evaluates
# Round 2, on the world round 1 chose: the retain weights that kept everything but forgot too slowly
# in 20 epochs, given twice as long, at rank 4 and 8.
REFINE = [dict(retain_weight=w, lr=lr, rank=r) for w in (1.5, 2.0) for lr in (1e-3, 2e-3) for r in (4, 8)]
REFINE_EPOCHS = 40


def slug(name):
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def build_world(name, base_dir, log=print):
    """The candidate's base and oracle of world 0 in <base_dir>/search/<name>/world0 (built once)."""
    shape, settings = WORLDS[name]
    folder = os.path.join(base_dir, "search", slug(name))
    pretrained = train.PRETRAINED if shape == GPTConfig() else \
        os.path.join(base_dir, "search", f"pretrained-{shape.n_layer}x{shape.n_embd}.pt")
    if not os.path.exists(pretrained):
        train.pretrain(pretrained, train.PretrainConfig(model=shape), log=log)
    world = tasks.world_dir(folder, reproduce.DEV_WORLD)
    for which in ("base", "oracle"):
        if not os.path.exists(os.path.join(world, f"{which}.pt")):
            train.finetune(which, world, replace(train.TrainConfig(), **settings), log=log, pretrained=pretrained)
    return folder


def best_run(rows):
    """The selection rule (module docstring): the rule met, then most goals met, then well-formed
    answers, then utility."""
    return max(rows, key=lambda r: (r["met"], sum(ok for _, ok, _ in r["checks"]), r["well_formed"] or 0,
                                    r["model_utility"]))


def table(rows, rank=False):
    goals = [c[0] for c in rows[0]["checks"]]
    lines = ["| world | λ | lr | " + ("rank | " if rank else "") + "met the rule | steps | forget QA | well-formed | retain QA | general QA | pretraining QA "
             "| fluency (start) | goals met | goals missed | a forget answer after |", "|" + "---|" * (14 + rank)]
    for r in rows:
        s = r["start"]
        lines.append(f"| {r['candidate']} | {r['retain_weight']:g} | {r['lr']:g} | " + (f"{r['rank']} | " if rank else "") +
                     f"{'yes' if r['met'] else 'no'} | "
                     f"{r['steps']} | {r['forget_qa']:.2f} | {r['well_formed']:.2f} | {r['retain_qa']:.2f} ({s['retain_qa']:.2f}) | "
                     f"{r['general_qa']:.2f} ({s['general_qa']:.2f}) | {r['pretraining_qa']:.2f} ({s['pretraining_qa']:.2f}) | "
                     f"{r['fluency']:.2f} ({s['fluency']:.2f}) | {sum(ok for _, ok, _ in r['checks'])}/{len(goals)} | "
                     + (", ".join(g for g, ok, _ in r["checks"] if not ok) or "none") + f" | {r['answer_after']} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base_dir", default="out", help="where the candidates' models are built")
    p.add_argument("--out", default=os.path.join("experiments", "results"), help="folder for the table and the runs")
    p.add_argument("--part", default="0/1", help="i/n: do every n-th candidate run (see experiments/reproduce.py)")
    a = p.parse_args()
    part, parts = map(int, a.part.split("/"))
    work, t0 = os.path.join(a.out, "world_search"), time.time()
    rows = []
    for i, (name, s) in enumerate((name, s) for name in WORLDS for s in SETTINGS):
        if list(WORLDS).index(name) % parts != part and parts > 1:  # a part takes whole candidates
            continue
        folder = build_world(name, a.base_dir)
        r = reproduce.one_run(work, reproduce.DEV_WORLD, folder, SEARCH_EPOCHS, tag=slug(name) + "-", eval_every=SEARCH_EVAL_EVERY,
                              loss="ihl", adapter="fila", **s)
        rows.append(dict(r, candidate=name))
        print(f"{time.time() - t0:5.0f}s  {name} λ {s['retain_weight']:g} lr {s['lr']:g}: forget QA {r['forget_qa']:.2f} "
              f"well-formed {r['well_formed']:.2f} retain {r['retain_qa']:.2f} goals "
              f"{sum(ok for _, ok, _ in r['checks'])}/{len(r['checks'])}", flush=True)
    if parts > 1:
        return print(f"part {a.part} done; when every part is, run the same command without --part for the table")
    first = best_run(rows)
    name, folder = first["candidate"], build_world(first["candidate"], a.base_dir)
    refined = []
    for s in REFINE:
        r = reproduce.one_run(work, reproduce.DEV_WORLD, folder, REFINE_EPOCHS, tag=slug(name) + "-refine-",
                              eval_every=SEARCH_EVAL_EVERY, loss="ihl", adapter="fila", **s)
        refined.append(dict(r, candidate=name))
        print(f"{time.time() - t0:5.0f}s  {name} λ {s['retain_weight']:g} lr {s['lr']:g} rank {s['rank']}: forget QA "
              f"{r['forget_qa']:.2f} well-formed {r['well_formed']:.2f} retain {r['retain_qa']:.2f}", flush=True)
    best = best_run([r for r in rows if r["candidate"] == name] + refined)
    userio.atomic_write(os.path.join(a.out, "world_search.json"),
                      json.dumps(dict(rows=rows, refined=refined, chosen=best), indent=1).encode())
    md = ["# Results of `python -m experiments.world_search`", "",
          f"IHL + FILA (rank 4) on world 0 of each candidate, read at the first evaluation that met the stopping rule "
          f"(every {SEARCH_EVAL_EVERY} steps) or at the end ({SEARCH_EPOCHS} epochs); in brackets, the start.", "",
          "## Round 1: every candidate world", "", table(rows), "",
          f"Round 1 chooses **{name}**, λ {first['retain_weight']:g}, lr {first['lr']:g}.", "",
          f"## Round 2: {name}, up to {REFINE_EPOCHS} epochs", "", table(refined, rank=True), "",
          f"Chosen by `world_search.best_run` over both rounds on this world: λ {best['retain_weight']:g}, lr {best['lr']:g}, "
          f"rank {best.get('rank', 4)}, up to {REFINE_EPOCHS if best in refined else SEARCH_EPOCHS} epochs "
          f"({sum(ok for _, ok, _ in best['checks'])} of {len(best['checks'])} goals: " +
          "; ".join(f"{w} {'yes' if ok else 'NO'} ({d})" for w, ok, d in best["checks"]) + ").", "",
          f"Wall time {time.time() - t0:.0f} s (runs kept from earlier or parallel invocations are read, not rerun)."]
    userio.atomic_write(os.path.join(a.out, "world_search.md"), "\n".join(md).encode())
    print("\n".join(md))


if __name__ == "__main__":
    main()
