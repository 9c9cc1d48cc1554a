"""Benchmarks and checks behind the figures in RESULTS.md. Each prints what it measured.

    python -m experiments.bench step           # one training step, full fine-tuning vs LoRA, against the matmul peak
    python -m experiments.bench step --shapes smollm2 --peer   # at SmolLM2-135M's shape, against transformers + peft
    python -m experiments.bench fisher         # Fisher pass vs a forward+backward epoch; FILA / PiSSA init time
    python -m experiments.bench faults --n 20  # SIGKILL unlearn.py at random moments; are all files whole? resume?

The GPU benchmark (LoRA step vs transformers + peft at GPT-2 shapes, FILA init) is experiments/bench_gpu.py.
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

import fisher
import lora
from lib import corpus, data
from model import GPT, IGNORE, GPTConfig, LlamaConfig, lm_loss

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the commands run from there
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


def matmul_peak(n=2048, repeat=10):
    """This machine's dense float32 matmul rate, GFLOP/s: the best of `repeat` n x n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / timed(lambda: a @ b, repeat) / 1e9


def step_flops(cfg, B, T, r, lora_on, n_targets=None):
    """FLOPs of one training step, counted by hand (a matmul is 2·m·n·k):
    - forward: the block Linears, one multiply-add per weight per token (12·C² per layer for GPT-2);
      the head, V·C per token that has a target (n_targets of the B·T; all by default); attention,
      the causal half of QKᵀ and of AV: T·C per token and layer;
    - backward, activation gradients: as much again for the Linears and the head, twice the forward
      for attention (dQ, dK, dV and dP);
    - backward, weight gradients: the Linears and the (tied) head once more, but only when they train:
      with LoRA none of them do, only A and B;
    - LoRA's own path x·Aᵀ·Bᵀ, r·(in + out) per adapted matrix: forward, input gradient and A/B
      gradients, 3 times.
    Embedding lookups, normalisations, activations, softmax and the optimizer are not counted."""
    with torch.device("meta"):  # shapes only
        model = GPT(cfg)
    linears = [model.blocks[0].get_submodule(path).weight.shape for path in model.lora_targets.values()]
    N, L, V, C = B * T, cfg.n_layer, cfg.vocab_size, cfg.n_embd
    head = (N if n_targets is None else n_targets) * V * C
    dense, attn = sum(o * i for o, i in linears) * L, T * C * L
    flops = 2 * (N * dense + head) + 2 * N * attn               # forward
    flops += 2 * (N * dense + head) + 4 * N * attn              # activation gradients
    if not lora_on:
        return flops + 2 * (N * dense + head)                   # weight gradients
    adapter = r * sum(o + i for o, i in linears) * L
    return flops + 3 * 2 * N * adapter


def measure_step(model, params, x, y, repeat):
    """Median seconds of forward + backward + AdamW step, after two warm-up steps. A bare step, not
    runtime.update (no clipping, no finite check), because hf_peft_step times peft's the same way:
    both sides do the same work."""
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        lm_loss(model(x, only=y != IGNORE), y).backward()  # as unlearn.py: the head at the targets alone
        opt.step()
    times = [timed(step) for _ in range(repeat + 2)][2:]
    return sorted(times)[len(times) // 2]


def answer_batch(cfg, B, T, answer, device="cpu"):
    """Random tokens x (B, T) and targets y: the next token, or, with `answer`, only the last `answer`
    tokens of x, predicted from the positions before (a QA batch: the loss counts the answer alone)."""
    x = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    y = torch.roll(x, -1, 1)
    if answer is not None:
        y[:, :T - answer - 1] = IGNORE
        y[:, -1] = IGNORE
    return x, y


def hf_labels(x, y):
    """Our targets y as transformers' labels, which it shifts itself: labels[t] = y[t - 1]."""
    labels = torch.cat([x[:, :1], y], 1)[:, :-1]
    labels[:, 0] = IGNORE
    return labels


def peft_model(cfg, rank, **hf_kwargs):
    """transformers' model of cfg's shape with peft LoRA (rank, alpha 2 * rank): LlamaForCausalLM with
    adapters on the same seven linears as ours, or GPT2LMHeadModel (GPT-2's fused c_attn gets one
    adapter there: peft adapts the module that holds q, k and v). Built on the default device.
    Raises ImportError without transformers and peft (the benchmark's peers, not requirements)."""
    import transformers
    from peft import LoraConfig, get_peft_model
    if cfg.arch == "llama":
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.n_hidden, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.block_size,
            rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_head, **hf_kwargs))
        lora_cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    else:
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, vocab_size=cfg.vocab_size,
            n_positions=cfg.block_size, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **hf_kwargs))
        lora_cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["c_attn", "c_proj", "c_fc"],
                              lora_dropout=0.0, fan_in_fan_out=True)
    return get_peft_model(hf, lora_cfg)


