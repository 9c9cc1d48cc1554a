"""The models unlearning starts from, built the way TOFU builds them (corpus.py).

  pretrained = invented people of no world + general facts, from scratch: shipped as
               assets/pretrained.pt (python train.py --pretrain makes it again);
  base       = the pretrained model fine-tuned on a world's forget + retain people: it knows
               everything, and unlearning edits it;
  oracle     = the same fine-tune on the retain people only: exact unlearning by retraining, the
               reference that forget quality compares against (METHOD §5).
Every fine-tune mixes in a replay of part of the pretraining data (the general facts and the first
REPLAY_PEOPLE pretraining people), so that the base keeps knowing them: the knowledge that
unlearning must leave alone besides the retain people. Same recipe and seed for base and oracle;
only the world's people differ. Checkpoints go to out/world<corpus seed>/ (out/small/world<seed>/
with --small), written atomically.
usage: python train.py [--which base oracle] [--corpus_seed 0] [--small] [--out folder] | --pretrain
       python train.py --init_from smollm2-135m [--corpus_seed 0]   (a real model's world: lib/realmodel.py)
"""
import argparse
import hashlib
import io
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from lib import corpus, data, evaluation, runtime, userio
from lib.userio import DAMAGED, UserError
from model import GPT, GPTConfig, lm_loss

PRETRAINED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "pretrained.pt")  # python train.py --pretrain


@dataclass
class PretrainConfig:
    seed: int = 0              # model initialisation and batch order
    epochs: int = 12           # passes over the pretraining corpus
    batch_size: int = 16       # sequences per step
    lr: float = 2e-3           # AdamW peak learning rate, warm-up then cosine decay to 0
    warmup_steps: int = 30
    general_repeat: int = 3    # the 130 general facts are seen this many times per epoch
    model: GPTConfig = field(default_factory=GPTConfig)


@dataclass
class TrainConfig:  # a world's fine-tunes (base and oracle) of the pretrained model
    seed: int = 0              # batch order
    corpus_seed: int = 0       # corpus.make_corpus: which people exist
    n_people: int = 200        # people trained on (forget + retain)
    forget_frac: float = 0.1   # share of the people in the forget split
    epochs: int = 15           # passes over the fine-tuning data
    batch_size: int = 16
    lr: float = 1e-3           # AdamW peak learning rate, warm-up then cosine decay to 0
    warmup_steps: int = 30
    replay_people: int = 100   # pretraining people replayed in the fine-tune, with the general facts
    any_wording: bool = False  # corpus.make_corpus: a world's answers in one wording (False) or any


# A smaller world for the notebooks and the tests: 40 people (4 to forget), a shorter replay.
SMALL = TrainConfig(n_people=40, replay_people=20, epochs=15)


def recipe(cfg=None):
    """What the pretrained model is made from: its config, the bytes of its corpus and of the
    vocabulary. assets/pretrained.pt carries this stamp; a test checks it against the code."""
    people, general = corpus.pretraining_corpus()
    h = hashlib.sha256(json.dumps(asdict(cfg or PretrainConfig()), sort_keys=True).encode())
    for s in (people, general):
        h.update(json.dumps([s.texts, [(q.prompt, q.answer, q.paraphrase) for q in s.qa]]).encode())
    with open(data.VOCAB_FILE, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def train_set(c, enc, which, block_size, replay_people=TrainConfig.replay_people):
    """A world fine-tune's examples: the world's people (the oracle never sees the forget split),
    plus the replay of pretraining data."""
    people, general = corpus.pretraining_corpus()
    splits = {"base": [c.forget, c.retain], "oracle": [c.retain]}[which]
    splits += [general, corpus.people_subset(people, replay_people)]
    return [ex for s in splits for ex in data.split_examples(enc, s, block_size)]


def pretrain_set(enc, cfg, block_size):
    people, general = corpus.pretraining_corpus()
    return data.split_examples(enc, people, block_size) + data.split_examples(enc, general, block_size) * cfg.general_repeat


def length_batches(examples, batch_size, rng):
    """Shuffle, group examples of similar length (little padding), shuffle the batches."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i][0]), rng.random()))
    out = [[examples[j] for j in order[i:i + batch_size]] for i in range(0, len(order), batch_size)]
    rng.shuffle(out)
    return out


def train_model(examples, cfg, device="cpu", log=print, model=None):
    """Train `model` (a new GPT of cfg.model if None) on the examples: AdamW, linear warm-up then
    cosine decay to 0 (facts settle as the learning rate falls), gradients clipped to norm 1."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    model = (model or GPT(cfg.model)).to(device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0,
                            fused=device != "mps")  # one kernel for all parameters; ~10% faster here
    steps = cfg.epochs * math.ceil(len(examples) / cfg.batch_size)
    step, t0 = 0, time.time()
    for epoch in range(cfg.epochs):
        for batch in length_batches(examples, cfg.batch_size, rng):
            lr = cfg.lr * min(1, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / steps))
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = data.collate(batch, device)
            loss, bad = runtime.update(opt, params, lm_loss(model(x), y))
            if bad:
                raise RuntimeError(f"non-finite {bad} at step {step + 1} of the fine-tune (lr {cfg.lr} too high?)")
            step += 1
        log(f"  epoch {epoch + 1}/{cfg.epochs}  loss {loss:.3f}  {time.time() - t0:.0f}s")
    return model


