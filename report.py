"""What an unlearning run leaves behind (out/<run>/) and what it prints.

  config.json   the resolved configuration, the seed and the library versions
  metrics.json  every epoch's metrics on every split, forget quality, model utility, generations;
                no wall-clock times, so two runs with the same seed give identical bytes
  timing.json   the wall-clock times (total, at each evaluation, and in training steps alone)
  adapter.pt    the LoRA weights only (model.pt, the whole model, for full fine-tuning)
  state.pt      everything --resume needs (written at every evaluation): weights, optimizer, position, history
  plot.png      forget vs retain over the steps
Every file is written to a temporary name and renamed (data.atomic_write): a killed run leaves each
file either complete or absent, never half-written.
"""
import copy
import glob
import io
import json
import os
import pickle
import platform
import zipfile
from dataclasses import asdict, replace

import numpy as np
import tiktoken
import torch

import data
import hf
import lora
import tasks
import train
from data import UserError

TIMING_KEYS = ("seconds", "eval_seconds", "step_seconds")  # to timing.json, not metrics.json


def trainable_state(model, adapter):
    return model.state_dict() if adapter == "full" else lora.lora_state_dict(model)


def torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def json_bytes(obj):
    return json.dumps(obj, indent=1).encode()


def save_state(cfg, fixed, state, model, optimizer):
    """state.pt: everything --resume needs to continue exactly where the run is (unlearn.run)."""
    data.atomic_write(os.path.join(cfg.out, "state.pt"), torch_bytes(dict(
        config=asdict(cfg), fixed=fixed, state=state, optimizer=optimizer.state_dict(),
        weights=trainable_state(model, cfg.adapter))))


def check_writable(folder):
    """Fail early, with the flag's name, if --out cannot be written; drop temporary files that a
    killed run may have left (they never carry a real file's name)."""
    try:
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, "*.tmp[0-9]*")):
            os.remove(stale)
        probe = os.path.join(folder, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise UserError(f"cannot write to --out {folder} ({e.strerror}); choose another folder with --out") from None


def load_resume(folder):
    path = os.path.join(folder, "state.pt")
    if not os.path.exists(path):
        raise UserError(f"--resume {folder}: no state.pt there (it is written at every evaluation)")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        raise UserError(f"--resume {folder}: state.pt is unreadable ({type(e).__name__})") from None
    if not isinstance(saved, dict) or {"config", "fixed", "state", "optimizer", "weights"} - set(saved):
        raise UserError(f"--resume {folder}: state.pt is from another version of unlearn.py; start the run again")
    return saved


def save_run(model, results):
    cfg = results["config"]
    out = cfg["out"]
    versions = dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
                    tiktoken=tiktoken.__version__)
    data.atomic_write(os.path.join(out, "config.json"), json_bytes(dict(cfg, versions=versions)))
    data.atomic_write(os.path.join(out, "metrics.json"),
                      json_bytes({k: v for k, v in results.items() if k not in TIMING_KEYS}))
    data.atomic_write(os.path.join(out, "timing.json"), json_bytes({k: results[k] for k in TIMING_KEYS}))
    name = "model.pt" if cfg["adapter"] == "full" else "adapter.pt"
    data.atomic_write(os.path.join(out, name), torch_bytes(trainable_state(model, cfg["adapter"])))
    data.atomic_write(os.path.join(out, "plot.png"), plot(results))


