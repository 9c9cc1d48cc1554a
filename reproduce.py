"""Reproduce the paper's four claims (METHOD §6) at small scale, on the built-in corpus:

    python reproduce.py                 # GA, GD, IHL × full, LoRA, PiSSA, FILA × seeds 0, 1, 2

Every run ends at the stopping rule or at the epoch cap. Writes results/grid.md (the table, mean ±
std over seeds), results/grid.png (forget quality vs model utility; forget/retain curves) and
results/grid.json (every run). Learning rates: 2e-3 for the LoRA adapters (unlearn.py's default),
3e-4 for full fine-tuning, which at 2e-3 destroys the model within two epochs whatever the loss.
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np

import data
import unlearn

LOSSES, ADAPTERS = ("ga", "gd", "ihl"), ("full", "lora", "pissa", "fila")
LR = {"full": 3e-4, "lora": 2e-3, "pissa": 2e-3, "fila": 2e-3}
COLUMNS = [  # (key, header, format)
    ("steps_to_stop", "steps to stop", "{:.0f}"), ("forget_qa", "forget QA", "{:.2f}"), ("forget_ma", "forget MA", "{:.2f}"),
    ("forget_el", "forget EL4", "{:.2f}"), ("forget_quality", "forget quality (log10)", "{:.1f}"),
    ("retain_qa", "retain QA", "{:.2f}"), ("general_qa", "general QA", "{:.2f}"), ("model_utility", "model utility", "{:.2f}"),
    ("trainable", "trainable params", "{:,.0f}"), ("ms_per_step", "ms / step", "{:.0f}"), ("peak_mb", "peak MiB", "{:.0f}")]


def peak_mib():
    """This process's peak resident memory (VmHWM), MiB; None where /proc is not Linux's."""
    try:
        return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return None


def reset_peak_mib():
    """Reset the peak to the current resident memory (Linux: write 5 to /proc/self/clear_refs); returns it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return peak_mib()


def one_run(loss, adapter, seed, epochs, out):
    before = reset_peak_mib()
    cfg = unlearn.UnlearnConfig(loss=loss, adapter=adapter, lr=LR[adapter], seed=seed, epochs=epochs, out=out)
    _, r = unlearn.run(cfg, log=lambda line: None)
    peak = peak_mib()
    end, fq = r["history"][-1], r["end"]["forget_quality"]
    return dict(loss=loss, adapter=adapter, seed=seed, stopped_at_epoch=r["stopped_at_epoch"],
                steps_to_stop=r["steps"] if r["stopped_at_epoch"] else None, forget_qa=end["forget"]["qa_acc"],
                forget_ma=end["forget"]["ma"], forget_el=end["forget"]["el4"], forget_quality=np.log10(max(fq, 1e-300)),
                retain_qa=end["retain"]["qa_acc"], general_qa=end["general"]["qa_acc"],
                model_utility=r["end"]["model_utility"], trainable=r["trainable_params"],
                ms_per_step=1000 * r["step_seconds"] / max(r["steps"], 1), seconds=r["seconds"],
                peak_mb=None if before is None else peak - before,
                curves=[(h["step"], h["forget"]["qa_acc"], h["retain"]["qa_acc"]) for h in r["history"]])