def hf_peft_step(cfg, rank, x, y, repeat):
    """The same step through transformers + peft LoRA on a model of the same shape (peft_model); the
    loss counts the same targets."""
    try:
        hf = peft_model(cfg, rank)
    except ImportError as e:
        raise SystemExit(f"{e.name} is not installed (pip install transformers peft)") from None
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    labels = hf_labels(x, y)

    def step():
        opt.zero_grad(set_to_none=True)
        hf(input_ids=x, labels=labels).loss.backward()
        opt.step()
    times = [timed(step) for _ in range(repeat + 2)][2:]
    return sorted(times)[len(times) // 2], sum(p.numel() for p in params)


SMOLLM2 = LlamaConfig(block_size=8192, vocab_size=49152, n_layer=30, n_head=9, n_kv_head=3, n_embd=576,
                      n_hidden=1536, rope_theta=1e5)
# config, B, T, answer tokens per sequence (None: every token is a target, as in pretraining)
SHAPES = {"default": (GPTConfig(), 16, 64, None), "gpt2": (GPT2_SMALL, 4, 128, None),
          "smollm2": (SMOLLM2, 8, 48, 12)}  # a QA batch: the loss counts the answer's tokens only
MALLOC = dict(MALLOC_MMAP_THRESHOLD_="4294967296", MALLOC_TRIM_THRESHOLD_="4294967296")


def step_one(shape, mode, rank, repeat):
    """One measurement, in its own process so that its peak memory is its own: prints JSON."""
    cfg, B, T, answer = SHAPES[shape]
    torch.manual_seed(0)
    x, y = answer_batch(cfg, B, T, answer)
    if mode == "peft":
        t, n = hf_peft_step(cfg, rank, x, y, repeat)
    else:
        model = GPT(cfg)
        if mode == "lora":
            lora.add_lora(model, rank, 2 * rank)
        params = [p for p in model.parameters() if p.requires_grad]
        t, n = measure_step(model, params, x, y, repeat), sum(p.numel() for p in params)
    print(json.dumps(dict(seconds=t, trainable=n)))


def bench_step(args):
    """Step time of full fine-tuning, this code's LoRA and (--peer) transformers + peft LoRA, each in a fresh
    process (peak resident memory from os.wait4), against this machine's matmul peak."""
    peak = matmul_peak()
    env = dict(os.environ, **(MALLOC if args.malloc else {}))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, rank {args.rank}; dense float32 matmul "
          f"peak {peak:.0f} GFLOP/s; glibc malloc {'keeps freed memory (--malloc)' if args.malloc else 'default'}")
    print(f"{'model':14s}{'B x T':>8s}{'mode':>6s}{'trainable':>13s}{'step':>9s}{'tokens/s':>10s}{'GFLOP/step':>12s}"
          f"{'GFLOP/s':>9s}{'of peak':>9s}{'peak RSS':>10s}")
    for shape in args.shapes:
        (cfg, B, T, answer), ours = SHAPES[shape], None
        for mode in ("full", "lora") + (("peft",) if args.peer else ()):
            code, out, err, rss = run_child([sys.executable, "-m", "experiments.bench", "step_one", "--shape", shape, "--mode", mode,
                                             "--rank", str(args.rank), "--repeat", str(args.repeat)], env)
            if code != 0:
                print(f"{shape:14s}{mode:>14s}: failed ({err.strip().splitlines()[-1]})")
                continue
            r = json.loads(out.strip().splitlines()[-1])
            # ours runs the head at the answer tokens alone; peft at every position
            t, flops = r["seconds"], step_flops(cfg, B, T, args.rank, mode != "full", None if mode == "peft" else answer and B * answer)
            ours = t if mode == "lora" else ours
            ratio = f"   ours/peft: {ours / t:.2f} ({t / ours:.2f}x faster)" if mode == "peft" and ours else ""
            print(f"{shape:14s}{f'{B}x{T}':>8s}{mode:>6s}{r['trainable']:13,}{t * 1000:8.0f}ms{B * T / t:10,.0f}"
                  f"{flops / 1e9:12.1f}{flops / t / 1e9:9.0f}{flops / t / 1e9 / peak:9.0%}{rss:9.0f}M{ratio}")


