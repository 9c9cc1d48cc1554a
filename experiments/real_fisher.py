"""What a sample of the retain set changes in FILA on a real model (world 0 of SmolLM2-135M).

    python -m experiments.real_fisher [--samples 16 32 64] [--corpus_seed 0]
    python -m experiments.real_fisher --unlearn [--samples 32] [--part i/n]   # what it changes in the outcome

FILA weighs each weight row by sqrt(F_forget / F_retain) (METHOD §4). unlearn.py --fisher_retain N takes
F_retain on a seeded sample of N retain sequences instead of all of them. For each N this prints the time
of the retain Fisher pass and how far FILA's initial update ΔW = s·BA (rank 8, every adapted linear) moves
from the one the whole retain set gives: ‖ΔW_N − ΔW_all‖ / ‖ΔW_all‖ with the norm over all layers at once,
and the mean over layers of the cosine between row-importance vectors. With --unlearn it runs the default
(unlearn.DEFAULTS["real"], evaluated as real_protocol evaluates) once on the whole retain set and once per N,
and prints where each met the stopping rule and what it kept; rows are kept in --out/runs/ as the protocol's.
"""
import argparse
import os
import time

import torch

import fisher
import lora
import unlearn
from experiments import real_protocol, reproduce
from lib import data, tasks


def unlearning_rows(a):
    """The default run with F_retain on the whole retain set (N = 0) and on each sample: one row each."""
    runs = [dict(real_protocol.default_settings(), init_from=real_protocol.MODEL, fisher_retain=n) for n in [0] + a.samples]
    part, parts = map(int, a.part.split("/"))
    epochs = unlearn.DEFAULTS["real"]["epochs"]
    run = lambda s: reproduce.one_run(a.out, a.corpus_seed, a.base_dir, epochs, "", real_protocol.EVAL_EVERY, **s)
    rows = [run(s) for i, s in enumerate(runs) if i % parts == part]
    if parts > 1:
        return print(f"part {a.part} done; when every part is, run the same command without --part for the table")
    print("| retain sequences in F_retain | met the rule | steps | forget QA | well-formed | retain QA | real-world QA | "
          "fluency (NLL) | seconds |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fisher_retain'] or 'all'} | {'yes' if r['met'] else 'no'} | {r['steps']} | {r['forget_qa']:.2f} | "
              f"{r['well_formed']:.2f} | {r['retain_qa']:.2f} | {r['real_world_qa']:.2f} | {r['fluency']:.2f} | {r['seconds']:.0f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--corpus_seed", type=int, default=0)
    p.add_argument("--unlearn", action="store_true", help="compare the default's unlearning with F_retain on each sample")
    p.add_argument("--part", default="0/1", help="with --unlearn: i/n, do every n-th run from the i-th")
    p.add_argument("--base_dir", default="out", help="with --unlearn: where the world's base model and oracle live")
    p.add_argument("--out", default=os.path.join("experiments", "results", "real", "fisher"), help="with --unlearn: rows")
    a = p.parse_args()
    if a.unlearn:
        return unlearning_rows(a)
    cfg = unlearn.resolve(unlearn.UnlearnConfig(init_from="smollm2-135m", corpus_seed=a.corpus_seed, device="cpu"))
    task = tasks.make_task(cfg, print)
    model = task.model
    lora.add_lora(model, cfg.rank, cfg.alpha)
    passes = lambda examples: list(data.batches(examples, 4))  # batches of 4, as unlearn.py
    t0 = time.time()
    f_forget = fisher.fisher_diagonal(model, passes(task.forget))
    print(f"Fisher on the {len(task.forget)} forget sequences: {time.time() - t0:.1f}s")
    rows, ref_update, ref_importance = [], None, None
    for n in [0] + [n for n in a.samples if n < len(task.retain)]:  # 0: the whole set, the reference
        sample = unlearn.fisher_retain_set(task.retain, n, cfg.seed)
        t0 = time.time()
        f_retain = fisher.fisher_diagonal(model, passes(sample))
        seconds = time.time() - t0
        importance = fisher.init_adapters(model, "fila", f_forget, f_retain, eps=cfg.fila_eps)  # {layer: w}
        update = {k: m.delta() for k, m in lora.lora_layers(model).items()}  # FILA's first ΔW = s·BA
        if n == 0:
            ref_update, ref_importance = update, importance
        moved = (sum((update[k] - ref_update[k]).square().sum() for k in update) /
                 sum(ref_update[k].square().sum() for k in update)).sqrt().item()
        cos = torch.stack([torch.nn.functional.cosine_similarity(importance[k], ref_importance[k], dim=0)
                           for k in importance]).mean().item()
        rows.append(f"| {len(sample)} | {seconds:.1f} | {moved:.3f} | {cos:.3f} |")
        print(rows[-1], flush=True)
    print("\n| retain sequences | retain Fisher (s) | ‖ΔW − ΔW_all‖ / ‖ΔW_all‖ | row importance cosine |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
