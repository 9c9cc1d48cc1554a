"""Knowledge unlearning with the Inverted Hinge loss and FILA (Cha et al., ICLR 2025; METHOD.md).

    python unlearn.py --loss ihl                  # IHL + FILA-initialised LoRA: the paper's method
    python unlearn.py --loss ga --adapter lora    # the baseline it improves on
    python unlearn.py --init_from gpt2 --forget_file f.txt --retain_file r.txt --holdout_file h.txt

Each step: the unlearning loss on a forget batch, plus λ·NLL on a random retain batch (λ = 1 for
gd, ihl and npo, 0 for ga). Every epoch (or --eval_every steps): QA metrics, fluency and privacy
leakage on every split, MA (and EL_n where the rule needs it) on the forget biographies; stop once
forget MA, EL_n and QA accuracy are all below what the starting model scores on people it never saw,
with a margin for sampling noise (the stopping rule, METHOD §5.3). Results go to out/<run>/.
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

import data
import ddp
import fisher
import lora
import metrics
import report
import runtime
import tasks
from model import IGNORE, at_least_float32, lm_loss, token_nll


# ----------------------------------------------------------------------------- losses (METHOD §1)
# logits (B, T, V) and targets (B, T) are aligned: logits[:, t] predicts targets[:, t]; IGNORE skipped.
def ga_loss(logits, targets):
    """Gradient ascent: L = −NLL = mean_t log p(y_t). Unbounded below, hence unstable."""
    return -lm_loss(logits, targets)


def ihl_loss(logits, targets):
    """Inverted Hinge: L = mean_t max(0, 1 + p(y_t) − max_{v≠y_t} p(v)), in [0, 2]. It lowers the
    true token, lifts its strongest rival, and stops pushing once the true token is no longer on top."""
    mask = targets != IGNORE
    p = at_least_float32(logits[mask]).softmax(-1)     # (N, V) over the target positions
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


def opt(default, help):
    """A config field with its --help text: main() turns every field into a command-line flag."""
    return field(default=default, metadata={"help": help})


@dataclass
class UnlearnConfig:
    loss: str = opt("ihl", "ga | gd | ihl | npo (gd is ga with the retain term)")
    adapter: str = opt("fila", "fila | pissa | lora (default init) | full (no adapters)")
    rank: int = opt(4, "LoRA rank r")
    alpha: float = opt(None, "LoRA alpha (default 2 * rank, so s = 2, as the authors)")
    lr: float = opt(2e-3, "AdamW learning rate (1e-3 to 1e-2 tried: higher makes retain swing)")
    epochs: int = opt(10, "most passes over the forget set; the stopping rule may end sooner")
    batch_size: int = opt(8, "forget sequences per step (and as many retain sequences)")
    retain_weight: float = opt(None, "λ of the retain NLL term (default 1 for gd/ihl/npo, 0 for ga)")
    el_n: int = opt(4, "n of EL_n (the biographies are ~45 tokens, so 4 rather than the paper's 10)")
    eval_retain: int = opt(40, "retain people (or sequences) scored at each evaluation; 0: all")
    npo_beta: float = opt(0.1, "β of NPO")
    eval_every: int = opt(None, "evaluate every N steps (default: at the end of every epoch)")
    no_stop: bool = opt(False, "run every epoch instead of stopping at the rule")
    seed: int = opt(0, "batch order and adapter initialisation")
    corpus_seed: int = opt(0, "the built-in world: which invented people exist (0 is the one settings were chosen on)")
    device: str = opt("auto", "auto (cuda, then mps, then cpu) | cpu | cuda | mps")
    base_dir: str = opt("out", "folder of the worlds: <base_dir>/world<corpus_seed>/base.pt and oracle.pt (trained there if missing)")
    out: str = opt(None, "run folder (default out/<loss>-<adapter>-s<seed>)")
    init_from: str = opt(None, "a Hugging Face GPT-2 folder (config.json, model.safetensors, vocab.json) or name")
    forget_file: str = opt(None, "your forget set: text, one sequence per line, or .jsonl (text, or prompt+answer)")
    retain_file: str = opt(None, "your retain set, same formats")
    holdout_file: str = opt(None, "unseen text of the same kind: the thresholds of the stopping rule")
    save_merged: bool = opt(False, "also save the merged model as a Hugging Face GPT-2 folder, out/<run>/hf")
    compile: bool = opt(False, "torch.compile the model (worth it on a GPU; slow to start)")


def resolve(cfg):
    cfg = copy.copy(cfg)
    for flag, allowed in (("loss", LOSSES), ("adapter", ADAPTERS)):
        if getattr(cfg, flag) not in allowed:
            raise ValueError(f"--{flag} {getattr(cfg, flag)!r} is not one of {', '.join(allowed)}")
    if cfg.init_from and not cfg.forget_file:
        raise ValueError("--init_from needs --forget_file (the built-in corpus goes with the built-in model)")
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


def add_adapters(model, cfg, forget, retain, log, saved=None):
    """Full fine-tuning, or LoRA on every block's linear layers initialised as cfg.adapter says;
    resuming, the saved weights instead (residual inits are re-applied from them, see lora.py)."""
    if cfg.adapter == "full":
        if saved is not None:
            model.load_state_dict(saved)
        return model.requires_grad_(True)
    smallest = min(min(m.weight.shape) for name, m in model.named_modules() if name.endswith(
        tuple(lora.TARGETS.values())))
    if cfg.rank > smallest:
        raise ValueError(f"--rank {cfg.rank} exceeds the smallest adapted layer dimension; use --rank <= {smallest}")
    lora.add_lora(model, cfg.rank, cfg.alpha)
    if saved is not None:
        lora.load_lora_state_dict(model, saved)
    elif cfg.adapter == "fila":  # Fisher on forget and on retain, batches of 4 as the authors (METHOD §3)
        if not retain:
            raise ValueError("--adapter fila needs retain data for the retain Fisher: give --retain_file")
        t0 = time.time()
        mine = lambda examples: list(data.batches(examples, 4))[ddp.rank()::ddp.world()]  # this rank's batches
        f_forget = fisher.fisher_diagonal(model, mine(forget), cfg.device, ddp.all_reduce_sum)
        f_retain = fisher.fisher_diagonal(model, mine(retain), cfg.device, ddp.all_reduce_sum)
        log(f"Fisher on {len(forget)} forget and {len(retain)} retain sequences: {time.time() - t0:.1f}s")
        fisher.init_adapters(model, "fila", f_forget, f_retain)
    elif cfg.adapter == "pissa":
        fisher.init_adapters(model, "pissa")
    return model


def summary_scores(scores, ratios, task):
    """Adds forget quality (KS test of the forget questions' truth ratios against the oracle's) and
    model utility (retain-side harmonic mean) to an evaluation's scores."""
    ok = ratios is not None and task.oracle_ratios is not None
    return dict(scores, forget_quality=metrics.ks_2samp_pvalue(ratios, task.oracle_ratios) if ok else None,
                model_utility=metrics.model_utility([scores[s] for s in task.utility_splits]) if task.utility_splits else None)


