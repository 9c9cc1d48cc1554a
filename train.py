"""Train the two models unlearning starts from, on the built-in corpus (corpus.py).

  base   = forget + retain + general: the model that knows everything, which unlearning edits;
  oracle = retain + general only: exact unlearning by retraining from scratch, the reference that
           forget quality compares against (METHOD §5).
Same recipe, same seed; only the data differ. Checkpoints go to out/world<corpus seed>/base.pt and
oracle.pt (out/small/world<seed>/ with --small), written atomically.
usage: python train.py [--which base oracle] [--corpus_seed 0] [--small] [--out folder]
"""
import argparse
import hashlib
import io
import math
import os
import pickle
import random
import zipfile
import time
from dataclasses import asdict, dataclass, field, replace

import torch

import corpus
import data
import metrics
from data import UserError
from model import GPT, GPTConfig, lm_loss


@dataclass
class TrainConfig:
    seed: int = 0              # model initialisation and batch order
    corpus_seed: int = 0       # corpus.make_corpus: which people exist
    n_people: int = 200        # people trained on (forget + retain)
    forget_frac: float = 0.1   # share of the people in the forget split
    epochs: int = 22           # passes over the data: model seeds 0, 1, 2 all reach 100% QA at 22
    batch_size: int = 16       # sequences per step; smaller batches memorise faster per epoch
    lr: float = 2e-3           # AdamW peak learning rate; 3e-3 and up sometimes never learn the QA
    warmup_steps: int = 30     # linear warm-up, then cosine decay to 0: facts settle as lr falls
    model: GPTConfig = field(default_factory=GPTConfig)


# A quicker corpus and model for the notebooks and for trying things: 40 people (4 to forget), one
# block 128 wide; base and oracle in ~8 s each, 100% forget/retain QA accuracy (seeds 0 and 1 measured).
SMALL = TrainConfig(n_people=40, epochs=40, lr=3e-3, model=GPTConfig(n_layer=1, n_head=4, n_embd=128, block_size=64))


def train_set(c, enc, which, block_size):
    """The examples each model trains on: the oracle never sees the forget split."""
    splits = {"base": [c.forget, c.retain, c.general], "oracle": [c.retain, c.general]}
    return [ex for s in splits[which] for ex in data.split_examples(enc, s, block_size)]


def length_batches(examples, batch_size, rng):
    """Shuffle, group examples of similar length (little padding), shuffle the batches."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), rng.random()))
    out = [[examples[j] for j in order[i:i + batch_size]] for i in range(0, len(order), batch_size)]
    rng.shuffle(out)
    return out


def train_model(examples, cfg: TrainConfig, device="cpu", log=print):
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = GPT(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=device != "mps")  # one kernel for all parameters; ~10% faster here
    steps = cfg.epochs * math.ceil(len(examples) / cfg.batch_size)
    step, t0 = 0, time.time()
    for epoch in range(cfg.epochs):
        for batch in length_batches(examples, cfg.batch_size, rng):
            lr = cfg.lr * min(1, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = data.collate(batch, device)
            loss = lm_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
        log(f"  epoch {epoch + 1}/{cfg.epochs}  loss {loss.item():.3f}  {time.time() - t0:.0f}s")
    return model


def score_splits(model, c, enc, device="cpu"):
    """QA accuracy / probability / truth ratio and MA on every split: what the model knows."""
    B = model.config.block_size
    return {name: metrics.split_report(model, data.encode(enc, getattr(c, name), B)[0], device=device,
                                       forget_like=name in ("forget", "holdout"))[0]
            for name in ("forget", "retain", "holdout", "general")}


def tokenizer_sha256():
    with open(data.VOCAB_FILE, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def save_checkpoint(path, model, cfg, which, results):
    buf = io.BytesIO()
    torch.save(dict(model=model.state_dict(), model_config=asdict(cfg.model), train_config=asdict(cfg),
                    which=which, tokenizer="fictitious", tokenizer_sha256=tokenizer_sha256(),
                    corpus=dict(seed=cfg.corpus_seed, n_people=cfg.n_people, forget_frac=cfg.forget_frac),
                    metrics=results), buf)
    data.atomic_write(path, buf.getvalue())


# What torch.load and load_state_dict raise for a truncated, foreign or mismatched file (not a bug of ours).
DAMAGED = (OSError, RuntimeError, EOFError, KeyError, TypeError, pickle.UnpicklingError, zipfile.BadZipFile)


def load_checkpoint(path, device="cpu"):
    """-> (model, the checkpoint dict). Clear errors for missing or damaged files."""
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} does not exist (python train.py builds it)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = GPT(GPTConfig(**ckpt["model_config"]))
        model.load_state_dict(ckpt["model"])
    except DAMAGED as e:
        raise UserError(f"checkpoint {path} is unreadable or not one of ours ({type(e).__name__}); "
                        "delete it (unlearn.py trains it again on first use)") from None
    if ckpt.get("tokenizer") == "fictitious" and ckpt.get("tokenizer_sha256") != tokenizer_sha256():
        raise UserError(f"checkpoint {path} was trained with another version of {data.VOCAB_FILE}; "
                         "delete it (unlearn.py trains it again on first use)")
    return model.to(device), ckpt


def build(which, out="out", cfg=None, device="cpu", log=print):
    """Train `which` ('base' or 'oracle'), evaluate it, save out/<which>.pt; returns the path."""
    cfg = cfg or TrainConfig()
    enc = data.get_tokenizer()
    c = corpus.make_corpus(cfg.corpus_seed, cfg.n_people, cfg.forget_frac)
    examples = train_set(c, enc, which, cfg.model.block_size)
    log(f"training the {which} model: {len(examples)} sequences, {cfg.epochs} epochs on {device}")
    t0 = time.time()
    model = train_model(examples, cfg, device, log)
    results = score_splits(model, c, enc, device)
    results["train_seconds"] = time.time() - t0
    path = os.path.join(out, f"{which}.pt")
    save_checkpoint(path, model, cfg, which, results)
    log(f"{which}: " + "  ".join(f"{s} QA {r['qa_acc']:.0%} MA {r['ma']:.2f} TR {r['truth_ratio']:.2f}"
                                  for s, r in results.items() if isinstance(r, dict)) +
        f"  ({results['train_seconds']:.0f}s) -> {path}")
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--which", nargs="+", choices=["base", "oracle"], default=["base", "oracle"],
                   help="which models to train")
    p.add_argument("--out", help="folder for the checkpoints (default out/world<corpus_seed>, out/small/world<corpus_seed>)")
    p.add_argument("--epochs", type=int, help=f"passes over the data (default {TrainConfig.epochs})")
    p.add_argument("--seed", type=int, default=0, help="model initialisation and batch order")
    p.add_argument("--corpus_seed", type=int, default=0, help="which invented people exist (the world)")
    p.add_argument("--small", action="store_true", help="the SMALL preset: 40 people, 1 x 128 (~8 s per model)")
    a = p.parse_args()
    cfg = replace(SMALL if a.small else TrainConfig(), seed=a.seed, corpus_seed=a.corpus_seed)
    cfg = replace(cfg, epochs=a.epochs) if a.epochs is not None else cfg
    out = a.out or os.path.join("out", *(["small"] if a.small else []), f"world{a.corpus_seed}")
    for w in a.which:
        build(w, out, cfg)
