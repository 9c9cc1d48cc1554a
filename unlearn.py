"""Knowledge unlearning with the Inverted Hinge loss and FILA (Cha et al., ICLR 2025; METHOD.md).

    python unlearn.py --loss ihl                  # IHL + FILA-initialised LoRA: the paper's method
    python unlearn.py --loss ga --adapter lora    # the baseline it improves on
    python unlearn.py --loss ihl --init_from smollm2-135m   # the built-in world on a real model
    python unlearn.py --init_from smollm2-135m --forget_file f.txt --retain_file r.txt --holdout_file h.txt

Each step: the unlearning loss on a forget batch + λ·NLL on a random retain batch (λ 2 on the built-in
model, 1 on a real one, 0 for ga). Every epoch (or --eval_every steps) the forget split is scored, the
others every few evaluations; stop once forget MA, EL_n and QA are below what the start scores on
people it never saw, with a margin for sampling noise (the stopping rule, METHOD §5.3). Results go to out/<run>/.
"""
import argparse
import copy
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

import fisher
import lora
from lib import data, ddp, evaluation, realmodel, report, runfiles, runtime, tasks
from lib.userio import UserError
from model import IGNORE, at_least_float32, at_targets, lm_loss, token_nll


# ----------------------------------------------------------------------------- losses (METHOD §1)
# logits (B, T, V) and targets (B, T) are aligned: logits[:, t] predicts targets[:, t]; IGNORE skipped.
# The logits may also be (N, V), at the target positions alone (model.forward's `only`).
def ga_loss(logits, targets):
    """Gradient ascent: L = −NLL = mean_t log p(y_t). Unbounded below, hence unstable."""
    return -lm_loss(logits, targets)


def ihl_loss(logits, targets):
    """Inverted Hinge: L = mean_t max(0, 1 + p(y_t) − max_{v≠y_t} p(v)), in [0, 2]. It lowers the
    true token and lifts its strongest rival. It does not stop once the rival leads: ℓ_t reaches 0
    only at p(rival) = 1, so past that crossover it keeps lifting the rival and lowers every other
    token; only its gradient fades, as the softmax saturates (METHOD §1)."""
    p = at_least_float32(at_targets(logits, targets)).softmax(-1)  # (N, V) over the target positions
    y = targets[targets != IGNORE][:, None]                          # (N, 1)
    p_true = p.gather(1, y).squeeze(1)                 # p(y_t)
    p_rival = p.scatter(1, y, 0.0).max(1).values       # max over v ≠ y_t (recomputed every step)
    return (1 + p_true - p_rival).clamp(min=0).mean()


def npo_loss(logits, targets, ref_logits, beta=0.1):
    """NPO: L = (2/β) mean_x log(1 + (π_θ(x)/π_ref(x))^β) with sequence log-likelihoods;
    log(1 + e^z) is softplus(z)."""
    logp = -token_nll(logits, targets)[0].sum(1)          # (B,) log π_θ(x)
    logp_ref = -token_nll(ref_logits, targets)[0].sum(1)  # (B,) log π_ref(x)
    return 2 / beta * F.softplus(beta * (logp - logp_ref)).mean()


LOSSES = ("ga", "gd", "ihl", "npo")
SCORE_ALL_EVERY = 4  # evaluations between scorings of the retained splits (also at the rule and at the end)
ADAPTERS = ("fila", "pissa", "lora", "full")


# Defaults per kind of model, each chosen on its development world (corpus seed 0) and reported on others:
# the built-in model by experiments/world_search.py, a real one (--init_from) by experiments/real_protocol.py.
DEFAULTS = {"built-in": dict(rank=4, lr=2e-3, epochs=40, retain_weight=2.0),
            "real": dict(rank=8, lr=1e-4, epochs=10, retain_weight=1.0)}


def per_model(flag):
    return f"(default {DEFAULTS['built-in'][flag]:g} on the built-in model, {DEFAULTS['real'][flag]:g} on a real one)"


def opt(default, help):
    """A config field with its --help text: main() turns every field into a command-line flag."""
    return field(default=default, metadata={"help": help})