def evaluate(model, task, cfg, thr=None, final=False):
    """Every scored split's report, with forget quality and model utility. On the forget split also:
    EL_n (the costly one) when the stopping rule needs it, i.e. once forget MA and QA accuracy are
    below their thresholds (before that the rule cannot be met), and at the start and the end; fluency
    of the model's own
    answers (judged by the oracle); the membership-inference AUC of forget vs holdout biographies and
    the privacy leakage relative to the oracle's."""
    out = {s: metrics.split_report(model, e, None, cfg.device, forget_like=s == "forget") for s, e in task.scored.items()}
    scores = {s: r for s, (r, _) in out.items()}
    f, forget = scores["forget"], task.scored["forget"]
    if "ma" in f and (thr is None or final or (f["ma"] < thr["ma"] and f.get("qa_acc", 0) < thr.get("qa", 2))):
        el = metrics.mean_extraction_likelihood(model, forget.texts, cfg.el_n, cfg.device)
        if el is not None:
            f[f"el{cfg.el_n}"] = el
    if task.oracle is not None and forget.qa:
        prompts = [p for p, _ in forget.qa]
        f["fluency"], f["fluency_sd"] = metrics.fluency(task.oracle, prompts, metrics.greedy_answers(
            model, prompts, task.enc.eot_token, device=cfg.device), cfg.device)
    if task.holdout and task.holdout.texts and forget.texts:
        f["mia_auc"] = metrics.mia_auc(metrics.text_nll(model, forget.texts, device=cfg.device),
                                       metrics.text_nll(model, task.holdout.texts, device=cfg.device))
        if task.oracle_forget and "mia_auc" in task.oracle_forget:
            f["privacy_leakage"] = metrics.privacy_leakage(f["mia_auc"], task.oracle_forget["mia_auc"])
    return summary_scores(scores, out["forget"][1], task)


def measure_start(model, task, cfg):
    """The starting point: its scores, the stopping rule's thresholds (from unseen data), the holdout
    people's scores (what a model that never saw them knows) and the answers "before"."""
    start = evaluate(model, task, cfg)
    return start, dict(thresholds=stopping_thresholds(model, task, cfg),
                       holdout=metrics.split_report(model, task.holdout, None, cfg.device, forget_like=True)[0]
                       if task.holdout else None,
                       before=[greedy_answer(model, task.enc, p, cfg.device) for p in task.prompts])


