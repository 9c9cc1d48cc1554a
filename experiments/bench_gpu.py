"""The GPU benchmark behind RESULTS.md: this code's LoRA training step against transformers + peft
at GPT-2 small, medium and XL shapes and at SmolLM2-135M's with a QA batch (bf16 autocast; step time,
MFU, peak memory), and FILA's initialisation at XL shape. Each configuration runs in a fresh process.
Needs a CUDA GPU.

    python -m experiments.bench_gpu --out gpu.md          # every shape, then FILA's init; --fused, --compile, --bf16_frozen
    python -m experiments.bench_gpu --shapes smollm2 --rank 4 --fila ''
"""
import argparse
import json
import subprocess
import sys
import time

import torch

try:  # the benchmark's peer, not a requirement of the project
    import transformers
    from peft import LoraConfig, get_peft_model
except ImportError:
    transformers = None

import fisher
import lora
from experiments.bench import GPT2_SMALL, REPO, SMOLLM2, answer_batch, hf_labels, peft_model, step_flops
from model import GPT, GPTConfig, IGNORE, lm_loss

# config, B, T, answer tokens per sequence (None: every token is a target): GPT-2 small, medium and XL
# shapes as in pretraining; SmolLM2-135M's with a QA batch (32 questions, the authors' effective batch)
GPU_SHAPES = {"small": (GPT2_SMALL, 8, 1024, None),
              "medium": (GPTConfig(block_size=1024, vocab_size=50257, n_layer=24, n_head=16, n_embd=1024), 8, 1024, None),
              "xl": (GPTConfig(block_size=1024, vocab_size=50257, n_layer=48, n_head=25, n_embd=1600), 4, 1024, None),
              "smollm2": (SMOLLM2, 32, 64, 16)}


def cuda_timed(fn, warmup, repeat):
    """Median seconds of `repeat` calls of fn after `warmup` untimed ones; the GPU is synchronized around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bf16_matmul_peak(n=8192):
    """This GPU's dense bf16 matmul rate, TFLOP/s: n x n x n products, 10 per timed call."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return 10 * 2 * n**3 / cuda_timed(lambda: [a @ b for _ in range(10)], 2, 10) / 1e12


def gpu_ours(cfg, args):
    """This code's model with LoRA on every adapted linear, the head run at the targets alone (as
    unlearn.py); levers: --bf16_frozen, --compile (model and loss)."""
    with torch.device("cuda"):
        model = GPT(cfg)
    layers = lora.add_lora(model, args.rank, 2 * args.rank)
    if args.bf16_frozen:  # frozen Linear weights stored in bf16: autocast stops re-casting them every step
        for m in layers.values():
            m.base.to(torch.bfloat16)
    loss_fn = lambda x, y: lm_loss(model(x, only=y != IGNORE), y)  # noqa: E731
    return model, torch.compile(loss_fn) if args.compile else loss_fn


def gpu_peft(cfg, args):
    """transformers (sdpa attention) + peft LoRA, as shipped (bench.peft_model); the loss counts the same targets."""
    if transformers is None:
        raise ImportError("transformers and peft are not installed", name="transformers, peft")
    with torch.device("cuda"):
        hf = peft_model(cfg, args.rank, attn_implementation="sdpa")
    return hf, lambda x, y: hf(input_ids=x, labels=hf_labels(x, y)).loss


