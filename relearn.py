"""Relearning (METHOD §5.9): does the unlearned knowledge come back after a little fine-tuning?

    python relearn.py out/ihl-fila-s0            # a run folder of unlearn.py (built-in corpus)

The forget people are split in two halves, A and B. The unlearned model (adapters merged) is
fine-tuned on A's biographies only, and after each step its QA accuracy on B's questions is
measured; the oracle, which never saw either half, gets the same steps. B's answers coming back in
the unlearned model but not in the oracle means unlearning hid them rather than removed them: the
steps taught it nothing about B.
"""
import argparse
import copy
import dataclasses
import json
import os
import sys

import numpy as np
import torch

import corpus
import data
import lora
import metrics
import tasks
import train
from data import UserError
from model import lm_loss


def unlearned_model(run_dir, device="cpu"):
    """The base model of the run's world with the run's adapter (or full weights) loaded -> (model, oracle, ckpt)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{run_dir} has no config.json: give a folder written by unlearn.py")
    cfg = json.load(open(path))
    if cfg.get("forget_file"):
        raise UserError("relearn.py measures runs on the built-in corpus (it needs the forget people's halves)")
    world = tasks.world_dir(cfg["base_dir"], cfg.get("corpus_seed", 0))
    model, oracle, ckpt = tasks.load_base_and_oracle(world, device, print, dataclasses.replace(
        train.TrainConfig(), corpus_seed=cfg.get("corpus_seed", 0)))
    name = "model.pt" if cfg["adapter"] == "full" else "adapter.pt"
    saved = torch.load(os.path.join(run_dir, name), map_location=device, weights_only=True)
    if cfg["adapter"] == "full":
        model.load_state_dict(saved)
    else:
        lora.add_lora(model, cfg["rank"], cfg["alpha"])
        lora.load_lora_state_dict(model, saved)
        model = lora.merged_copy(model)
    return model.to(device), oracle, ckpt


def relearn(model, train_texts, probe, steps, lr, device="cpu"):
    """Fine-tune every weight of a copy of `model` on train_texts (one batch, AdamW) for `steps` steps;
    returns the QA accuracy on `probe` (data.Encoded) before and after each step."""
    model = copy.deepcopy(model).to(device).requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    x, y = data.collate([(t, [True] * len(t)) for t in train_texts], device)
    acc = [metrics.split_report(model, probe, device=device)[0]["qa_acc"]]
    for _ in range(steps):
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc.append(metrics.split_report(model, probe, device=device)[0]["qa_acc"])
    return acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a run folder written by unlearn.py")
    p.add_argument("--steps", type=int, default=20, help="fine-tuning steps on half A's biographies")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the fine-tuning")
    a = p.parse_args(argv)
    try:
        model, oracle, ckpt = unlearned_model(a.run)
    except UserError as e:
        sys.exit(f"error: {e}")
    enc = data.get_tokenizer(ckpt["tokenizer"])
    c = corpus.make_corpus(**ckpt["corpus"])
    half = len(c.forget.names) // 2
    a_side = corpus.Split(c.forget.names[:half], c.forget.texts[:half])
    b_side = corpus.Split(c.forget.names[half:], c.forget.texts[half:], [q for q in c.forget.qa if q.about in c.forget.names[half:]])
    B = model.config.block_size
    train_texts = data.encode(enc, a_side, B)[0].texts
    probe = data.encode(enc, b_side, B)[0]
    curves = {w: relearn(m, train_texts, probe, a.steps, a.lr) for w, m in (("unlearned", model), ("oracle", oracle))}
    print(f"QA accuracy on the {len(c.forget.names) - half} people of half B while fine-tuning on the "
          f"{half} biographies of half A (lr {a.lr}):")
    print("| step | unlearned | oracle |\n|---|---|---|")
    for k in sorted({0, 1, 2, 5, 10, a.steps} & set(range(a.steps + 1))):
        print(f"| {k} | {curves['unlearned'][k]:.2f} | {curves['oracle'][k]:.2f} |")
    out = os.path.join(a.run, "relearn.json")
    data.atomic_write(out, json.dumps(dict(steps=a.steps, lr=a.lr, **curves), indent=1).encode())
    print(f"saved to {out}; the unlearned model's largest gap over the oracle: "
          f"{float(np.max(np.array(curves['unlearned']) - np.array(curves['oracle']))):+.2f}")


if __name__ == "__main__":
    main()