def stopping_thresholds(model, task, cfg):
    """Jang et al.'s rule: stop once the forget set's mean MA and EL_n are both below what the starting
    model scores on unseen texts of the same kind, allowing for sampling noise (metrics.stopping_thresholds);
    with questions, forget QA accuracy too: the biographies can look unseen while the answers are
    still known. None without holdout texts long enough for EL_n, or without forget texts."""
    texts = task.holdout.texts if task.holdout else []
    el = [v for v in metrics.extraction_likelihood(model, texts, cfg.el_n, cfg.device) if v is not None]
    if len(el) < 2 or not task.scored["forget"].texts:
        return None
    ma = metrics.memorization_accuracy(model, texts, device=cfg.device)
    hits = metrics.exact_matches(model, task.holdout.qa, cfg.device) if task.holdout.qa else None
    return metrics.stopping_thresholds(ma, el, len(task.scored["forget"].texts), hits, len(task.scored["forget"].qa))


def rule_met(f, thr, el_key):
    """Forget MA and EL_n below their thresholds, and forget QA accuracy too where there are questions."""
    return bool(thr) and "ma" in f and el_key in f and f["ma"] < thr["ma"] and f[el_key] < thr["el"] and \
        ("qa" not in thr or f["qa_acc"] < thr["qa"])


def greedy_answer(model, enc, prompt, device):
    """The model's greedy answer to a token prompt as text (metrics.greedy_answers, without the
    <|endoftext|>). The embedding is padded past the tokenizer's last id; an unlearned model may pick
    such an id (it was never trained): it is shown as "<?>"."""
    out = metrics.greedy_answers(model, [prompt], enc.eot_token, device=device)[0]
    out = out[:-1] if out and out[-1] == enc.eot_token else out
    text, run = [], []
    for t in out + [None]:  # decode each stretch of real ids at once (a character can span tokens)
        if t is not None and t < enc.n_vocab:
            run.append(t)
            continue
        text += [enc.decode(run)] + (["<?>"] if t is not None else [])
        run = []
    return "".join(text).strip()


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


