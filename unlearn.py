"""Knowledge unlearning with the Inverted Hinge loss and FILA (Cha et al., ICLR 2025; METHOD.md).

    python unlearn.py --loss ihl                  # IHL + FILA-initialised LoRA: the paper's method
    python unlearn.py --loss ga --adapter lora    # the baseline it improves on

Each step: the unlearning loss on a forget batch, plus λ·NLL on a random retain batch (λ = 1 for
gd, ihl and npo, 0 for ga). Each epoch: MA and EL_n on the forget biographies and QA metrics on every
split; stop once forget MA and EL_n are both below what the starting model scores on people it never
saw (the holdout split), the stopping rule of METHOD §5. Results go to out/<run>/.
"""
import argparse
import contextlib
import copy
import json
import os
import random
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import data
import fisher
import lora
import metrics
import report
import train
from model import IGNORE, lm_loss, token_nll


# ----------------------------------------------------------------------------- losses (METHOD §1)
# logits (B, T, V) and targets (B, T) are aligned: logits[:, t] predicts targets[:, t]; IGNORE skipped.
def ga_loss(logits, targets):
    """Gradient ascent: L = −NLL = mean_t log p(y_t). Unbounded below, hence unstable."""
    return -lm_loss(logits, targets)


def ihl_loss(logits, targets):
    """Inverted Hinge: L = mean_t max(0, 1 + p(y_t) − max_{v≠y_t} p(v)), in [0, 2]. It lowers the
    true token, lifts its strongest rival, and stops pushing once the true token is no longer on top."""
    mask = targets != IGNORE
    p = logits[mask].float().softmax(-1)               # (N, V) over the target positions
    y = targets[mask][:, None]                         # (N, 1)
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
ADAPTERS = ("fila", "pissa", "lora", "full")


@dataclass
class UnlearnConfig:
    loss: str = "ihl"            # ga | gd | ihl | npo (gd is ga with the retain term)
    adapter: str = "fila"        # fila | pissa | lora (default init) | full (no adapters)
    rank: int = 4                # LoRA rank r
    alpha: float = None          # LoRA alpha; None means 2·rank (s = 2), as the authors
    lr: float = 2e-3             # AdamW learning rate (tried 1e-3 to 1e-2: higher makes retain swing)
    epochs: int = 10             # most passes over the forget set; the stopping rule usually ends sooner
    batch_size: int = 8          # forget sequences per step (and as many retain sequences)
    retain_weight: float = None  # λ; None means 1 for gd/ihl/npo, 0 for ga
    el_n: int = 4                # n of EL_n; the biographies are ~45 tokens, so n = 4, not 10
    eval_retain: int = 40        # retain people scored each epoch (0: all 180); keeps evaluation cheap
    npo_beta: float = 0.1        # β of NPO
    stop: bool = True            # apply the stopping rule (False: always run all epochs)
    seed: int = 0                # batch order and adapter init
    device: str = "auto"         # auto picks cuda, then mps, then cpu
    base_dir: str = "out"        # where base.pt and oracle.pt live (built there if missing)
    out: str = None              # run folder; None means out/<loss>-<adapter>-s<seed>


def resolve(cfg):
    cfg = copy.copy(cfg)
    for flag, allowed in (("loss", LOSSES), ("adapter", ADAPTERS)):
        if getattr(cfg, flag) not in allowed:
            raise ValueError(f"--{flag} {getattr(cfg, flag)!r} is not one of {', '.join(allowed)}")
    for flag in ("rank", "lr", "epochs", "batch_size", "el_n"):
        if getattr(cfg, flag) <= 0:
            raise ValueError(f"--{flag} must be > 0, got {getattr(cfg, flag)}")
    cfg.alpha = 2.0 * cfg.rank if cfg.alpha is None else cfg.alpha
    if cfg.alpha <= 0:
        raise ValueError(f"--alpha must be > 0, got {cfg.alpha}")
    cfg.retain_weight = (0.0 if cfg.loss == "ga" else 1.0) if cfg.retain_weight is None else cfg.retain_weight
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else \
            "mps" if torch.backends.mps.is_available() else "cpu"
    cfg.out = cfg.out or os.path.join("out", f"{cfg.loss}-{cfg.adapter}-s{cfg.seed}")
    return cfg


