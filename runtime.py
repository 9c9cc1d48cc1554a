"""The machinery around the unlearning loop, kept out of unlearn.py so that the algorithm reads
top to bottom there: one update (data-parallel shards, bf16 autocast, the non-finite guard),
Ctrl-C handling, and `Progress`, the run's position, which is all that --resume needs besides the
weights and the optimizer (state.pt, written after every evaluation and whenever a run stops).
"""
import contextlib
import math
import signal
import threading
import time

import torch

import data
import ddp
from model import lm_loss


def autocast(device):
    """bf16 autocast on a CUDA GPU that has it (the losses are computed in float32, see token_nll and
    ihl_loss); nothing elsewhere, and no torch.cuda call on the CPU path."""
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, unlearning_term, opt, params, forget_batch, retain_batch, cfg):
    """One update: unlearning_term(model, x, y) on the forget batch + λ·NLL on the paired retain
    batch. Under torchrun each rank takes its shard of both, weighted by its share (ddp.py).
    Returns (loss, None), or (loss, 'loss' | 'gradient') without updating if that is not finite."""
    fb, rb = ddp.shard(forget_batch), ddp.shard(retain_batch)
    # Under DDP a rank with an empty shard must still join the backward: start from a zero in the graph.
    loss = sum(p.sum() for p in params) * 0.0 if ddp.world() > 1 else 0.0
    with autocast(cfg.device):
        if fb:
            x, y = data.collate(fb, cfg.device)
            loss = loss + unlearning_term(model, x, y) * ddp.share(fb, forget_batch, cfg.loss != "npo")
        if rb and cfg.retain_weight:
            xr, yr = data.collate(rb, cfg.device)
            loss = loss + cfg.retain_weight * lm_loss(model(xr), yr) * ddp.share(rb, retain_batch)
    total = ddp.all_reduce_sum(loss.detach().clone())  # the global batch's loss
    opt.zero_grad(set_to_none=True)
    (loss * ddp.world()).backward()  # DDP averages the ranks' gradients
    grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    if not torch.isfinite(total) or not torch.isfinite(grad_norm):  # GA can get here: never apply it
        return total.item(), "loss" if not torch.isfinite(total) else "gradient"
    opt.step()
    return total.item(), None


@contextlib.contextmanager
def ctrl_c_finishes_the_step(log):
    """Within: Ctrl-C sets a flag that the loop checks after each step; a second one stops at once."""
    flag = []

    def handler(signum, frame):
        if flag:
            raise KeyboardInterrupt
        flag.append(True)
        log("Ctrl-C: finishing this step, then saving the run (Ctrl-C again to abort)")
    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        yield flag
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


class Progress:
    """Where a run is. `pos` (a plain dict, saved in state.pt) holds the epoch, the global step, this
    epoch's batch order and how far into it the run is, the evaluation history, the first step
    that met the stopping rule. `rng` draws the batch order and the paired retain batches."""

    def __init__(self, cfg, n_forget, rng, pos):
        self.cfg, self.n, self.rng, self.pos = cfg, n_forget, rng, pos
        self.steps_per_epoch = math.ceil(n_forget / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.t0, self.s0 = None, None  # the time and step after this process's first step

    @staticmethod
    def new(start_scores):
        return dict(epoch=1, step=0, order=None, next=0, rule_met=None, history=[dict(epoch=0, step=0, **start_scores)])

    def batches(self, forget, retain):
        """Yield (forget batch, paired retain batch) from where the run is, to the last epoch."""
        p, bs = self.pos, self.cfg.batch_size
        while p["epoch"] <= self.cfg.epochs:
            if p["order"] is None:
                p["order"], p["next"] = list(range(len(forget))), 0
                self.rng.shuffle(p["order"])
            batch = [forget[i] for i in p["order"][p["next"]:p["next"] + bs]]
            yield batch, self.rng.sample(retain, min(len(batch), len(retain)))

    def advance(self, loss):
        """The step succeeded: move past its batch (and into the next epoch at the end of one)."""
        p = self.pos
        p["next"] += self.cfg.batch_size
        p["step"] += 1
        p["loss"] = loss
        if p["next"] >= self.n:
            p["epoch"], p["order"], p["next"] = p["epoch"] + 1, None, 0
        if self.t0 is None:  # after the first step of this process (with --compile, mostly compilation)
            self.t0, self.s0 = time.time(), p["step"]

    def epochs_done(self):
        e = self.pos["epoch"] - 1 + self.pos["next"] / self.n
        return int(e) if e == int(e) else round(e, 4)

    def evaluation_due(self):
        """Every cfg.eval_every steps and at the last one; without it, at the end of every epoch."""
        if self.cfg.eval_every:
            return self.pos["step"] % self.cfg.eval_every == 0 or self.pos["step"] == self.total_steps
        return self.pos["next"] == 0

    def record(self, scores, met):
        p = self.pos
        p["history"].append(dict(epoch=self.epochs_done(), step=p["step"], loss=p.get("loss"), **scores))
        if met and p["rule_met"] is None:  # the first evaluation that met the rule
            p["rule_met"] = dict(epoch=self.epochs_done(), step=p["step"])

    def seconds_left(self):
        """At most this many seconds to the step cap, from the steps after the first (which, with
        --compile, is the compilation) and the evaluations among them."""
        if self.t0 is None or self.pos["step"] == self.s0:
            return None
        return (time.time() - self.t0) / (self.pos["step"] - self.s0) * (self.total_steps - self.pos["step"])
