"""Knowledge unlearning with the Inverted Hinge loss and FILA (Cha et al., ICLR 2025; METHOD.md).

    python unlearn.py --loss ihl                  # IHL + FILA-initialised LoRA: the paper's method
    python unlearn.py --loss ga --adapter lora    # the baseline it improves on

Each step: the unlearning loss on a forget batch, plus λ·NLL on a random retain batch (λ = 1 for
gd, ihl and npo, 0 for ga). Each epoch: MA and EL_n on the forget biographies and QA metrics on every
split; stop once forget MA and EL_n are both below what the starting model scores on people it never
saw (the holdout split), the stopping rule of METHOD §5. Results go to out/<run>/.
"""
import argparse
import copy
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import data
import fisher
import lora
import metrics
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
    if cfg.loss not in LOSSES or cfg.adapter not in ADAPTERS:
        raise ValueError(f"--loss must be one of {LOSSES} and --adapter one of {ADAPTERS}")
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


def add_adapters(model, cfg, forget, retain, log):
    """Full fine-tuning, or LoRA on every block's linear layers with the chosen initialisation."""
    if cfg.adapter == "full":
        return model.requires_grad_(True), {}
    lora.add_lora(model, cfg.rank, cfg.alpha)
    weights = {}
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


def run(cfg: UnlearnConfig, log=print):
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

    # The starting point: thresholds for the stopping rule, forget quality and generations "before".
    start, start_ratios = evaluate(model, scored, enc, cfg)
    holdout = metrics.split_report(model, enc, corpus.holdout, cfg.el_n, cfg.device)[0]
    thresholds = dict(ma=holdout["ma"], el=holdout[f"el{cfg.el_n}"])
    oracle_forget, oracle_ratios = metrics.split_report(oracle, enc, corpus.forget, None, cfg.device)
    questions = [corpus.forget.qa[0].question, corpus.retain.qa[0].question]
    before = [greedy_answer(model, enc, q, cfg.device) for q in questions]

    model, _ = add_adapters(model, cfg, forget, retain, log)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    log(f"{cfg.loss} + {cfg.adapter}: {sum(p.numel() for p in params):,} trainable parameters; "
        f"stop when forget MA < {thresholds['ma']:.3f} and EL{cfg.el_n} < {thresholds['el']:.3f} (holdout)")
    history = [dict(epoch=0, step=0, seconds=time.time() - t_start, loss=None, **start)]
    steps_per_epoch = math.ceil(len(forget) / cfg.batch_size)
    step, stopped, t_train = 0, None, time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        for batch in data.batches(forget, cfg.batch_size, rng):
            x, y = data.collate(batch, cfg.device)
            logits = model(x)
            if cfg.loss in ("ga", "gd"):
                loss = ga_loss(logits, y)
            elif cfg.loss == "ihl":
                loss = ihl_loss(logits, y)
            else:
                with torch.no_grad():
                    ref_logits = ref(x)
                loss = npo_loss(logits, y, ref_logits, cfg.npo_beta)
            if cfg.retain_weight:
                xr, yr = data.collate(rng.sample(retain, len(batch)), cfg.device)
                loss = loss + cfg.retain_weight * lm_loss(model(xr), yr)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
        report, ratios = evaluate(model, scored, enc, cfg)
        f = report["forget"]
        history.append(dict(epoch=epoch, step=step, seconds=time.time() - t_start, loss=loss.item(), **report))
        eta = (time.time() - t_train) / epoch * (cfg.epochs - epoch)
        log(f"epoch {epoch:2d} step {step:3d}  loss {loss.item():7.3f}  forget QA {f['qa_acc']:.0%} "
            f"MA {f['ma']:.3f} EL{cfg.el_n} {f[f'el{cfg.el_n}']:.3f}  retain QA {report['retain']['qa_acc']:.0%}"
            f"  {time.time() - t_start:.0f}s (at most {eta:.0f}s more)")
        if f["ma"] < thresholds["ma"] and f[f"el{cfg.el_n}"] < thresholds["el"]:
            stopped = stopped or epoch  # the first epoch that meets the rule
            if cfg.stop:
                break

    # Forget quality: KS test between the truth ratios and the oracle's on the forget questions.
    end = history[-1]
    utility = lambda r: metrics.model_utility([r["retain"], r["general"]])
    results = dict(
        config=asdict(cfg), thresholds=thresholds, stopped_at_epoch=stopped, steps=step,
        seconds=time.time() - t_start, trainable_params=sum(p.numel() for p in params),
        start=dict(forget_quality=metrics.ks_2samp_pvalue(start_ratios, oracle_ratios), model_utility=utility(start)),
        end=dict(forget_quality=metrics.ks_2samp_pvalue(ratios, oracle_ratios), model_utility=utility(end)),
        oracle_forget=oracle_forget,
        generations=[dict(question=q, before=b, after=greedy_answer(model, enc, q, cfg.device))
                     for q, b in zip(questions, before)],
        history=history)
    return model, results