def load_models(cfg, log):
    """The starting model and the oracle, trained first if they are not there yet."""
    paths = {w: os.path.join(cfg.base_dir, f"{w}.pt") for w in ("base", "oracle")}
    if missing := [w for w, p in paths.items() if not os.path.exists(p)]:
        log(f"first use: training {' and '.join(missing)} into {cfg.base_dir}/ (about 35 s each on a 2-core CPU)")
    for which in missing:
        train.build(which, cfg.base_dir, device=cfg.device, log=log)
    base, ckpt = train.load_checkpoint(paths["base"], cfg.device)
    oracle, _ = train.load_checkpoint(paths["oracle"], cfg.device)
    return base, oracle, ckpt


def add_adapters(model, cfg, forget, retain, log, init=True):
    """Full fine-tuning, or LoRA on every block's linear layers with the chosen initialisation
    (init=False: bare adapters, for --resume to load saved ones into)."""
    if cfg.adapter == "full":
        return model.requires_grad_(True), {}
    smallest = min(min(m.weight.shape) for name, m in model.named_modules() if name.endswith(
        tuple(lora.TARGETS.values())))
    if cfg.rank > smallest:
        raise ValueError(f"--rank {cfg.rank} exceeds the smallest adapted layer dimension; use --rank <= {smallest}")
    lora.add_lora(model, cfg.rank, cfg.alpha)
    weights = {}
    if not init:
        return model, weights
    if cfg.adapter == "fila":  # Fisher on forget and on retain, batches of 4 as the authors (METHOD §3)
        t0 = time.time()
        f_forget = fisher.fisher_diagonal(model, data.batches(forget, 4), cfg.device)
        f_retain = fisher.fisher_diagonal(model, data.batches(retain, 4), cfg.device)
        log(f"Fisher on {len(forget)} forget and {len(retain)} retain sequences: {time.time() - t0:.1f}s")
        weights = fisher.init_adapters(model, "fila", f_forget, f_retain)
    elif cfg.adapter == "pissa":
        fisher.init_adapters(model, "pissa")
    return model, weights


def evaluate(model, corpus, enc, cfg):
    """Every split's report, and the forget questions' truth ratios (for forget quality).
    EL_n, the costly one, only on the forget split, where the stopping rule needs it."""
    reports, ratios = {}, None
    for s in ("forget", "retain", "holdout", "general"):
        reports[s], r = metrics.split_report(model, enc, getattr(corpus, s), cfg.el_n if s == "forget" else None,
                                             cfg.device)
        ratios = r if s == "forget" else ratios
    return reports, ratios


def greedy_answer(model, enc, question, device):
    prompt = torch.tensor([enc.encode_ordinary(data.qa_prompt(question))], device=device)
    out = model.generate(prompt, 16, temperature=0)[0, prompt.size(1):].tolist()
    return enc.decode(out[:out.index(enc.eot_token)] if enc.eot_token in out else out).strip()


def forget_loss(model, ref, x, y, cfg):
    """The unlearning term on a forget batch (METHOD §1)."""
    logits = model(x)
    if cfg.loss in ("ga", "gd"):
        return ga_loss(logits, y)
    if cfg.loss == "ihl":
        return ihl_loss(logits, y)
    with torch.no_grad():
        ref_logits = ref(x)
    return npo_loss(logits, y, ref_logits, cfg.npo_beta)


def train_step(model, ref, opt, params, forget_batch, retain_batch, cfg):
    """One update: the unlearning term on the forget batch + λ·NLL on a paired retain batch.
    Returns (loss, None), or (loss, 'loss' | 'gradient') without updating if that is not finite."""
    x, y = data.collate(forget_batch, cfg.device)
    loss = forget_loss(model, ref, x, y, cfg)
    if cfg.retain_weight:
        xr, yr = data.collate(retain_batch, cfg.device)
        loss = loss + cfg.retain_weight * lm_loss(model(xr), yr)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    if not torch.isfinite(loss) or not torch.isfinite(grad_norm):  # GA can get here: never apply it
        return loss.item(), "loss" if not torch.isfinite(loss) else "gradient"
    opt.step()
    return loss.item(), None


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