@dataclass
class UnlearnConfig:
    loss: str = opt("ihl", "ga | gd | ihl | npo (gd is ga with the retain term)")
    adapter: str = opt("fila", "fila | pissa | lora (default init) | full (no adapters)")
    rank: int = opt(None, f"LoRA rank r {per_model('rank')}")
    fila_eps: float = opt(1e-5, "ε of FILA's importance F_f / (F_r + ε) and of 1/(w + ε) (the authors' 1e-5)")
    fisher_retain: int = opt(0, "retain sequences the retain Fisher is taken on, a seeded sample (0: all of them)")
    alpha: float = opt(None, "LoRA alpha (default 2 * rank, so s = 2, as the authors)")
    lr: float = opt(None, f"AdamW learning rate {per_model('lr')}")
    epochs: int = opt(None, f"most passes over the forget set; the stopping rule may end sooner {per_model('epochs')}")
    batch_size: int = opt(8, "forget sequences per step (and as many retain sequences)")
    retain_weight: float = opt(None, f"λ of the retain NLL term for gd/ihl/npo {per_model('retain_weight')}; ga has none")
    el_n: int = opt(4, "n of EL_n (the biographies are ~45 tokens, so 4 rather than the paper's 10)")
    eval_retain: int = opt(40, "retain people (or sequences) scored at each evaluation; 0: all")
    npo_beta: float = opt(0.1, "β of NPO")
    eval_every: int = opt(None, "evaluate every N steps (default: at the end of every epoch)")
    no_stop: bool = opt(False, "run every epoch instead of stopping at the rule")
    seed: int = opt(0, "batch order and adapter initialisation")
    corpus_seed: int = opt(0, "the built-in world: which invented people exist (0 is the one settings were chosen on)")
    device: str = opt("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    base_dir: str = opt("out", "folder of the worlds: <base_dir>/world<corpus_seed>/base.pt and oracle.pt (trained there if missing)")
    out: str = opt(None, "run folder (default out/[<model>/][<forget file's name>-]<loss>-<adapter>-s<seed>)")
    init_from: str = opt(None, "a real model: a Hugging Face GPT-2 or Llama folder, a .gguf file, or smollm2-135m "
                               "(hf.load); without --forget_file, the built-in world on it")
    forget_file: str = opt(None, "your forget set: text, one sequence per line, or .jsonl (text, or prompt+answer)")
    retain_file: str = opt(None, "your retain set, same formats")
    holdout_file: str = opt(None, "unseen text of the same kind: the thresholds of the stopping rule")
    save_merged: bool = opt(False, "also save the merged model as a Hugging Face folder, out/<run>/hf")
    compile: bool = opt(False, "torch.compile the model (worth it on a GPU; slow to start)")


def resolve(cfg):
    cfg = copy.copy(cfg)
    for flag, value in DEFAULTS["real" if cfg.init_from else "built-in"].items():
        if getattr(cfg, flag) is None and not (flag == "retain_weight" and cfg.loss == "ga"):
            setattr(cfg, flag, value)
    for flag, allowed in (("loss", LOSSES), ("adapter", ADAPTERS)):
        if getattr(cfg, flag) not in allowed:
            raise UserError(f"--{flag} {getattr(cfg, flag)!r} is not one of {', '.join(allowed)}")
    if cfg.fisher_retain < 0:
        raise UserError(f"--fisher_retain must be >= 0, got {cfg.fisher_retain}")
    for flag in ("rank", "lr", "epochs", "batch_size", "el_n", "fila_eps"):
        if getattr(cfg, flag) <= 0:
            raise UserError(f"--{flag} must be > 0, got {getattr(cfg, flag)}")
    cfg.alpha = 2.0 * cfg.rank if cfg.alpha is None else cfg.alpha
    if cfg.alpha <= 0:
        raise UserError(f"--alpha must be > 0, got {cfg.alpha}")
    cfg.retain_weight = 0.0 if cfg.retain_weight is None else cfg.retain_weight  # GA: no retain term
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    model = [realmodel.model_name(cfg.init_from)] if cfg.init_from else []  # not over the built-in default's run
    files = [os.path.splitext(os.path.basename(cfg.forget_file))[0]] if cfg.forget_file else []  # nor the world's
    cfg.out = cfg.out or os.path.join("out", *model, "-".join(files + [f"{cfg.loss}-{cfg.adapter}-s{cfg.seed}"]))
    return cfg


def fisher_retain_set(retain, n, seed):
    """The retain examples the retain Fisher is taken on: all of them (n = 0), or a seeded sample of n
    (the whole set can take minutes on a real model; experiments/real_fisher.py measures what it changes)."""
    return random.Random(seed).sample(retain, n) if 0 < n < len(retain) else retain


def add_adapters(model, cfg, forget, retain, log, saved=None):
    """Full fine-tuning, or LoRA on every block's linear layers initialised as cfg.adapter says;
    resuming, the saved weights instead (residual inits are re-applied from them, see lora.py)."""
    if cfg.adapter == "full":
        if saved is not None:
            model.load_state_dict(saved)
        return model.requires_grad_(True)
    smallest = min(min(block.get_submodule(path).weight.shape) for block in model.blocks for path in model.lora_targets.values())
    if cfg.rank > smallest:
        raise UserError(f"--rank {cfg.rank} exceeds the smallest adapted layer dimension; use --rank <= {smallest}")
    lora.add_lora(model, cfg.rank, cfg.alpha)
    if saved is not None:
        lora.load_lora_state_dict(model, saved)
    elif cfg.adapter == "fila":  # Fisher on forget and on retain, batches of 4 as the authors (METHOD §3)
        if not retain:
            raise UserError("--adapter fila needs retain data for the retain Fisher: give --retain_file")
        t0 = time.time()
        mine = lambda examples, what: runtime.progress(  # this rank's batches, with a progress line
            list(data.batches(examples, 4))[ddp.rank()::ddp.world()], log, f"Fisher on the {what} set")
        f_forget = fisher.fisher_diagonal(model, mine(forget, "forget"), cfg.device, ddp.all_reduce_sum)
        retain = fisher_retain_set(retain, cfg.fisher_retain, cfg.seed)
        f_retain = fisher.fisher_diagonal(model, mine(retain, "retain"), cfg.device, ddp.all_reduce_sum)
        log(f"Fisher on {len(forget)} forget and {len(retain)} retain sequences: {time.time() - t0:.1f}s")
        fisher.init_adapters(model, "fila", f_forget, f_retain, eps=cfg.fila_eps)
    elif cfg.adapter == "pissa":
        fisher.init_adapters(model, "pissa")
    return model


def forget_loss(model, ref, x, y, cfg):
    """The unlearning term on a forget batch (METHOD §1): GA's (also GD's), IHL's or NPO's."""
    logits = model(x, only=y != IGNORE)  # (N, V): the head at the target positions alone
    if cfg.loss in ("ga", "gd"):
        return ga_loss(logits, y)
    if cfg.loss == "ihl":
        return ihl_loss(logits, y)
    with torch.no_grad():
        ref_logits = ref(x, only=y != IGNORE)
    return npo_loss(logits, y, ref_logits, cfg.npo_beta)


def objective(model, ref, forget_batch, retain_batch, cfg):
    """L = L_unlearn(forget batch) + λ·NLL(retain batch), the paper's objective for one step. Under
    torchrun each process computes its shard of both batches, weighted by its share (ddp.py)."""
    fb, f_share = ddp.shard(forget_batch, per_token=cfg.loss != "npo")  # NPO is a mean over sequences
    x, y = data.collate(fb, cfg.device)
    loss = forget_loss(model, ref, x, y, cfg) * f_share
    rb, r_share = ddp.shard(retain_batch)
    if rb and cfg.retain_weight:
        xr, yr = data.collate(rb, cfg.device)
        loss = loss + cfg.retain_weight * lm_loss(model(xr, only=yr != IGNORE), yr) * r_share
    return loss


def run(cfg: UnlearnConfig, log=print, resume=None):
    """Unlearn; returns (model, evaluation.RunResults). `resume`: what a stopped run saved (its state.pt)."""
    cfg, clock = resolve(cfg), runtime.Clock()
    log = log if ddp.rank() == 0 else (lambda line: None)
    torch.manual_seed(cfg.seed)
    task = tasks.make_task(cfg, log)
    torch.manual_seed(cfg.seed)  # again: a world's first use (fine-tuning) must not change the adapters' init
    model, forget, retain = task.model, task.forget, task.retain
    ref = copy.deepcopy(model).requires_grad_(False) if cfg.loss == "npo" else None  # NPO's π_ref

    # 1. The start: its scores, the stopping rule's thresholds (from people it never saw), its answers.
    start, state = starting_point(task, cfg, resume, log)
    thr = start.thresholds

    # 2. Fisher on forget and retain -> FILA-initialised adapters (or LoRA, PiSSA, full fine-tuning).
    model = add_adapters(model, cfg, forget, retain, log, resume and resume["weights"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        log(f"resuming at step {state.step}")
    fwd = ddp.wrap(torch.compile(model) if cfg.compile else model, params)  # same parameters
    log(f"{cfg.loss} + {cfg.adapter}: {sum(p.numel() for p in params):,} trainable parameters; {rule_text(thr, cfg)}")

    def record_scores(final=False):  # evaluate and record; -> whether the stopping rule is met now
        epoch = runtime.epochs_done(state.step, len(forget), cfg.batch_size)
        with clock.evaluating(log):
            e = evaluation.evaluate(model, task, cfg, epoch, state.step, state.loss, thr, final, everything=False)
            met = evaluation.rule_met(e.forget, thr, cfg.el_n)  # the forget split alone decides the rule
            if met or final or len(state.history) % SCORE_ALL_EVERY == 0:  # the retained splits, where it matters
                evaluation.complete(e, model, task, cfg)
        state.history.append(e)
        state.rule_met = state.rule_met or (dict(epoch=epoch, step=state.step) if met else None)
        return met

    def save():  # everything needed to continue exactly here (rank 0 writes)
        return ddp.rank() == 0 and runfiles.save_state(cfg, start, state, model, optimizer)

    # 3. Unlearn: each step, the unlearning loss on a forget batch + λ·NLL on a random retain batch;
    #    evaluate every epoch (or --eval_every steps); stop as soon as the rule is met.
    plan, outcome = runtime.schedule(cfg.seed, len(forget), len(retain), cfg.batch_size, cfg.epochs), "finished"
    with runtime.ctrl_c_finishes_the_step(log) as interrupted:
        for step in range(state.step, len(plan)):
            t_step = time.perf_counter()
            with runtime.autocast(cfg.device):
                loss = objective(fwd, ref, [forget[i] for i in plan[step][0]], [retain[i] for i in plan[step][1]], cfg)
            loss, bad = runtime.update(optimizer, params, loss)
            clock.stepped(step + 1, time.perf_counter() - t_step)
            if bad:
                outcome = f"stopped: non-finite {bad} at step {step + 1}; the weights are those of step {step} " \
                          "(that update was not applied)"
                break
            state.step, state.loss = step + 1, loss
            if ddp.any_rank(interrupted):
                outcome = f"interrupted at step {step + 1}; continue with --resume {cfg.out}"
                break
            if runtime.evaluation_due(step + 1, cfg, len(forget), len(plan)):
                met = record_scores(final=step + 1 == len(plan))
                log(report.progress(state.history[-1], cfg.el_n, time.time() - clock.t0, clock.seconds_left(step + 1, len(plan))))
                save()
                if met and not cfg.no_stop:
                    break
    if outcome != "finished":
        log(outcome)
        save()
        last = state.history[-1]
        if last.step != state.step or evaluation.el_key(cfg.el_n) not in last.forget:  # score where it stopped, in full
            record_scores(final=True)
    return model, results(cfg, task, start, state, outcome, params, clock, model)


def starting_point(task, cfg, resume, log):
    """(evaluation.Start, runtime.RunState): what is measured once on the starting model
    (evaluation.measure_start; the same for every run of a world, so cached there), and where the
    run is. Resuming: both from state.pt."""
    if resume is not None:
        return evaluation.Start.from_json(resume["start"]), runtime.RunState.from_json(resume["state"])
    def measure():
        t0 = time.time()
        log("measuring the starting model: its scores, and the stopping rule's thresholds from the holdout ...")
        out = [j.to_json() for j in evaluation.measure_start(task.model, task, cfg)]
        log(f"measured the starting model: {time.time() - t0:.1f}s")
        return out

    scores, start = task.cached(f"start-el{cfg.el_n}-retain{cfg.eval_retain}-{cfg.device.split(':')[0]}", measure)
    return evaluation.Start.from_json(start), runtime.RunState(history=[evaluation.Evaluation.from_json(scores)])


def rule_text(thr, cfg):
    if thr is None:
        return "no stopping rule (it needs forget texts, and holdout texts long enough for EL_n)"
    return f"stop when forget MA < {thr.ma:.3f}, EL{cfg.el_n} < {thr.el:.3f}" + \
        (f", QA < {thr.qa:.3f}" if thr.qa is not None else "") + " (from unseen people)"


def results(cfg, task, start, state, outcome, params, clock, model):
    """The run's evaluation.RunResults: every evaluation, and the one at the first step that met the
    stopping rule (where runs are compared: equal forgetting)."""
    first, end, met = state.history[0], state.history[-1], state.rule_met
    return evaluation.RunResults(
        config=asdict(cfg), outcome=outcome, thresholds=start.thresholds, stopped_at_epoch=met and met["epoch"],
        steps=state.step, rule_met=met and next(h for h in state.history if h.step == met["step"]),
        trainable_params=sum(p.numel() for p in params), oracle_forget=task.oracle_forget,
        holdout_start=start.holdout,
        start=dict(forget_quality=first.forget_quality, model_utility=first.model_utility),
        end=dict(forget_quality=end.forget_quality, model_utility=end.model_utility),
        generations=[dict(whose=who, prompt=task.enc.decode(p), before=b,
                          after=evaluation.greedy_text(model, task.enc, p, cfg.device))
                     for (who, p), b in zip(task.prompts, start.before)],
        history=state.history, seconds=time.time() - clock.t0,
        eval_seconds=clock.eval_seconds, step_seconds=clock.step_seconds)


def main(argv=None):
    p = argparse.ArgumentParser(description="Unlearn a forget set (METHOD.md); every flag is a field of UnlearnConfig.")
    for f in fields(UnlearnConfig):
        if f.type is bool:
            p.add_argument(f"--{f.name}", action="store_true", help=f.metadata["help"])
        else:
            p.add_argument(f"--{f.name}", type=f.type, default=f.default, help=f.metadata["help"])
    p.add_argument("--resume", metavar="RUN_FOLDER", help="continue a stopped run (its saved config is used)")
    a = vars(p.parse_args(argv))
    resume_from = a.pop("resume")
    try:
        state = runfiles.load_resume(resume_from) if resume_from else None
        cfg = resolve(UnlearnConfig(**state["config"]) if state else UnlearnConfig(**a))
        cfg.device = ddp.setup(cfg.device)
        main_rank = ddp.rank() == 0
        if main_rank:
            runfiles.check_writable(cfg.out)
            print(json.dumps(asdict(cfg)))
            if ddp.world() > 1:
                print(f"data parallel over {ddp.world()} processes: each takes 1/{ddp.world()} of every batch")
        model, results = run(cfg, resume=state)
        if main_rank:
            runfiles.save_run(model, results)
            if cfg.save_merged:
                runfiles.save_merged(model, os.path.join(cfg.out, "hf"))
    except UserError as e:
        sys.exit(f"error: {e}")
    finally:
        ddp.finish()
    if main_rank:
        print(report.summary(results))
        print(f"saved to {cfg.out}/: config.json, metrics.json, timing.json, "
              f"{'model' if cfg.adapter == 'full' else 'adapter'}.pt, state.pt, plot.png" +
              (", hf/ (the merged model)" if cfg.save_merged else ""))
    if results.outcome.startswith("interrupted"):
        sys.exit(130)
    if results.outcome.startswith("stopped"):
        sys.exit(3)


if __name__ == "__main__":
    main()
