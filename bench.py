"""Benchmarks and checks behind the figures in the README. Each prints what it measured.

    python bench.py fisher         # Fisher pass vs a forward+backward epoch; FILA / PiSSA init time
    python bench.py faults --n 20  # SIGKILL unlearn.py at random moments; are all files whole? resume?
"""
import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import torch

import corpus
import data
import fisher
import lora
from model import GPT, GPTConfig, lm_loss

GPT2_SMALL = GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)


def timed(fn, repeat=1):
    """Best wall time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def random_batches(cfg, n_batches, B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[(torch.randint(0, cfg.vocab_size, (T,), generator=g).tolist(), [True] * T) for _ in range(B)]
            for _ in range(n_batches)]


def fwd_bwd_epoch(model, batches):
    for batch in batches:
        x, y = data.collate(batch)
        lm_loss(model(x), y).backward()


def bench_fisher(args):
    """The Fisher pass is one forward and one backward per batch plus squaring the gradients of the
    adapted weights: it should cost about one forward+backward epoch over the same batches."""
    torch.manual_seed(0)
    enc = data.get_tokenizer()
    c = corpus.make_corpus()
    examples = data.split_examples(enc, c.forget) + data.split_examples(enc, c.retain)
    shapes = [("built-in default (1 x 256)", GPTConfig(), list(data.batches(examples, 4))),
              ("GPT-2 small shape (12 x 768)", GPT2_SMALL, random_batches(GPT2_SMALL, args.gpt2_batches, 4, 128))]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, rank {args.rank}, batches of 4")
    print(f"{'model':30s}{'batches':>8s}{'fwd+bwd epoch':>15s}{'Fisher pass':>13s}{'ratio':>7s}"
          f"{'FILA exact':>12s}{'FILA rand.':>12s}{'PiSSA exact':>13s}")
    for name, cfg, batches in shapes:
        model = GPT(cfg)
        lora.add_lora(model, args.rank, 2 * args.rank)
        model.requires_grad_(True)  # the epoch baseline computes every gradient, as training would
        t_epoch = timed(lambda: fwd_bwd_epoch(model, batches))
        model.requires_grad_(False)  # the Fisher pass takes gradients of the adapted weights only
        F = {}
        t_fisher = timed(lambda: F.update(fisher.fisher_diagonal(model, batches)))
        Fr = {k: v * 0.5 + 1e-9 for k, v in F.items()}  # a stand-in retain Fisher: timing only
        t_fila = timed(lambda: fisher.init_adapters(model, "fila", F, Fr))
        t_rand = timed(lambda: fisher.init_adapters(model, "fila", F, Fr, randomized=True))
        t_pissa = timed(lambda: fisher.init_adapters(model, "pissa"))
        print(f"{name:30s}{len(batches):8d}{t_epoch:14.2f}s{t_fisher:12.2f}s{t_fisher / t_epoch:7.2f}"
              f"{t_fila:11.2f}s{t_rand:11.2f}s{t_pissa:12.2f}s")


def file_is_whole(path):
    """Complete and loadable: JSON parses, torch files load, a PNG ends with its IEND chunk."""
    try:
        if path.endswith(".json"):
            json.load(open(path))
        elif path.endswith(".pt"):
            torch.load(path, weights_only=True)
        elif path.endswith(".png"):
            blob = open(path, "rb").read()
            return blob.startswith(b"\x89PNG") and blob.endswith(b"IEND\xaeB`\x82")
        return True
    except Exception:
        return False


def bench_faults(args):
    """Kill `python unlearn.py` with SIGKILL at a random moment, n times. After each kill every file
    in the run folder must be whole; if state.pt exists, --resume must finish the run with the same
    metrics.json as an uninterrupted run."""
    cmd = [sys.executable, "unlearn.py", "--epochs", str(args.epochs), "--no_stop"]
    work = tempfile.mkdtemp()
    ref = os.path.join(work, "reference")
    t0 = time.time()
    subprocess.run(cmd + ["--out", ref], check=True, capture_output=True)  # builds out/base.pt if missing
    duration = time.time() - t0
    def outcome(folder):  # what must match the uninterrupted run: metrics (but the folder name), adapter
        m = json.load(open(os.path.join(folder, "metrics.json")))
        m["config"].pop("out")
        return m, open(os.path.join(folder, "adapter.pt"), "rb").read()
    want = outcome(ref)
    rng = random.Random(args.seed)
    counts = dict(kills=0, files_checked=0, broken_files=0, leftover_tmp=0, resumed=0, resumed_identical=0)
    for i in range(args.n):
        out = os.path.join(work, f"run{i}")
        proc = subprocess.Popen(cmd + ["--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, duration))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        counts["kills"] += 1
        for path in glob.glob(os.path.join(out, "*")):
            if ".tmp" in os.path.basename(path):
                counts["leftover_tmp"] += 1  # an unfinished temporary file, never under a real name
                continue
            counts["files_checked"] += 1
            counts["broken_files"] += not file_is_whole(path)
        if os.path.exists(os.path.join(out, "state.pt")):
            subprocess.run([sys.executable, "unlearn.py", "--resume", out], check=True, capture_output=True)
            counts["resumed"] += 1
            counts["resumed_identical"] += outcome(out) == want
    shutil.rmtree(work)
    print(f"run length {duration:.0f}s; " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["fisher", "faults"], help="which benchmark")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank")
    p.add_argument("--gpt2_batches", type=int, default=8, help="batches (of 4 x 128 tokens) at GPT-2 shape")
    p.add_argument("--n", type=int, default=20, help="faults: how many runs to kill")
    p.add_argument("--epochs", type=int, default=3, help="faults: epochs of each unlearning run")
    p.add_argument("--seed", type=int, default=0, help="faults: when to kill")
    args = p.parse_args()
    {"fisher": bench_fisher, "faults": bench_faults}[args.what](args)