# ----------------------------------------------------------------------------- outputs
def save_run(model, results):
    """out/<run>/: config.json, metrics.json, the adapter (or the whole model for full fine-tuning)
    and plot.png, each written atomically. The base checkpoint is only ever read."""
    cfg = results["config"]
    out = cfg["out"]
    dump = lambda obj: json.dumps(obj, indent=1).encode()
    data.atomic_write(os.path.join(out, "config.json"), dump(dict(cfg, torch=torch.__version__)))
    data.atomic_write(os.path.join(out, "metrics.json"), dump(results))
    buf = io.BytesIO()
    torch.save(model.state_dict() if cfg["adapter"] == "full" else lora.lora_state_dict(model), buf)
    data.atomic_write(os.path.join(out, "model.pt" if cfg["adapter"] == "full" else "adapter.pt"), buf.getvalue())
    data.atomic_write(os.path.join(out, "plot.png"), plot(results))


def plot(results):
    """Forget vs retain over the steps: QA accuracy, MA and EL_n with the stopping thresholds. -> PNG bytes"""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    h, n = results["history"], results["config"]["el_n"]
    steps = [r["step"] for r in h]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("qa_acc", "ma", f"el{n}"), ("QA accuracy", "MA (biographies)", f"EL{n} (biographies)")):
        for split, style in (("forget", "r-o"), ("retain", "b-o"), ("general", "g-o"), ("holdout", "k:")):
            if key in h[0][split]:
                ax.plot(steps, [r[split][key] for r in h], style, ms=3, label=split)
        thr = {"ma": results["thresholds"]["ma"], f"el{n}": results["thresholds"]["el"]}.get(key)
        if thr is not None:
            ax.axhline(thr, color="k", lw=0.8, ls="--", label="stop below (holdout at start)")
        ax.set(title=title, xlabel="step", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    c = results["config"]
    fig.suptitle(f"{c['loss']} + {c['adapter']} (rank {c['rank']}, lr {c['lr']})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def summary(results):
    """The before/after table and the generations, as text."""
    first, last, n = results["history"][0], results["history"][-1], results["config"]["el_n"]
    rows = [("forget QA accuracy", "forget", "qa_acc"), ("forget MA", "forget", "ma"),
            (f"forget EL{n}", "forget", f"el{n}"), ("forget truth ratio", "forget", "truth_ratio"),
            ("retain QA accuracy", "retain", "qa_acc"), ("retain MA", "retain", "ma"),
            ("holdout QA accuracy", "holdout", "qa_acc"), ("general QA accuracy", "general", "qa_acc")]
    lines = [f"{'':24s}{'before':>10s}{'after':>10s}"]
    lines += [f"{label:24s}{first[s][k]:10.3f}{last[s][k]:10.3f}" for label, s, k in rows]
    for k in ("forget_quality", "model_utility"):
        lines.append(f"{k.replace('_', ' '):24s}{results['start'][k]:10.3g}{results['end'][k]:10.3g}")
    stop = results["stopped_at_epoch"]
    lines.append(f"stopping rule: {'met at epoch ' + str(stop) if stop else 'not met'}; "
                 f"{results['steps']} steps, {results['seconds']:.0f}s")
    for g in results["generations"]:
        lines.append(f"Q: {g['question']}\n   before: {g['before']}\n   after:  {g['after']}")
    return "\n".join(lines)


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
    a = vars(p.parse_args(argv))
    a["stop"] = not a.pop("no_stop")
    try:
        cfg = resolve(UnlearnConfig(**a))
        print(json.dumps(asdict(cfg)))
        model, results = run(cfg)
        save_run(model, results)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    print(summary(results))
    print(f"saved config.json, metrics.json, {'model' if cfg.adapter == 'full' else 'adapter'}.pt and plot.png "
          f"in {cfg.out}")


if __name__ == "__main__":
    main()
