"""The built-in world on a real pretrained model, built as TOFU builds it: the model (SmolLM2-135M-Instruct
by default) fine-tuned on a world's invented people into the **base** (everyone) and the **oracle**
(everyone but the forget people). Each fine-tune is a LoRA on every linear of every block, saved as
its adapters (a few MB, not the model's 540 MB) and merged into the model when it is loaded.

    python train.py --init_from smollm2-135m [--corpus_seed N]     # builds out/smollm2-135m/world<N>/
    python unlearn.py --init_from smollm2-135m                      # unlearns there (builds it first if missing)

The world's QA are trained on the answer's tokens and the biographies on every token, with
real-world questions that are never scored (realworld.replay) in the same format. The real-world
questions the model knew are never trained on: they measure what the fine-tune and the unlearning
leave of what the model knew.
"""
import hashlib
import io
import json
import math
import os
import random
import re
import time
from dataclasses import asdict, dataclass

import torch

import lora
from lib import corpus, data, evaluation, hf, realworld, runtime, userio
from lib.userio import DAMAGED, UserError
from model import IGNORE, lm_loss


@dataclass
class RealTrainConfig:  # a world's fine-tunes of a real model (chosen on world 0: RESULTS.md)
    init_from: str = "smollm2-135m"  # the pretrained model (hf.load)
    seed: int = 0              # batch order and adapter initialisation
    corpus_seed: int = 0       # corpus.make_corpus: which people exist
    n_people: int = 40         # people trained on (forget + retain); as many unseen in the holdout
    forget_frac: float = 0.1   # share of the people in the forget split (TOFU's forget10)
    epochs: int = 10           # passes over the fine-tuning data
    batch_size: int = 16
    lr: float = 3e-3           # AdamW peak learning rate, warm-up then cosine decay to 0
    warmup_steps: int = 10
    rank: int = 8              # the fine-tune's LoRA rank (α = 2·rank) on every linear of every block
    bios: bool = True          # train on the biographies too, not only the QA
    replay: bool = True        # also train on real-world questions that are never scored (realworld.replay)


def world_args(cfg):
    return dict(seed=cfg.corpus_seed, n_people=cfg.n_people, forget_frac=cfg.forget_frac)


def model_name(init_from):
    """The model's name, or its file or folder name, made safe for a path (lower case, as hf.resolve
    reads the name smollm2-135m)."""
    return re.sub(r"[^a-z0-9._-]+", "_", os.path.basename(os.path.abspath(init_from)).lower())


def world_dir(base_dir, init_from, corpus_seed):
    """<base_dir>/<model>/world<seed>: where a world's base model and oracle are kept."""
    return os.path.join(base_dir, model_name(init_from), f"world{corpus_seed}")


def train_examples(c, enc, which, cfg):
    """The fine-tune's examples: the world's people (the oracle never sees the forget split), QA on the
    answer's tokens, biographies on every token."""
    splits = {"base": [c.forget, c.retain], "oracle": [c.retain]}[which] + ([realworld.replay()] if cfg.replay else [])
    encoded = [data.encode(enc, s if cfg.bios else corpus.Split(qa=s.qa), 1 << 20)[0] for s in splits]
    return [ex for e in encoded for ex in data.training_examples(e)]


ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


def shipped(which, cfg):
    """assets/<model>-world<seed>-<which>.pt: a fine-tune shipped with the code (SmolLM2's world 0), so
    that a first run need not spend minutes fine-tuning; None if there is none for cfg."""
    path = os.path.join(ASSETS, f"{model_name(cfg.init_from)}-world{cfg.corpus_seed}-{which}.pt")
    return path if os.path.exists(path) else None


def provide(which, folder, cfg, device="cpu", log=print):
    """folder/<which>.pt: the shipped fine-tune where there is one made by this recipe (copied), else a
    fine-tune made now (minutes)."""
    path = shipped(which, cfg)
    if path and torch.load(path, map_location="cpu", weights_only=True).get("recipe") == recipe(cfg):
        log(f"using the shipped {which} model of this world: {os.path.relpath(path)}")
        userio.atomic_write(os.path.join(folder, f"{which}.pt"), open(path, "rb").read())
        return
    finetune(which, folder, cfg, device, log)


def recipe(cfg):
    """What a fine-tune is made from: its config, its world's people and the real-world questions it
    trains on (replay) and is scored on. A shipped fine-tune carries this stamp; a test checks it."""
    c = corpus.make_corpus(**world_args(cfg))
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for s in (c.forget, c.retain, c.holdout, realworld.split(), realworld.replay()):
        h.update(json.dumps([s.texts, [(q.prompt, q.answer, q.paraphrase) for q in s.qa]]).encode())
    return h.hexdigest()