def load_run(folder, device="cpu", log=print):
    """A run folder written by unlearn.py -> (its config, the starting model, the unlearned model with
    its adapters merged, the oracle or None (runs on your own files have none), the tokenizer)."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{folder} is not a run folder of unlearn.py: it has no config.json")
    try:
        cfg = json.load(open(path))
        weights = os.path.join(folder, "model.pt" if cfg["adapter"] == "full" else "adapter.pt")
        cfg["rank"], cfg["alpha"], cfg["base_dir"], cfg["corpus_seed"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{folder}/config.json was not written by unlearn.py") from None
    if not os.path.exists(weights):
        raise UserError(f"{folder} has no {os.path.basename(weights)}: the run did not finish saving")
    oracle = None
    if cfg.get("init_from"):
        base = hf.load(cfg["init_from"]).to(device)
        enc = data.get_tokenizer("gpt2", base.hf_folder)
    else:
        world = tasks.world_dir(cfg["base_dir"], cfg["corpus_seed"])
        base, oracle, ckpt = tasks.load_base_and_oracle(world, device, log, replace(train.TrainConfig(), corpus_seed=cfg["corpus_seed"]))
        enc = data.get_tokenizer(ckpt["tokenizer"])
        oracle = None if cfg.get("forget_file") else oracle
        cfg["world"] = ckpt["corpus"]  # the world's corpus.make_corpus arguments
    unlearned = copy.deepcopy(base)
    saved = torch.load(weights, map_location=device, weights_only=True)
    if cfg["adapter"] == "full":
        unlearned.load_state_dict(saved)
    else:
        lora.add_lora(unlearned, cfg["rank"], cfg["alpha"])
        lora.load_lora_state_dict(unlearned, saved)
        unlearned = lora.merged_copy(unlearned)
    return cfg, base, unlearned, oracle, enc


def save_merged(model, folder):
    """The unlearned model, adapters merged in, as a Hugging Face GPT-2 folder: the config it was
    loaded from (if any) and model.safetensors; the tokenizer files are copied along when known."""
    src = getattr(model, "hf_folder", None)
    for name, blob in hf.files(lora.merged_copy(model), getattr(model, "hf_config", None)).items():
        data.atomic_write(os.path.join(folder, name), blob)
    for name in ("vocab.json", "merges.txt"):
        if src and os.path.exists(os.path.join(src, name)):
            data.atomic_write(os.path.join(folder, name), open(os.path.join(src, name), "rb").read())


def plot(results):
    """Forget vs retain over the steps: QA accuracy, MA and EL_n with the stopping thresholds. -> PNG bytes"""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    h, n = results["history"], results["config"]["el_n"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("qa_acc", "ma", f"el{n}"),
                              ("QA accuracy", "MA (biographies)", f"EL{n} (biographies)")):
        for split, style in (("forget", "r-o"), ("retain", "b-o"), ("general", "g-o"), ("holdout", "k:")):
            points = [(r["step"], r[split][key]) for r in h if r.get(split, {}).get(key) is not None]
            if points:  # EL_n is measured only where the rule needs it (evaluation.evaluate)
                ax.plot(*zip(*points), style, ms=3, label=split)
        t = results["thresholds"]
        thr = t and {"ma": t["ma"], f"el{n}": t["el"]}.get(key)
        if thr is not None:
            ax.axhline(thr, color="k", lw=0.8, ls="--", label="stop below (from unseen people)")
        ax.set(title=title, xlabel="step", ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    c = results["config"]
    fig.suptitle(f"{c['loss']} + {c['adapter']} (rank {c['rank']}, lr {c['lr']})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})  # no version stamp: same bytes
    plt.close(fig)
    return buf.getvalue()


def progress(h, el, seconds, left=None):
    """The line an evaluation prints: where the run is (h, its history entry), the loss and brief()."""
    return f"epoch {h['epoch']:2g} step {h['step']:3d}  loss {h['loss']:7.3f}  {brief(h, el)}  {seconds:.0f}s" + \
        ("" if left is None else f" (~{left:.0f}s more to the cap, at this pace)")


def brief(scores, el):
    """One evaluation in a few numbers: forget QA, well-formed answers, MA, EL_n; retain, general and
    pretraining-people QA; fluency."""
    f = scores["forget"]
    parts = [f"forget QA {f['qa_acc']:.0%}"] if "qa_acc" in f else []
    parts += [f"({f['answers_well_formed']:.0%} well-formed)"] if "answers_well_formed" in f else []
    parts += [f"MA {f['ma']:.3f}"] if "ma" in f else []
    parts += [f"EL{el[2:]} {f[el]:.3f}" if el in f else f"EL{el[2:]} –"] if "ma" in f else []
    for split in ("retain", "general", "pretraining"):
        r = scores.get(split, {})
        parts += [f"{split} QA {r['qa_acc']:.0%}" if "qa_acc" in r else f"{split} MA {r['ma']:.3f}"] if r else []
    parts += [f"fluency {f['fluency']:.2f}"] if "fluency" in f else []
    return "  ".join(parts)


WELL_FORMED = 0.9  # the share of forget answers that must still be well-formed (one answer of the asked kind)


def checks(results, at=None):
    """The default run's goals, each (what, met, the numbers), read at history entry `at` (default:
    the last): the stopping rule met; forget QA (the fact stated, in any wording) within 10 points of
    the holdout people's, i.e. of a model that never saw them; retain, general and pretraining-people
    QA at >= 95% of their start; the forget answers as fluent as the starting model's (mean NLL under
    the oracle within one standard deviation of the start's) and >= 90% of them well-formed."""
    first, hold = results["history"][0], results.get("holdout_start") or {}
    last = at or results["history"][-1]
    out = [("stopping rule met", results["rule_met"] is not None,
            f"at step {results['rule_met']['step']}" if results["rule_met"] else "not met")]
    f0, f1 = first["forget"], last["forget"]
    if "qa_acc" in f1 and "qa_acc" in hold:
        out.append(("forget QA near the holdout level", f1["qa_acc"] <= hold["qa_acc"] + 0.10,
                    f"{f1['qa_acc']:.2f} vs holdout {hold['qa_acc']:.2f} + 0.10"))
    for split in ("retain", "general", "pretraining"):
        if "qa_acc" in last.get(split, {}):
            a, b = first[split]["qa_acc"], last[split]["qa_acc"]
            out.append((f"{split} QA kept", b >= 0.95 * a, f"{b:.2f} vs 95% of {a:.2f}"))
    if "fluency" in f1:
        bound, wf = f0["fluency"] + f0["fluency_sd"], f1.get("answers_well_formed")
        ok = f1["fluency"] <= bound and (wf is None or wf >= WELL_FORMED)
        out.append(("fluent forget answers", ok, f"NLL {f1['fluency']:.2f} vs {bound:.2f}" +
                    ("" if wf is None else f", {wf:.0%} well-formed vs {WELL_FORMED:.0%}")))
    return out