def run_child(cmd, env):
    """Run a command -> (exit code, stdout, stderr, its peak resident memory in MiB): os.wait4 reports
    the child's own peak (ru_maxrss, KiB on Linux)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True, cwd=REPO)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)  # already reaped: Popen must not wait again
        err.seek(0)
        return proc.returncode, out, err.read(), usage.ru_maxrss / 1024


def bench_fisher(args):
    """The Fisher pass is one forward and one backward per batch plus squaring the gradients of the
    adapted weights: it should cost about one forward+backward epoch over the same batches."""
    torch.manual_seed(0)
    enc = data.get_tokenizer()
    c = corpus.make_corpus()
    B = GPTConfig().block_size
    examples = data.split_examples(enc, c.forget, B) + data.split_examples(enc, c.retain, B)
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
    subprocess.run(cmd + ["--out", ref], check=True, capture_output=True, cwd=REPO)  # builds out/world0/ if missing
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
        proc = subprocess.Popen(cmd + ["--out", out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
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
            subprocess.run([sys.executable, "unlearn.py", "--resume", out], check=True, capture_output=True, cwd=REPO)
            counts["resumed"] += 1
            counts["resumed_identical"] += outcome(out) == want
    shutil.rmtree(work)
    print(f"run length {duration:.0f}s; " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["step", "step_one", "fisher", "faults"], help="which benchmark")
    p.add_argument("--shape", choices=list(SHAPES), help="step_one: which model")
    p.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["default", "gpt2"], help="step: which models")
    p.add_argument("--mode", choices=["full", "lora", "peft"], help="step_one: what to train")
    p.add_argument("--malloc", action="store_true", help="step: let glibc keep freed memory (no page faults)")
    p.add_argument("--repeat", type=int, default=5, help="step: timed steps, the median is reported")
    p.add_argument("--peer", action="store_true", help="step: also time transformers + peft, if installed")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank, alpha = 2 x rank")
    p.add_argument("--gpt2_batches", type=int, default=8, help="batches (of 4 x 128 tokens) at GPT-2 shape")
    p.add_argument("--n", type=int, default=20, help="faults: how many runs to kill")
    p.add_argument("--epochs", type=int, default=3, help="faults: epochs of each unlearning run")
    p.add_argument("--seed", type=int, default=0, help="faults: when to kill")
    args = p.parse_args()
    if args.what == "step_one":
        step_one(args.shape, args.mode, args.rank, args.repeat)
    else:
        {"step": bench_step, "fisher": bench_fisher, "faults": bench_faults}[args.what](args)
