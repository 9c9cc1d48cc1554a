"""The machinery around the unlearning loop, kept out of unlearn.py so that the algorithm reads top
to bottom there: the batch schedule, one optimizer update with its non-finite guard, bf16 autocast,
Ctrl-C, the evaluation schedule and the run's saved state (state.pt, which --resume continues).
"""
import contextlib
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import torch

from lib import ddp
from lib.evaluation import Evaluation


@dataclass
class RunState:
    """Where a run is: what state.pt keeps (as JSON-like data, which torch.load's weights_only reads)."""
    step: int = 0
    loss: float = None
    rule_met: dict = None       # {epoch, step} of the first evaluation that met the stopping rule
    history: list = field(default_factory=list)  # [Evaluation], the start first

    def to_json(self):
        return dict(step=self.step, loss=self.loss, rule_met=self.rule_met, history=[h.to_json() for h in self.history])

    @classmethod
    def from_json(cls, d):
        return cls(d["step"], d["loss"], d["rule_met"], [Evaluation.from_json(h) for h in d["history"]])


def schedule(seed, n_forget, n_retain, batch_size, epochs):
    """Every step's (forget indices, retain indices), drawn up front from one random.Random(seed):
    each epoch a fresh shuffle of the forget set cut into batches, each batch paired with a random
    sample of as many retain examples. A step's batches depend on the seed and the step alone, so a
    resumed run goes on with exactly the batches an uninterrupted one would have had."""
    rng, steps = random.Random(seed), []
    for _ in range(epochs):
        order = list(range(n_forget))
        rng.shuffle(order)
        for i in range(0, n_forget, batch_size):
            batch = order[i:i + batch_size]
            steps.append((batch, rng.sample(range(n_retain), min(len(batch), n_retain))))
    return steps


def epochs_done(step, n_forget, batch_size):
    """Passes over the forget set after `step` steps: 2 after two epochs, 2.3077 three steps later."""
    per_epoch = -(-n_forget // batch_size)
    e = step // per_epoch + (step % per_epoch) * batch_size / n_forget
    return int(e) if e == int(e) else round(e, 4)


def evaluation_due(step, cfg, n_forget, total_steps):
    """Every cfg.eval_every steps and at the last one; without it, at the end of every epoch."""
    if cfg.eval_every:
        return step % cfg.eval_every == 0 or step == total_steps
    return step % -(-n_forget // cfg.batch_size) == 0


def autocast(device):
    """bf16 autocast on a CUDA GPU that has it (the losses are computed in float32, see token_nll and
    ihl_loss); nothing elsewhere, and no torch.cuda call on the CPU path."""
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def update(optimizer, params, loss, clip=1.0):
    """The one optimizer update of every training loop here: backward, clip the gradient to norm
    `clip` (None: no clipping), step. Under torchrun `loss` is this process's weighted shard of the
    batch (ddp.py) and the loss returned is the whole batch's. Returns (loss, None), or (loss, 'loss' |
    'gradient') without applying anything if that is not finite (GA can get there)."""
    total = ddp.all_reduce_sum(loss.detach().clone())
    optimizer.zero_grad(set_to_none=True)
    (loss * ddp.world()).backward()  # DDP averages the processes' gradients
    if clip is None:
        finite = all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
    else:
        finite = torch.isfinite(torch.nn.utils.clip_grad_norm_(params, clip))
    if not torch.isfinite(total) or not finite:
        return total.item(), "loss" if not torch.isfinite(total) else "gradient"
    optimizer.step()
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


def progress(items, log, what, every=5.0):
    """Yield the items of a list, saying every `every` seconds how far `what` is and the time left at
    its pace so far (a real model's Fisher pass takes minutes on a CPU)."""
    t0 = last = time.time()
    for k, item in enumerate(items):
        yield item
        now = time.time()
        if now - last > every and k + 1 < len(items):
            log(f"{what}: {k + 1}/{len(items)}, ~{(now - t0) / (k + 1) * (len(items) - k - 1):.0f}s left")
            last = now


class Clock:
    """Wall time of a run: in training steps, at each evaluation, and the time left to the step cap
    (from the steps after this process's first one, which with --compile is mostly compilation)."""

    def __init__(self):
        self.t0, self.first = time.time(), None
        self.step_seconds, self.eval_seconds, self.last_eval = 0.0, [], 0.0

    def stepped(self, step, seconds):
        self.step_seconds += seconds
        self.first = self.first or (time.time(), step)

    @contextlib.contextmanager
    def evaluating(self, log):
        """Times one evaluation; where the last one took more than a few seconds, says so first."""
        if self.last_eval > 5:
            log(f"evaluating (~{self.last_eval:.0f}s, as the last time) ...")
        t = time.time()
        yield
        self.last_eval = time.time() - t
        self.eval_seconds.append(time.time() - self.t0)

    def seconds_left(self, step, total_steps):
        if self.first is None or step == self.first[1]:
            return None
        t, s = self.first
        return (time.time() - t) / (step - s) * (total_steps - step)
