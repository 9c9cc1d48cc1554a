"""Relearning (METHOD §5.9): does the unlearned knowledge come back after a little fine-tuning?

    python relearn.py out/ihl-fila-s0            # a run folder of unlearn.py (built-in corpus)

The forget people are split in two halves, A and B. The unlearned model (adapters merged) is
fine-tuned on A's biographies only, and after each step its QA accuracy on B's questions is
measured; the oracle, which never saw either half, gets the same steps. The steps teach nothing
about B, so B's answers coming back means unlearning hid them rather than removed them. But any
fine-tuning on biographies can repair what unlearning broke in the wording of answers; the control
fine-tunes the unlearned model for the same steps on as many retain people's biographies. Only what
half A brings back beyond the control is relearning of the forgotten facts.
"""
import argparse
import copy
import json
import os
import sys

import numpy as np
import torch

from lib import corpus, data, evaluation, runfiles, runtime, userio
from lib.userio import UserError
from model import lm_loss


def relearn(model, train_texts, probe, steps, lr, enc, device="cpu"):
    """Fine-tune every weight of a copy of `model` on train_texts (one batch, AdamW) for `steps` steps;
    returns the QA accuracy on `probe` (data.Encoded: the share of answers that state the fact)
    before and after each step."""
    model = copy.deepcopy(model).to(device).requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    x, y = data.collate(data.whole(train_texts), device)
    accuracy = lambda: evaluation.split_scores(model, enc, probe, device, forget_like=True)[0]["qa_acc"]
    acc = [accuracy()]
    for _ in range(steps):
        runtime.update(opt, list(model.parameters()), lm_loss(model(x), y), clip=None)  # a bare step: no clipping
        acc.append(accuracy())
    return acc


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a run folder written by unlearn.py")
    p.add_argument("--steps", type=int, default=20, help="fine-tuning steps on half A's biographies")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of the fine-tuning")
    a = p.parse_args(argv)
    try:
        cfg, _, model, oracle, enc = runfiles.load_run(a.run)
        if oracle is None:
            raise UserError("relearn.py measures runs on the built-in world (it needs the forget people's halves)")
    except UserError as e:
        sys.exit(f"error: {e}")
    c = corpus.make_corpus(**cfg["world"])
    half = len(c.forget.names) // 2
    B = model.config.block_size
    bios = lambda texts: data.encode(enc, corpus.Split(texts=texts), B)[0].texts
    b_side = corpus.Split(c.forget.names[half:], c.forget.texts[half:], [q for q in c.forget.qa if q.about in c.forget.names[half:]])
    probe = data.encode(enc, b_side, B)[0]
    a_bios = bios(c.forget.texts[:half])
    control_bios = bios(c.retain.texts[:half])  # as many biographies, of people it was meant to keep
    curves = dict(unlearned=relearn(model, a_bios, probe, a.steps, a.lr, enc),
                  control=relearn(model, control_bios, probe, a.steps, a.lr, enc),
                  oracle=relearn(oracle, a_bios, probe, a.steps, a.lr, enc))
    print(f"QA accuracy on the {len(c.forget.names) - half} people of half B while fine-tuning for {a.steps} steps "
          f"(lr {a.lr}) on {half} biographies: of half A (unlearned model, oracle) or of retain people (control):")
    print("| step | unlearned, on half A | unlearned, on retain people (control) | oracle, on half A |\n|---|---|---|---|")
    for k in sorted({0, 1, 2, 5, 10, a.steps} & set(range(a.steps + 1))):
        print(f"| {k} | {curves['unlearned'][k]:.2f} | {curves['control'][k]:.2f} | {curves['oracle'][k]:.2f} |")
    out = os.path.join(a.run, "relearn.json")
    userio.atomic_write(out, json.dumps(dict(steps=a.steps, lr=a.lr, **curves), indent=1).encode())
    gap = np.array(curves["unlearned"]) - np.array(curves["control"])
    print(f"saved to {out}. What half A's biographies bring back beyond what any biographies do "
          f"(unlearned minus control): {gap[-1]:+.2f} at step {a.steps}, at most {gap.max():+.2f}")


if __name__ == "__main__":
    main()
