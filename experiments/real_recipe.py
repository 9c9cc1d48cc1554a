"""How the real model's fine-tune recipe was chosen (lib/realmodel.py), on world 0 only: each recipe
fine-tunes SmolLM2-135M into world 0's base model and reports what the base knows of the world's
people and of the real-world questions (asked in the world's QA format).

    python -m experiments.real_recipe                                  # the recipes below
    python -m experiments.real_recipe '{"lr": 3e-3, "epochs": 10}'     # others, as RealTrainConfig fields

Each recipe's base model goes to out/recipes/<recipe>/base.pt (kept: a later invocation reads it);
the table goes to experiments/results/real_recipe.md.
"""
import json
import os
import sys
import time
from dataclasses import asdict, replace

import torch

from lib import realmodel, userio
from experiments import bench

# The rows of RESULTS.md (section 9.1) that today's code makes (the ones with the earlier replay set cannot be made again).
RECIPES = [dict(rank=16, lr=1e-3, epochs=8, replay=False), dict(rank=16, lr=3e-3, epochs=10, replay=False),
           dict(rank=8, lr=3e-3, epochs=10)]


def name(recipe):
    return "_".join(f"{k}{v}" for k, v in recipe.items())


def main():
    recipes = [json.loads(a) for a in sys.argv[1:]] or RECIPES
    peak, rows = bench.matmul_peak(), []
    for r in recipes:
        folder = os.path.join("out", "recipes", name(r))
        path = os.path.join(folder, "base.pt")
        if not os.path.exists(path):
            realmodel.finetune("base", folder, replace(realmodel.RealTrainConfig(), **r),
                               log=lambda s, n=name(r): print(f"[{n}] {s}", flush=True))
        rows.append((r, torch.load(path, weights_only=True)["metrics"]))
    defaults = asdict(realmodel.RealTrainConfig())
    lines = ["| recipe (changes from the defaults) | forget QA | retain QA | holdout QA | real-world QA | seconds |",
             "|---|---|---|---|---|---|"]
    for r, m in rows:
        what = ", ".join(f"{k} {v}" for k, v in r.items() if defaults.get(k) != v) or "the default"
        lines.append(f"| {what} | " + " | ".join(f"{m[s]['qa_acc']:.2f}" for s in ("forget", "retain", "holdout", "real_world"))
                     + f" | {m['train_seconds']:.0f} |")
    text = "\n".join([f"Defaults: {defaults}", "", *lines, "",
                      f"float32 matmul peak measured now: {peak:.0f} GFLOP/s on {os.cpu_count()} cores ({time.strftime('%Y-%m-%d')})"])
    userio.atomic_write(os.path.join("experiments", "results", "real_recipe.md"), text.encode())
    print(text)


if __name__ == "__main__":
    main()