def run(cfg: UnlearnConfig, log=print, resume=None):
    """Unlearn; returns (model, results). `resume`: a state saved in a run folder's state.pt.
    The paper's algorithm, in order: measure the start -> Fisher -> FILA -> for each forget batch,
    the unlearning loss + λ·retain NLL -> evaluate -> stop at the rule (runtime.py does the rest)."""
    cfg = resolve(cfg)
    log = log if ddp.rank() == 0 else (lambda line: None)
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    t_start = time.time()
    task = tasks.build(cfg, log)
    model, enc, forget, retain = task.model, task.enc, task.forget, task.retain
    ref = copy.deepcopy(model).requires_grad_(False) if cfg.loss == "npo" else None

    # 1. The starting point: scores, the stopping rule's thresholds, answers "before" (cached per world).
    if resume is None:
        start, fixed = task.cached(f"start-el{cfg.el_n}-retain{cfg.eval_retain}-{cfg.device.split(':')[0]}",
                                   lambda: measure_start(model, task, cfg))
        pos = runtime.Progress.new(start)
    else:
        fixed, pos = resume["fixed"], resume["pos"]
        rng.setstate(resume["rng"])
        log(f"resuming at epoch {pos['epoch']}, step {pos['step']}")
    progress = runtime.Progress(cfg, len(forget), rng, pos)  # moves `pos` forward as the run goes
    thr, el_key = fixed["thresholds"], f"el{cfg.el_n}"

    # 2. Fisher on forget and retain -> FILA-initialised adapters (or LoRA, PiSSA, full fine-tuning).
    model = add_adapters(model, cfg, forget, retain, log, resume and resume["weights"])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
    fwd = ddp.wrap(torch.compile(model) if cfg.compile else model, params)  # same parameters
    unlearning_term = lambda m, x, y: forget_loss(m, ref, x, y, cfg)
    if ddp.world() > 1:
        log(f"data parallel over {ddp.world()} processes: each takes 1/{ddp.world()} of every batch")
    rule_text = "no stopping rule (it needs forget texts, and holdout texts long enough for EL_n)"
    if thr:
        rule_text = f"stop when forget MA < {thr['ma']:.3f}, EL{cfg.el_n} < {thr['el']:.3f}"
        rule_text += (f", QA < {thr['qa']:.3f}" if "qa" in thr else "") + " (from unseen people)"
    log(f"{cfg.loss} + {cfg.adapter}: {sum(p.numel() for p in params):,} trainable parameters; {rule_text}")

    def save_state():  # everything needed to continue exactly where the run is (rank 0 writes)
        if ddp.rank() == 0:
            report.save_state(cfg.out, dict(config=asdict(cfg), fixed=fixed, pos=pos, rng=rng.getstate(),
                                             weights=report.trainable_state(model, cfg.adapter),
                                             optimizer=optimizer.state_dict()))

    outcome, step_seconds, eval_seconds = "finished", 0.0, []

    def evaluate_and_record(final=False):  # -> whether the stopping rule is met now
        scores = evaluate(model, task, cfg, thr, final)
        met = rule_met(scores["forget"], thr, el_key)
        progress.record(scores, met)
        eval_seconds.append(time.time() - t_start)
        return met, scores

    # 3. Unlearn: each step pairs a forget batch with a random retain batch; evaluate; stop at the rule.
    os.makedirs(cfg.out, exist_ok=True)
    with runtime.ctrl_c_finishes_the_step(log) as interrupted:
        for batch, paired in progress.batches(forget, retain):
            t_step = time.perf_counter()
            loss, bad = runtime.train_step(fwd, unlearning_term, optimizer, params, batch, paired, cfg)
            step_seconds += time.perf_counter() - t_step
            if bad:
                outcome = f"stopped: non-finite {bad} at step {pos['step'] + 1}; the weights are those of " \
                          f"step {pos['step']} (that update was not applied)"
                break
            progress.advance(loss)
            if ddp.any_rank(interrupted):
                outcome = f"interrupted at step {pos['step']}; continue with --resume {cfg.out}"
                break
            if progress.evaluation_due():
                met, scores = evaluate_and_record(final=pos["step"] == progress.total_steps)
                left = progress.seconds_left()
                log(f"epoch {progress.epochs_done():2g} step {pos['step']:3d}  loss {loss:7.3f}  {report.brief(scores, el_key)}"
                    f"  {time.time() - t_start:.0f}s" + ("" if left is None else f" (at most {left:.0f}s more)"))
                save_state()
                if met and not cfg.no_stop:
                    break
    if outcome != "finished":
        log(outcome)
        save_state()
        last = pos["history"][-1]
        if last["step"] != pos["step"] or el_key not in last["forget"]:  # score where the run stopped, in full
            evaluate_and_record(final=True)

    first, end = pos["history"][0], pos["history"][-1]
    first_met = pos["rule_met"]  # the first evaluation that met the rule, with every metric there
    at_rule = first_met and next(h for h in pos["history"] if h["step"] == first_met["step"])
    results = dict(
        config=asdict(cfg), outcome=outcome, thresholds=thr, stopped_at_epoch=first_met and first_met["epoch"],
        steps=pos["step"],
        rule_met=at_rule, trainable_params=sum(p.numel() for p in params), oracle_forget=task.oracle_forget,
        holdout_start=fixed["holdout"],
        start=dict(forget_quality=first["forget_quality"], model_utility=first["model_utility"]),
        end=dict(forget_quality=end["forget_quality"], model_utility=end["model_utility"]),
        generations=[dict(prompt=enc.decode(p), before=b, after=greedy_answer(model, enc, p, cfg.device))
                     for p, b in zip(task.prompts, fixed["before"])],
        history=pos["history"], seconds=time.time() - t_start,
        eval_seconds=eval_seconds, step_seconds=step_seconds)
    return model, results


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
        state = report.load_resume(resume_from) if resume_from else None
        cfg = resolve(UnlearnConfig(**state["config"]) if state else UnlearnConfig(**a))
        cfg.device = ddp.setup(cfg.device)
        main_rank = ddp.rank() == 0
        if main_rank:
            report.check_writable(cfg.out)
            print(json.dumps(asdict(cfg)))
        model, results = run(cfg, resume=state)
        if main_rank:
            report.save_run(model, results)
            if cfg.save_merged:
                report.save_merged(model, os.path.join(cfg.out, "hf"))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        sys.exit(f"error: {e}")
    finally:
        ddp.finish()
    if main_rank:
        print(report.summary(results))
        print(f"saved to {cfg.out}/: config.json, metrics.json, timing.json, "
              f"{'model' if cfg.adapter == 'full' else 'adapter'}.pt, state.pt, plot.png" +
              (", hf/ (the merged model)" if cfg.save_merged else ""))
    if results["outcome"].startswith("interrupted"):
        sys.exit(130)
    if results["outcome"].startswith("stopped"):
        sys.exit(3)


if __name__ == "__main__":
    main()