def table(rows, seeds):
    head = "| loss | adapter | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for loss in LOSSES:
        for adapter in ADAPTERS:
            runs = [r for r in rows if r["loss"] == loss and r["adapter"] == adapter]
            cells = []
            for key, _, fmt in COLUMNS:
                vals = [r[key] for r in runs if r[key] is not None]
                if key == "steps_to_stop":  # runs that never met the rule are counted, not averaged
                    cell = f"{fmt.format(np.mean(vals))} ({len(vals)}/{len(runs)})" if vals else f"– (0/{len(runs)})"
                elif not vals:
                    cell = "–"
                else:
                    cell = fmt.format(np.mean(vals)) + ("" if key == "trainable" else " ± " + fmt.format(np.std(vals)))
                cells.append(cell)
            lines.append(f"| {loss.upper()} | {adapter} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nMean ± std over seeds {', '.join(map(str, seeds))}; " \
        "steps to stop: mean over the runs that met the stopping rule (how many of them in brackets)."


def figure(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = dict(ga="tab:red", gd="tab:orange", ihl="tab:blue")
    marks = dict(full="s", lora="o", pissa="^", fila="*")
    for loss in LOSSES:
        for adapter in ADAPTERS:
            runs = [r for r in rows if r["loss"] == loss and r["adapter"] == adapter]
            x, y = [r["forget_quality"] for r in runs], [r["model_utility"] for r in runs]
            axes[0].errorbar(np.mean(x), np.mean(y), xerr=np.std(x), yerr=np.std(y), marker=marks[adapter], ms=9,
                             color=colors[loss], label=f"{loss.upper()} + {adapter}", ls="none", capsize=2)
    axes[0].set(xlabel="forget quality, log10 p (higher: closer to the oracle)", ylabel="model utility",
                title="the trade-off (mean ± std over seeds)")
    axes[0].legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    for ax, pairs, title in ((axes[1], [("ga", "lora"), ("ihl", "lora")], "GA vs IHL (LoRA)"),
                             (axes[2], [("ihl", "lora"), ("ihl", "fila")], "LoRA vs FILA (IHL)")):
        for loss, adapter in pairs:
            for r in rows:
                if r["loss"] == loss and r["adapter"] == adapter:
                    steps, f, ret = zip(*r["curves"])
                    first = r["seed"] == rows[0]["seed"]
                    ax.plot(steps, f, "-", color=colors[loss] if adapter == "lora" else "tab:green", alpha=0.6,
                            label=f"{loss.upper()}+{adapter} forget" if first else None)
                    ax.plot(steps, ret, "--", color=colors[loss] if adapter == "lora" else "tab:green", alpha=0.6,
                            label=f"{loss.upper()}+{adapter} retain" if first else None)
        ax.set(title=title + ": QA accuracy, every seed", xlabel="step", ylim=(-0.03, 1.03))
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="unlearning seeds")
    p.add_argument("--epochs", type=int, default=10, help="epoch cap of every run")
    p.add_argument("--out", default="results", help="folder for grid.md, grid.png, grid.json")
    p.add_argument("--replot", action="store_true", help="only redraw grid.png from an existing grid.json")
    a = p.parse_args()
    if a.replot:
        return figure(json.load(open(os.path.join(a.out, "grid.json"))), os.path.join(a.out, "grid.png"))
    rows, t0, work = [], time.time(), tempfile.TemporaryDirectory()  # the run folders are not kept
    for seed in a.seeds:
        for loss in LOSSES:
            for adapter in ADAPTERS:
                rows.append(one_run(loss, adapter, seed, a.epochs, os.path.join(work.name, f"{loss}-{adapter}-{seed}")))
                r = rows[-1]
                print(f"{time.time() - t0:5.0f}s  seed {seed} {loss:3s} + {adapter:5s}: stop {str(r['stopped_at_epoch']):4s} "
                      f"forget QA {r['forget_qa']:.2f}  retain QA {r['retain_qa']:.2f}  general QA {r['general_qa']:.2f}  "
                      f"({r['seconds']:.0f}s)", flush=True)
    md = table(rows, a.seeds) + f"\n\n`python reproduce.py` on {os.cpu_count()} CPU cores: {time.time() - t0:.0f} s.\n"
    data.atomic_write(os.path.join(a.out, "grid.md"), md.encode())
    data.atomic_write(os.path.join(a.out, "grid.json"), json.dumps(rows, indent=1).encode())
    figure(rows, os.path.join(a.out, "grid.png"))
    print(md)


if __name__ == "__main__":
    main()
