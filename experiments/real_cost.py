"""The real-model default's wall time against its cost targets: a first run ≤ 15 min and a cached run
≤ 5 min, both at 200 GFLOP/s.

    python -m experiments.real_cost [--corpus_seed 0] [--threads N]

Runs `python unlearn.py --loss ihl --init_from smollm2-135m` as a user does, twice, into a fresh
--base_dir: the first run sets the world up (world 0 copies its shipped fine-tunes, any other world
fine-tunes its base and oracle) and measures the start and the oracle; the second finds them cached.
The float32 matmul peak is measured with the same threads before and after each run; "at 200" is the
wall time × peak / 200. Writes experiments/results/real/cost.md.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

from lib import userio
from experiments import bench


def timed_run(args, threads):
    """Wall seconds of one unlearn.py run, and the matmul peak around it (the mean of before and after)."""
    before = bench.matmul_peak()
    t0 = time.time()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    subprocess.run([sys.executable, "unlearn.py", "--loss", "ihl", "--init_from", "smollm2-135m", *args], check=True, env=env)
    seconds = time.time() - t0
    return seconds, (before + bench.matmul_peak()) / 2


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--corpus_seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads for the runs and the peak")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        args = ["--corpus_seed", str(a.corpus_seed), "--base_dir", tmp]
        for i, (label, target) in enumerate((("first run (fresh --base_dir)", 15), ("the same, cached", 5))):
            seconds, peak = timed_run(args + ["--out", os.path.join(tmp, f"run{i}")], a.threads)
            at200 = seconds * peak / 200 / 60
            rows.append(f"| {label} | {seconds:.0f} s | {peak:.0f} GFLOP/s | {at200:.1f} min | ≤ {target} min: "
                        f"{'met' if at200 <= target else 'missed'} |")
            print(rows[-1], flush=True)
    md = [f"# `python -m experiments.real_cost --corpus_seed {a.corpus_seed} --threads {a.threads}`", "",
          f"World {a.corpus_seed}; {a.threads} thread(s) on a machine with {os.cpu_count()} CPU cores; torch {torch.__version__}.", "",
          "| run | wall time | matmul peak (mean of before and after) | at 200 GFLOP/s | target |", "|---|---|---|---|---|", *rows]
    os.makedirs(os.path.join("experiments", "results", "real"), exist_ok=True)
    userio.atomic_write(os.path.join("experiments", "results", "real", "cost.md"), "\n".join(md).encode() + b"\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