def overshoot(results, at=None):
    """Where a run stopped (or `at`), the forget metrics that are below the oracle's by more than the
    stopping rule's noise margin: the forget people now look *less* known than people never seen,
    which sets them apart as much as remembering them does (MUSE calls it over-unlearning).
    -> [(metric, value, the oracle's, margin)]"""
    f, o, t = (at or results["history"][-1])["forget"], results.get("oracle_forget") or {}, results["thresholds"] or {}
    el = f"el{results['config']['el_n']}"
    return [(name, f[k], o[k], t[m + "_margin"]) for name, k, m in (("MA", "ma", "ma"), (el.upper(), el, "el"))
            if k in f and k in o and m + "_margin" in t and f[k] < o[k] - t[m + "_margin"]]


def summary(results):
    """The before/after table (and the oracle, exact unlearning, beside it), the stopping rule, the
    goals, and the generations, as text."""
    first, last, n = results["history"][0], results["history"][-1], results["config"]["el_n"]
    oracle = results.get("oracle_forget") or {}
    names = {"qa_acc": "QA accuracy", "qa_acc_verbatim": "QA, verbatim", "answers_well_formed": "well-formed",
             "ma": "MA", f"el{n}": f"EL{n}", "truth_ratio": "truth ratio", "fluency": "fluency (NLL)",
             "privacy_leakage": "privacy leakage"}
    lines = [f"{'':30s}{'before':>10s}{'after':>10s}{'oracle':>10s}"]
    for split in ("forget", "retain", "general", "pretraining"):
        for key, label in names.items():
            if first.get(split, {}).get(key) is not None:
                o = 0.0 if key == "privacy_leakage" else oracle.get(key) if split == "forget" else None
                after = last[split].get(key)
                lines.append(f"{split + ' ' + label:30s}{first[split][key]:10.3f}" +
                             (f"{after:10.3f}" if after is not None else f"{'–':>10s}") + ("" if o is None else f"{o:10.3f}"))
    for k in ("forget_quality", "model_utility"):
        if results["end"][k] is not None:
            lines.append(f"{k.replace('_', ' '):30s}{results['start'][k]:10.3g}{results['end'][k]:10.3g}")
    if (results.get("holdout_start") or {}).get("qa_acc") is not None:
        lines.append(f"{'holdout QA (never seen)':30s}{results['holdout_start']['qa_acc']:10.3f}")
    met, thr = results["rule_met"], results["thresholds"]
    rule = f"met at step {met['step']} (epoch {met['epoch']})" if met else "not met"
    if thr:
        rule += f"; thresholds MA {thr['ma']:.3f}, EL{n} {thr['el']:.3f}" + (f", QA {thr['qa']:.3f}" if "qa" in thr else "")
    lines.append(f"stopping rule: {rule}; {results['outcome']}; {results['steps']} steps, {results['seconds']:.0f}s")
    if over := overshoot(results):
        lines.append("overshot: forget " + ", ".join(f"{m} {v:.3f} vs the oracle's {o:.3f}" for m, v, o, _ in over) +
                     " (more below it than the rule's margin for noise): the forget people now stand out as less "
                     "known than people never seen")
    if results["config"].get("forget_file") is None:
        c = checks(results)
        lines.append(f"goals: {sum(ok for _, ok, _ in c)} of {len(c)} met: " +
                     "; ".join(f"{what} {'yes' if ok else 'NO'} ({detail})" for what, ok, detail in c))
    for g in results["generations"]:
        lines.append(f"{g['whose']}: {g['prompt']!r}\n   before: {g['before']}\n   after:  {g['after']}")
    return "\n".join(lines)
