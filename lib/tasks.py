"""What to unlearn: the starting model, the data, and what to measure.

- builtin_task: the built-in corpus (corpus.py) and its base model and oracle, fine-tuned on first
  use (finetune_missing, which says so; load_world only reads).
- file_task: the user's own text, as in the paper's Training Data Extraction setting: --forget_file,
  --retain_file, --holdout_file (plain text, one sequence per line, or JSONL; data.load_file), on a
  real checkpoint (--init_from: a GPT-2 or Llama folder, a .gguf file, smollm2-135m; hf.load) or on
  the built-in base model.
unlearn.py only sees the Task, so the loop is the same for both.
"""
import hashlib
import json
import os
import time
from dataclasses import dataclass, field, replace

import train
from lib import corpus, data, evaluation, hf, metrics, realmodel, realworld, userio
from lib.userio import UserError
from model import GPT


@dataclass
class Task:
    model: GPT                  # the starting model; its checkpoint on disk is only ever read
    enc: object                 # the tiktoken Encoding that goes with it
    forget: list                # training examples, (tokens, is_target), of the forget set D_f
    retain: list                # training examples of D_r, sampled for the retain term
    scored: dict                # split name -> data.Encoded, scored at every evaluation ("forget" first)
    holdout: data.Encoded = None  # unseen data of the same kind: the stopping rule's thresholds
    oracle: GPT = None          # a model trained without D_f: judges fluency
    oracle_ratios: list = None  # its truth ratios on the forget questions (forget quality)
    oracle_forget: dict = None  # its scores on the forget split, and its membership-inference AUC
    prompts: list = field(default_factory=list)  # [(whose, token prompt)] whose greedy answers are shown
    utility_splits: tuple = ()  # the splits model utility is computed on
    cache_dir: str = None       # where measurements of the fixed models are kept (built-in worlds)

    def cached(self, name, compute):
        """compute(), or its JSON-stored result from an earlier run: the starting model and the oracle
        never change, so what is measured on them once holds for every run of their world."""
        if self.cache_dir is None:
            return compute()
        return json_cache(os.path.join(self.cache_dir, f"{name}.json"), compute)


