"""What a sample of the retain set changes in FILA on a real model (world 0 of SmolLM2-135M).

    python -m experiments.real_fisher [--samples 16 32 64] [--corpus_seed 0]

FILA weighs each weight row by sqrt(F_forget / F_retain) (METHOD §4). unlearn.py --fisher_retain N takes
F_retain on a seeded sample of N retain sequences instead of all of them. For each N this prints the time
of the retain Fisher pass and how far FILA's initial update ΔW = s·BA (rank 8, every adapted linear) moves
from the one the whole retain set gives: ‖ΔW_N − ΔW_all‖ / ‖ΔW_all‖ with the norm over all layers at once,
and the mean over layers of the cosine between row-importance vectors.
"""
import argparse
import time

import torch

import fisher
import lora
import unlearn
from lib import data, tasks


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--corpus_seed", type=int, default=0)
    a = p.parse_args()
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