def gpu_one(args):
    """One configuration, in this fresh process so that the peak memory is its own: prints one JSON line.
    'SHAPE/ours', 'SHAPE/peft': a training step; 'fila/randomized', 'fila/exact': FILA init at XL shape."""
    torch.manual_seed(0)
    what, how = args.one.split("/")
    if what == "fila":
        return print(json.dumps(dict(seconds=gpu_fila(args, how == "randomized"))))
    cfg, B, T, answer = GPU_SHAPES[what]
    try:
        model, loss_fn = (gpu_ours if how == "ours" else gpu_peft)(cfg, args)
    except ImportError as e:
        return print(json.dumps(dict(error=f"{e.name} not installed" if e.name else str(e))))
    x, y = answer_batch(cfg, B, T, answer, "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=args.fused or None)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16):
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
    torch.cuda.reset_peak_memory_stats()  # from here: weights, activations, gradients, optimizer state
    t = cuda_timed(step, args.warmup, args.repeat)
    print(json.dumps(dict(seconds=t, trainable=sum(p.numel() for p in params),
                          mem=torch.cuda.max_memory_allocated() / 2**30)))


def gpu_fila(args, randomized):
    """Seconds of fisher.init_adapters(model, "fila", F_f, F_r) at GPT-2 XL shape (288 adapted weights),
    random positive Fisher tensors: the SVDs and the residual update only, not the Fisher pass."""
    with torch.device("cuda"):
        model = GPT(GPU_SHAPES["xl"][0])
    layers = lora.add_lora(model, args.rank, 2 * args.rank)
    F_f, F_r = ({n: torch.rand_like(m.base.weight) + 1e-3 for n, m in layers.items()} for _ in range(2))
    fisher.weighted_lowrank(torch.randn(64, 64, device="cuda"), torch.ones(64, device="cuda"), 8, 2.0,
                            randomized=randomized)  # cuSOLVER / cuBLAS set-up is not FILA's cost
    return cuda_timed(lambda: fisher.init_adapters(model, "fila", F_f, F_r, randomized=randomized), 0, 1)


def bench_gpu(args):
    """GPU LoRA training step, ours vs transformers + peft, at GPU_SHAPES (GPT-2 small / medium / XL, SmolLM2-135M);
    FILA init time.
    Each row is one fresh process: bf16 autocast, AdamW on the adapters only, `--warmup` untimed steps, then
    the median of `--repeat` steps. How to read the table: TFLOP/s = step_flops (hand count, ours, used for
    both rows) / median step time; MFU divides that by the nominal bf16 dense peak (--peak_tflops) and, in
    the next column, by the bf16 matmul rate measured here; peak mem is torch.cuda.max_memory_allocated
    over the timed steps (weights included); 'ours vs peft' is peft's step time / ours (> 1: ours faster).
    Levers (--compile, --fused, --bf16_frozen) apply to this code's model only, except --fused (both optimizers)."""
    if not torch.cuda.is_available():
        print("no CUDA device: experiments/bench_gpu.py (step time, MFU, memory, FILA init on the GPU) needs one")
        return
    levers = [f"--{k}" for k in ("compile", "bf16_frozen") if getattr(args, k)]  # ours only
    flags = levers + ["--fused"] * args.fused
    common = ["--rank", str(args.rank), "--repeat", str(args.repeat), "--warmup", str(args.warmup)] + flags

    def child(one):
        try:
            r = subprocess.run([sys.executable, "-m", "experiments.bench_gpu", "--one", one] + common, cwd=REPO,
                               capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return dict(error=f"timed out after {args.timeout}s")
        lines = r.stdout.strip().splitlines()
        if r.returncode or not lines:
            return dict(error=(r.stderr.strip().splitlines() or [f"exit code {r.returncode}"])[-1][:120])
        return json.loads(lines[-1])
    out = []

    def emit(line):
        print(line, flush=True)
        out.append(line)
    measured = bf16_matmul_peak()
    torch.cuda.empty_cache()
    emit(f"**{torch.cuda.get_device_name()}**, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
         f"{pkg_version('transformers')}, peft {pkg_version('peft')}, {time.strftime('%Y-%m-%d')}. LoRA rank "
         f"{args.rank}, alpha {2 * args.rank}; bf16 autocast; AdamW{' (fused)' if args.fused else ''}; levers: "
         f"{' '.join(levers) or 'none'}; {args.warmup} warm-up steps, median of {args.repeat}. bf16 matmul peak: "
         f"measured {measured:.0f} TFLOP/s, nominal {args.peak_tflops:.0f} TFLOP/s.\n")
    emit("| shape | B×T | model | trainable | step | tokens/s | TFLOP/s | MFU (nominal) | MFU (measured) "
         "| peak mem | ours vs peft |")
    emit("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for shape in args.shapes.split(","):
        cfg, B, T, answer = GPU_SHAPES[shape]
        flops = step_flops(cfg, B, T, args.rank, True, answer and B * answer)
        res = {impl: child(f"{shape}/{impl}") for impl in ("ours", "peft")}
        for impl, r in res.items():
            name = "ours" if impl == "ours" else "transformers + peft"
            if "error" in r:
                emit(f"| {shape} | {B}×{T} | {name} | {r['error']} | | | | | | | |")
                continue
            t, tf = r["seconds"], flops / r["seconds"] / 1e12
            ratio = f"{res['peft']['seconds'] / t:.2f}×" if impl == "ours" and "seconds" in res["peft"] else ""
            emit(f"| {shape} | {B}×{T} | {name} | {r['trainable']:,} | {t * 1e3:.1f} ms | {B * T / t:,.0f} | {tf:.0f} "
                 f"| {tf / args.peak_tflops:.1%} | {tf / measured:.1%} | {r['mem']:.1f} GiB | {ratio} |")
    if args.fila:
        emit("\n| FILA init, GPT-2 XL shape, rank %d (288 weights; random Fisher) | seconds |\n|---|--:|" % args.rank)
    for how in filter(None, args.fila.split(",")):
        r = child(f"fila/{how}")
        svd = "torch.svd_lowrank (niter 4)" if how == "randomized" else "torch.linalg.svd (cuSOLVER)"
        emit(f"| {how} SVD, {svd} | {r.get('error') or format(r['seconds'], '.2f')} |")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(out) + "\n")


def pkg_version(name):
    import importlib.metadata
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=20, help="timed steps; the median is reported")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank, alpha = 2 x rank")
    p.add_argument("--one", help="one configuration in this process: SHAPE/ours, SHAPE/peft, fila/randomized, "
                                 "fila/exact")
    p.add_argument("--shapes", default="small,medium,xl,smollm2", help="which of " + ",".join(GPU_SHAPES))
    p.add_argument("--fila", default="randomized,exact", help="FILA init SVDs to time at XL shape ('' for none)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens there)")
    p.add_argument("--peak_tflops", type=float, default=989.0, help="nominal bf16 dense peak (H100/H200: 989)")
    p.add_argument("--compile", action="store_true", help="torch.compile this code's model and loss")
    p.add_argument("--fused", action="store_true", help="fused AdamW (ours and peft)")
    p.add_argument("--bf16_frozen", action="store_true", help="store the frozen Linear weights in bf16")
    p.add_argument("--timeout", type=int, default=300, help="seconds allowed to each configuration")
    p.add_argument("--out", help="also write the markdown table to this file")
    args = p.parse_args()
    gpu_one(args) if args.one else bench_gpu(args)