# The code a cached measurement depends on besides the checkpoints: edit any of it and the
# measurements are taken again. Hashed as this process loaded it (at import), not as the files are later.
MEASURING_CODE = ("lib/corpus.py", "lib/data.py", "model.py", "lib/metrics.py", "lib/evaluation.py", "lib/tasks.py",
                  "lib/vocab.py", "lib/llama_files.py", "lib/hf.py", "lib/realworld.py", "assets/real_world.json")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def source_hash(files):
    h = hashlib.sha256()
    for f in files:
        with open(os.path.join(REPO, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


CODE_HASH = source_hash(MEASURING_CODE)


def content_key(folder):
    """sha256 of the folder's base.pt and oracle.pt and of the measuring code's source files."""
    h = hashlib.sha256(CODE_HASH.encode())
    for w in ("base", "oracle"):
        with open(os.path.join(folder, f"{w}.pt"), "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def json_cache(path, compute):
    """compute(), or the value stored at path if it was computed from the same checkpoints with the
    same code (content_key of the folder the file sits in)."""
    key = content_key(os.path.dirname(path))
    if os.path.exists(path):
        saved = json.load(open(path))
        if saved.get("key") == key:
            return saved["value"]
    value = compute()
    userio.atomic_write(path, json.dumps(dict(key=key, value=value)).encode())
    return json.loads(json.dumps(value))  # the same types as a cached value: lists, not tuples


def world_dir(base_dir, corpus_seed):
    """Where the base model and the oracle of one world (corpus seed) live: side by side per seed."""
    return os.path.join(base_dir, f"world{corpus_seed}")


def finetune_missing(folder, log, finetune):
    """finetune(which) for whichever of the world's base model and oracle is not in `folder` yet,
    saying so: unlearn.py does this on a world's first use."""
    missing = [w for w in ("base", "oracle") if not os.path.exists(os.path.join(folder, f"{w}.pt"))]
    if missing:
        log(f"first use: fine-tuning the pretrained model into the {' and the '.join(missing)} model of this world, "
            f"in {folder}/")
    for which in missing:
        finetune(which)


def load_real_world(folder, cfg, log):
    """-> (base model, oracle, the base checkpoint's dict) of the built-in world on a real model."""
    for which in ("base", "oracle"):
        if not os.path.exists(os.path.join(folder, f"{which}.pt")):
            raise UserError(f"{folder}/{which}.pt does not exist: python train.py --init_from {cfg.init_from} "
                            f"--corpus_seed {cfg.corpus_seed} builds it (unlearn.py does on the world's first use)")
    log(f"loading the base model and the oracle of {folder}/ ...")
    t0 = time.time()
    base, ckpt = realmodel.load(os.path.join(folder, "base.pt"), cfg.device)
    oracle, _ = realmodel.load(os.path.join(folder, "oracle.pt"), cfg.device)
    if ckpt["corpus"]["seed"] != cfg.corpus_seed:
        raise UserError(f"{folder}/base.pt was fine-tuned on corpus seed {ckpt['corpus']['seed']}, not {cfg.corpus_seed}")
    if ckpt["train_config"]["init_from"].lower() != cfg.init_from.lower():
        raise UserError(f"{folder}/base.pt is a fine-tune of {ckpt['train_config']['init_from']!r}, not of "
                        f"{cfg.init_from!r}; give --base_dir another folder")
    log(f"loaded: {time.time() - t0:.1f}s")
    return base, oracle, ckpt


def load_world(folder, corpus_seed, device, small=False):
    """-> (base model, oracle, the base checkpoint's dict) of a built-in world, only read: a missing
    model is an error that names the command that builds it."""
    for which in ("base", "oracle"):
        if not os.path.exists(os.path.join(folder, f"{which}.pt")):
            raise UserError(f"{folder}/{which}.pt does not exist: python train.py --corpus_seed {corpus_seed}"
                            f"{' --small' if small else ''} --out {folder} builds it (unlearn.py does on the world's first use)")
    base, ckpt = train.load_checkpoint(os.path.join(folder, "base.pt"), device)
    oracle, _ = train.load_checkpoint(os.path.join(folder, "oracle.pt"), device)
    if ckpt["corpus"]["seed"] != corpus_seed:
        raise UserError(f"{folder}/base.pt was trained on corpus seed {ckpt['corpus']['seed']}, not "
                        f"{corpus_seed}; delete it (unlearn.py trains it again on first use)")
    return base, oracle, ckpt


def builtin_world(cfg, log):
    """World cfg.corpus_seed of the built-in model, fine-tuned on its first use -> (its folder, base
    model, oracle, the base checkpoint's dict, tokenizer)."""
    world = world_dir(cfg.base_dir, cfg.corpus_seed)
    tcfg = replace(train.TrainConfig(), corpus_seed=cfg.corpus_seed)
    finetune_missing(world, log, lambda which: train.finetune(which, world, tcfg, device=cfg.device, log=log))
    model, oracle, ckpt = load_world(world, cfg.corpus_seed, cfg.device)
    return world, model, oracle, ckpt, data.get_tokenizer(ckpt["tokenizer"])


def builtin_task(cfg, log):
    """The built-in world: on the built-in model (general facts and pretraining people scored beside the
    world's people), or on a real model (--init_from without files: realmodel.py; the real-world
    questions scored)."""
    if cfg.init_from:
        world = realmodel.world_dir(cfg.base_dir, cfg.init_from, cfg.corpus_seed)
        rcfg = replace(realmodel.RealTrainConfig(), init_from=cfg.init_from, corpus_seed=cfg.corpus_seed)
        finetune_missing(world, log, lambda which: realmodel.provide(which, world, rcfg, cfg.device, log))
        model, oracle, ckpt = load_real_world(world, cfg, log)
        enc = hf.tokenizer(cfg.init_from)
        extra = dict(real_world=realworld.split())
    else:
        world, model, oracle, ckpt, enc = builtin_world(cfg, log)
        people, general = corpus.pretraining_corpus()
        extra = dict(general=general, pretraining=corpus.people_subset(people, cfg.eval_retain))
    c = corpus.make_corpus(**ckpt["corpus"])
    encode = lambda split: data.encode(enc, split, model.config.block_size)[0]
    splits = {s: encode(getattr(c, s)) for s in ("forget", "retain", "holdout")}
    scored = dict(forget=splits["forget"], retain=encode(corpus.people_subset(c.retain, cfg.eval_retain)),
                  **{name: encode(split) for name, split in extra.items()})

    def oracle_reference():  # what exact unlearning scores on the forget split (MA, EL_n, QA, truth ratios, MIA AUC)
        report, ratios, _ = evaluation.split_scores(oracle, enc, splits["forget"], cfg.device, True, cfg.el_n)
        report["mia_auc"] = metrics.mia_auc(metrics.text_nll(oracle, splits["forget"].texts, device=cfg.device),
                                            metrics.text_nll(oracle, splits["holdout"].texts, device=cfg.device))
        return report, ratios.tolist()

    oracle_forget, oracle_ratios = json_cache(os.path.join(world, f"oracle-el{cfg.el_n}-{cfg.device.split(':')[0]}.json"),
                                          oracle_reference)
    # D_r, the retain term's data, is the retain people, as TOFU's retain set. The general facts and
    # the pretraining people are scored, not trained on: unlearning has to leave them alone by itself.
    prompts = [("a forget person", splits["forget"].qa[0][0]), ("a retain person", splits["retain"].qa[0][0])]
    if "real_world" in scored:
        prompts.append(("a real-world question", scored["real_world"].qa[0][0]))
    return Task(model, enc, forget=data.training_examples(splits["forget"]),
                retain=data.training_examples(splits["retain"]),
                scored=scored, holdout=splits["holdout"], oracle=oracle, oracle_ratios=oracle_ratios,
                oracle_forget=oracle_forget, prompts=prompts, utility_splits=("retain", *extra), cache_dir=world)


def file_task(cfg, log):
    if cfg.init_from:
        model = load_checkpoint(cfg.init_from, cfg.device, log)
        enc = hf.tokenizer(cfg.init_from)
    else:
        _, model, _, _, enc = builtin_world(cfg, log)
    if enc.n_vocab > model.config.vocab_size:
        raise UserError(f"the tokenizer has {enc.n_vocab} tokens but the model only {model.config.vocab_size}")
    B = model.config.block_size
    files = {name: data.load_file(path, f"--{name}_file") for name, path in
             (("forget", cfg.forget_file), ("retain", cfg.retain_file), ("holdout", cfg.holdout_file)) if path}
    if "retain" in files:
        both = (set(files["retain"].texts) & set(files["forget"].texts)) | \
               ({q.prompt + q.answer for q in files["retain"].qa} & {q.prompt + q.answer for q in files["forget"].qa})
        if both:
            log(f"warning: {len(both)} sequences of --retain_file are also in --forget_file: "
                f"they are left out of the retain set")
            r = files["retain"]
            files["retain"] = corpus.Split(texts=[t for t in r.texts if t not in both],
                                           qa=[q for q in r.qa if q.prompt + q.answer not in both])
    elif cfg.retain_weight:
        raise UserError(f"--loss {cfg.loss} has a retain term: give --retain_file, or --retain_weight 0")
    encoded, cut = {}, 0
    for name, split in files.items():
        encoded[name], n = data.encode(enc, split, B)
        cut += n
    if cut:
        log(f"{cut} sequences are longer than the model's {B} tokens: cut into windows of {B}")
    if "holdout" not in encoded:
        log("no --holdout_file: no stopping rule (it compares the forget set with unseen data)")
    scored = {name: e for name, e in encoded.items() if name != "holdout"}
    if "retain" in scored and cfg.eval_retain > 0:  # score the first eval_retain sequences each epoch
        r = scored["retain"]
        scored["retain"] = data.Encoded(r.texts[:cfg.eval_retain], r.qa[:cfg.eval_retain], r.paraphrased[:cfg.eval_retain])
    prompts = [(f"from --{name}_file", first_prompt(e)) for name, e in scored.items()]
    return Task(model, enc, forget=data.training_examples(encoded["forget"]),
                retain=data.training_examples(encoded["retain"]) if "retain" in encoded else [],
                scored=scored, holdout=encoded.get("holdout"), prompts=prompts,
                utility_splits=tuple(s for s in ("retain",) if s in scored and scored[s].qa))


def load_checkpoint(path, device, log):
    """hf.load, saying what it is doing: a real model takes seconds to read (SmolLM2-135M: ~6 s)."""
    log(f"loading {path} ...")
    t0 = time.time()
    model = hf.load(path).to(device)
    c = model.config
    log(f"loaded {path}: {c.arch}, {c.n_layer} layers, width {c.n_embd}, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, {time.time() - t0:.1f}s")
    return model


def first_prompt(encoded):
    """A prompt to show the model's greedy answer to: the first question, or the first half of the
    first text (at most 32 tokens)."""
    if encoded.qa:
        return encoded.qa[0][0]
    t = encoded.texts[0]
    return t[:min(32, max(1, len(t) // 2))]


def make_task(cfg, log):
    """What unlearn.run unlearns: the user's files (--forget_file) or the built-in world."""
    return file_task(cfg, log) if cfg.forget_file else builtin_task(cfg, log)