def run(cfg: UnlearnConfig, log=print, resume=None):
    """Unlearn; returns (model, results). `resume`: a state saved in a run folder's state.pt."""
    cfg = resolve(cfg)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    t_start = time.time()
    model, oracle, ckpt = load_models(cfg, log)
    enc = data.get_tokenizer(ckpt["tokenizer"])
    corpus = data.make_corpus(**ckpt["corpus"])
    scored = copy.copy(corpus)  # what evaluate() scores: the retain split may be a subset of its people
    scored.retain = data.people_subset(corpus.retain, cfg.eval_retain)
    # D_r is everything the base model learned except D_f: the retain people and the general facts,
    # exactly the oracle's training data (train.training_examples).
    forget = data.split_examples(enc, corpus.forget)
    retain = data.split_examples(enc, corpus.retain) + data.split_examples(enc, corpus.general)
    ref = copy.deepcopy(model).requires_grad_(False) if cfg.loss == "npo" else None

    if resume is None:  # the starting point: stopping thresholds, forget quality, answers "before"
        start, start_ratios = evaluate(model, scored, enc, cfg)
        holdout = metrics.split_report(model, enc, corpus.holdout, cfg.el_n, cfg.device)[0]
        oracle_forget, oracle_ratios = metrics.split_report(oracle, enc, corpus.forget, None, cfg.device)
        questions = [corpus.forget.qa[0].question, corpus.retain.qa[0].question]
        fixed = dict(thresholds=dict(ma=holdout["ma"], el=holdout[f"el{cfg.el_n}"]), oracle_forget=oracle_forget,
                     oracle_ratios=oracle_ratios.tolist(), start_ratios=start_ratios.tolist(), questions=questions,
                     before=[greedy_answer(model, enc, q, cfg.device) for q in questions])
        model, _ = add_adapters(model, cfg, forget, retain, log)
        pos = dict(epoch=1, step=0, order=None, next=0, stopped=None, history=[dict(epoch=0, step=0, **start)])
    else:
        fixed, pos = resume["fixed"], resume["pos"]
        model, _ = add_adapters(model, cfg, forget, retain, log, init=False)
        if cfg.adapter == "full":
            model.load_state_dict(resume["weights"])
        else:
            lora.load_lora_state_dict(model, resume["weights"])
        rng.setstate(resume["rng"])
        log(f"resuming at epoch {pos['epoch']}, step {pos['step']}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
    thr, el = fixed["thresholds"], f"el{cfg.el_n}"
    log(f"{cfg.loss} + {cfg.adapter}: {sum(p.numel() for p in params):,} trainable parameters; "
        f"stop when forget MA < {thr['ma']:.3f} and EL{cfg.el_n} < {thr['el']:.3f} (holdout)")

    def save_state():  # everything needed to continue exactly where we are
        report.save_state(cfg.out, dict(config=asdict(cfg), fixed=fixed, pos=pos, rng=rng.getstate(),
                                         weights=report.trainable_state(model, cfg.adapter), optimizer=opt.state_dict()))

    outcome, epoch_seconds, t_train = "finished", [], time.time()
    os.makedirs(cfg.out, exist_ok=True)
    with ctrl_c_finishes_the_step(log) as interrupted:
        while pos["epoch"] <= cfg.epochs and outcome == "finished":
            if pos["order"] is None:
                pos["order"], pos["next"] = list(range(len(forget))), 0
                rng.shuffle(pos["order"])
            model.train()
            while pos["next"] < len(forget):
                batch = [forget[i] for i in pos["order"][pos["next"]:pos["next"] + cfg.batch_size]]
                loss, bad = train_step(model, ref, opt, params, batch, rng.sample(retain, len(batch)), cfg)
                if bad:
                    outcome = f"stopped: non-finite {bad} at step {pos['step'] + 1}; the weights are those of " \
                              f"step {pos['step']} (that update was not applied)"
                    break
                pos["next"] += cfg.batch_size
                pos["step"] += 1
                pos["loss"] = loss
                if interrupted:
                    outcome = f"interrupted at step {pos['step']}; continue with --resume {cfg.out}"
                    break
            if outcome != "finished":
                break
            scores, ratios = evaluate(model, scored, enc, cfg)
            pos["history"].append(dict(epoch=pos["epoch"], step=pos["step"], loss=pos["loss"], **scores))
            pos["ratios"] = ratios.tolist()
            epoch_seconds.append(time.time() - t_start)
            f = scores["forget"]
            eta = (time.time() - t_train) / len(epoch_seconds) * (cfg.epochs - pos["epoch"])
            log(f"epoch {pos['epoch']:2d} step {pos['step']:3d}  loss {pos['loss']:7.3f}  forget QA {f['qa_acc']:.0%} "
                f"MA {f['ma']:.3f} EL{cfg.el_n} {f[el]:.3f}  retain QA {scores['retain']['qa_acc']:.0%}"
                f"  {time.time() - t_start:.0f}s (at most {eta:.0f}s more)")
            met = f["ma"] < thr["ma"] and f[el] < thr["el"]
            pos["stopped"] = pos["stopped"] or (pos["epoch"] if met else None)  # the first epoch that met the rule
            pos["epoch"], pos["order"] = pos["epoch"] + 1, None
            save_state()
            if met and cfg.stop:
                break
    if outcome != "finished":
        log(outcome)
        save_state()
        if pos["history"][-1]["step"] != pos["step"]:  # score where we stopped, mid-epoch
            scores, ratios = evaluate(model, scored, enc, cfg)
            pos["history"].append(dict(epoch=pos["epoch"] - 1 + pos["next"] / len(forget), step=pos["step"],
                                       loss=pos.get("loss"), **scores))
            pos["ratios"] = ratios.tolist()

    # Forget quality: KS test between the truth ratios and the oracle's on the forget questions.
    start, end = pos["history"][0], pos["history"][-1]
    utility = lambda r: metrics.model_utility([r["retain"], r["general"]])
    ks = lambda r: metrics.ks_2samp_pvalue(r, fixed["oracle_ratios"])
    results = dict(
        config=asdict(cfg), outcome=outcome, thresholds=thr, stopped_at_epoch=pos["stopped"], steps=pos["step"],
        trainable_params=sum(p.numel() for p in params), oracle_forget=fixed["oracle_forget"],
        start=dict(forget_quality=ks(fixed["start_ratios"]), model_utility=utility(start)),
        end=dict(forget_quality=ks(pos.get("ratios", fixed["start_ratios"])), model_utility=utility(end)),
        generations=[dict(question=q, before=b, after=greedy_answer(model, enc, q, cfg.device))
                     for q, b in zip(fixed["questions"], fixed["before"])],
        history=pos["history"], seconds=time.time() - t_start, epoch_seconds=epoch_seconds)
    return model, results


def main(argv=None):
    d = UnlearnConfig()
    p = argparse.ArgumentParser(description="Unlearn the forget split of the built-in corpus (METHOD.md).")
    p.add_argument("--loss", default=d.loss, help="ga | gd | ihl | npo (default ihl)")
    p.add_argument("--adapter", default=d.adapter, help="fila | pissa | lora | full (default fila)")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=d.alpha, help="LoRA alpha (default 2 * rank)")
    p.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate")
    p.add_argument("--epochs", type=int, default=d.epochs, help="most passes over the forget set")
    p.add_argument("--batch_size", type=int, default=d.batch_size, help="forget (and retain) sequences per step")
    p.add_argument("--retain_weight", type=float, default=d.retain_weight,
                   help="λ of the retain NLL term (default 1 for gd/ihl/npo, 0 for ga)")
    p.add_argument("--el_n", type=int, default=d.el_n, help="n of the EL_n metric")
    p.add_argument("--eval_retain", type=int, default=d.eval_retain,
                   help="retain people scored each epoch (0: all); the rest are only trained on")
    p.add_argument("--no_stop", action="store_true", help="run every epoch instead of stopping at the rule")
    p.add_argument("--seed", type=int, default=d.seed, help="batch order and adapter initialisation")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | mps")
    p.add_argument("--base_dir", default=d.base_dir, help="folder of base.pt and oracle.pt (built if missing)")
    p.add_argument("--out", default=d.out, help="run folder (default out/<loss>-<adapter>-s<seed>)")
    p.add_argument("--resume", metavar="RUN_FOLDER", help="continue a stopped run (its saved config is used)")
    a = vars(p.parse_args(argv))
    a["stop"] = not a.pop("no_stop")
    resume_from = a.pop("resume")
    try:
        state = report.load_resume(resume_from) if resume_from else None
        cfg = resolve(UnlearnConfig(**state["config"]) if state else UnlearnConfig(**a))
        report.check_writable(cfg.out)
        print(json.dumps(asdict(cfg)))
        model, results = run(cfg, resume=state)
        report.save_run(model, results)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    print(report.summary(results))
    print(f"saved to {cfg.out}/: config.json, metrics.json, timing.json, "
          f"{'model' if cfg.adapter == 'full' else 'adapter'}.pt, state.pt, plot.png")
    if results["outcome"].startswith("interrupted"):
        sys.exit(130)
    if results["outcome"].startswith("stopped"):
        sys.exit(3)


if __name__ == "__main__":
    main()