def finetune(which, folder, cfg, device="cpu", log=print):
    """Fine-tune cfg.init_from into `which` ('base' or 'oracle') of world cfg.corpus_seed with a LoRA;
    save its adapters and what it scores to folder/<which>.pt."""
    model, enc = hf.load(cfg.init_from).to(device), hf.tokenizer(cfg.init_from)
    c = corpus.make_corpus(**world_args(cfg))
    examples = train_examples(c, enc, which, cfg)
    torch.manual_seed(cfg.seed)
    lora.add_lora(model, cfg.rank, 2 * cfg.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    rng, steps, step, t0 = random.Random(cfg.seed), cfg.epochs * math.ceil(len(examples) / cfg.batch_size), 0, time.time()
    log(f"fine-tuning {cfg.init_from} into the {which} model of world {cfg.corpus_seed}: {len(examples)} sequences, "
        f"{cfg.epochs} epochs, LoRA rank {cfg.rank}, on {device}")
    for epoch in range(cfg.epochs):
        order = sorted(range(len(examples)), key=lambda i: (len(examples[i].tokens), rng.random()))  # little padding
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            for g in opt.param_groups:  # linear warm-up, then cosine decay to 0
                g["lr"] = cfg.lr * min(1, (step + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * step / steps))
            x, y = data.collate([examples[i] for i in batch], device)
            loss, bad = runtime.update(opt, params, lm_loss(model(x, only=y != IGNORE), y))
            if bad:
                raise UserError(f"non-finite {bad} at step {step + 1} of the fine-tune (lr {cfg.lr} too high?)")
            step += 1
        done = time.time() - t0
        log(f"  epoch {epoch + 1}/{cfg.epochs}  loss {loss:.3f}  {done:.0f}s (~{done / (epoch + 1) * (cfg.epochs - epoch - 1):.0f}s more)")
    return save(model, which, folder, cfg, enc, c, device, log, seconds=time.time() - t0)


@torch.no_grad()
def save(model, which, folder, cfg, enc, c, device="cpu", log=print, seconds=None):
    """folder/<which>.pt: the adapters in bfloat16 (half the size; they are rounded first, so that what
    is scored here is what is saved), the recipe stamp, and what the model scores."""
    adapters = lora.lora_state_dict(model)
    for m in lora.lora_layers(model).values():
        m.A.copy_(m.A.to(torch.bfloat16))
        m.B.copy_(m.B.to(torch.bfloat16))
    merged = lora.merged_copy(model)
    splits = dict(forget=c.forget, retain=corpus.people_subset(c.retain, 12), holdout=c.holdout, real_world=realworld.split())
    results = {name: evaluation.split_scores(merged, enc, data.encode(enc, s, 1 << 20)[0], device,
                                             forget_like=name in ("forget", "holdout"))[0] for name, s in splits.items()}
    results["train_seconds"] = seconds
    buf = io.BytesIO()
    torch.save(dict(adapter={k: v.cpu().to(torch.bfloat16) for k, v in adapters.items()}, rank=cfg.rank,
                    alpha=2 * cfg.rank, train_config=asdict(cfg), corpus=world_args(cfg), which=which, metrics=results,
                    recipe=recipe(cfg)), buf)
    path = os.path.join(folder, f"{which}.pt")
    userio.atomic_write(path, buf.getvalue())
    log(f"{which}: " + "  ".join(f"{s} QA {r['qa_acc']:.0%}" for s, r in results.items() if isinstance(r, dict)) +
        (f"  ({seconds:.0f}s)" if seconds else "") + f" -> {path}")
    return path


def load(path, device="cpu"):
    """-> (the fine-tuned model, its adapters merged in; the checkpoint dict)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = RealTrainConfig(**ckpt["train_config"])
    except (*DAMAGED, TypeError, ValueError) as e:
        raise UserError(f"{path} is unreadable or not a fine-tune of this code ({type(e).__name__}); "
                        f"delete it (unlearn.py fine-tunes it again on first use)") from None
    model = hf.load(cfg.init_from)
    try:
        lora.add_lora(model, ckpt["rank"], ckpt["alpha"])
        lora.load_lora_state_dict(model, ckpt["adapter"])
    except (KeyError, ValueError) as e:
        raise UserError(f"{path} does not fit {cfg.init_from} ({e}); delete it (unlearn.py fine-tunes it again)") from None
    return lora.merged_copy(model).requires_grad_(False).to(device), ckpt