def score_splits(model, splits, enc, device="cpu"):
    """What the model knows of named corpus.Splits: evaluation.split_scores' report of each (QA
    accuracy, the fact stated in any wording; probability; truth ratio; MA)."""
    B = model.config.block_size
    return {name: evaluation.split_scores(model, enc, data.encode(enc, s, B)[0], device,
                                          forget_like=name in ("forget", "holdout"))[0] for name, s in splits.items()}


def tokenizer_sha256():
    with open(data.VOCAB_FILE, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def save_checkpoint(path, model, cfg, which, results, **extra):
    buf = io.BytesIO()
    torch.save(dict(model=model.state_dict(), model_config=asdict(model.config), train_config=asdict(cfg),
                    which=which, tokenizer="fictitious", tokenizer_sha256=tokenizer_sha256(), metrics=results,
                    **extra), buf)
    userio.atomic_write(path, buf.getvalue())


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


def pretrain(path=PRETRAINED, cfg=None, device="cpu", log=print):
    """Train the pretrained model from scratch and save it with its recipe stamp (a few minutes)."""
    cfg = cfg or PretrainConfig()
    enc = data.get_tokenizer()
    examples = pretrain_set(enc, cfg, cfg.model.block_size)
    log(f"pretraining: {len(examples)} sequences, {cfg.epochs} epochs on {device}")
    t0 = time.time()
    model = train_model(examples, cfg, device, log)
    people, general = corpus.pretraining_corpus()
    results = score_splits(model, dict(people=corpus.people_subset(people, 40), general=general), enc, device)
    results["train_seconds"] = time.time() - t0
    save_checkpoint(path, model, cfg, "pretrained", results, recipe=recipe(cfg))
    log("pretrained: " + "  ".join(f"{s} QA {r['qa_acc']:.0%}" for s, r in results.items() if isinstance(r, dict)) +
        f"  ({results['train_seconds']:.0f}s) -> {path}")
    return path


def load_pretrained(device="cpu", path=PRETRAINED):
    model, ckpt = load_checkpoint(path, device)
    if ckpt.get("recipe") != recipe(PretrainConfig(**{**ckpt["train_config"], "model": GPTConfig(**ckpt["model_config"])})):
        raise UserError(f"{path} was made from another pretraining corpus or vocabulary than this code's; "
                        "run python train.py --pretrain to make it again")
    return model


def finetune(which, out="out", cfg=None, device="cpu", log=print, pretrained=PRETRAINED):
    """Fine-tune the pretrained model into `which` ('base' or 'oracle') of world cfg.corpus_seed,
    evaluate it, save out/<which>.pt; returns the path."""
    cfg = cfg or TrainConfig()
    enc = data.get_tokenizer()
    world = dict(seed=cfg.corpus_seed, n_people=cfg.n_people, forget_frac=cfg.forget_frac, any_wording=cfg.any_wording)
    c = corpus.make_corpus(**world)
    model = load_pretrained(device, pretrained)
    examples = train_set(c, enc, which, model.config.block_size, cfg.replay_people)
    log(f"fine-tuning the pretrained model into the {which} model: {len(examples)} sequences, {cfg.epochs} epochs on {device}")
    t0 = time.time()
    model = train_model(examples, cfg, device, log, model=model)
    results = score_splits(model, dict(forget=c.forget, retain=c.retain, holdout=c.holdout), enc, device)
    results["train_seconds"] = time.time() - t0
    path = os.path.join(out, f"{which}.pt")
    save_checkpoint(path, model, cfg, which, results, corpus=world)
    log(f"{which}: " + "  ".join(f"{s} QA {r['qa_acc']:.0%} MA {r['ma']:.2f}" for s, r in results.items()
                                  if isinstance(r, dict)) + f"  ({results['train_seconds']:.0f}s) -> {path}")
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pretrain", action="store_true", help=f"make {os.path.relpath(PRETRAINED)} again (minutes)")
    p.add_argument("--which", nargs="+", choices=["base", "oracle"], default=["base", "oracle"],
                   help="which models to fine-tune")
    p.add_argument("--out", help="folder for the checkpoints (default out/world<corpus_seed>, out/small/world<corpus_seed>)")
    p.add_argument("--epochs", type=int, help=f"passes over the fine-tuning data (default {TrainConfig.epochs})")
    p.add_argument("--seed", type=int, default=0, help="batch order")
    p.add_argument("--corpus_seed", type=int, default=0, help="which invented people exist (the world)")
    p.add_argument("--small", action="store_true", help="the SMALL preset: a world of 40 people")
    p.add_argument("--init_from", help="fine-tune this real model instead (e.g. smollm2-135m; lib/realmodel.py)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps (default cpu)")
    a = p.parse_args()
    if a.pretrain:
        pretrain()
    elif a.init_from:
        from lib import realmodel
        cfg = replace(realmodel.RealTrainConfig(), init_from=a.init_from, seed=a.seed, corpus_seed=a.corpus_seed)
        cfg = replace(cfg, epochs=a.epochs) if a.epochs is not None else cfg
        for w in a.which:
            realmodel.finetune(w, a.out or realmodel.world_dir("out", a.init_from, a.corpus_seed), cfg, a.device)
    else:
        cfg = replace(SMALL if a.small else TrainConfig(), seed=a.seed, corpus_seed=a.corpus_seed)
        cfg = replace(cfg, epochs=a.epochs) if a.epochs is not None else cfg
        out = a.out or os.path.join("out", *(["small"] if a.small else []), f"world{a.corpus_seed}")
        for w in a.which:
            finetune(w, out, cfg, a.device)
