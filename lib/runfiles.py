"""What an unlearning run leaves behind (out/<run>/), and reading it back (ask.py, relearn.py).

  config.json   the resolved configuration, the seed and the library versions
  metrics.json  every epoch's metrics on every split, forget quality, model utility, generations;
                no wall-clock times, so two runs with the same seed give identical bytes
  timing.json   the wall-clock times (total, at each evaluation, and in training steps alone)
  adapter.pt    the LoRA weights only (model.pt, the whole model, for full fine-tuning)
  state.pt      everything --resume needs (written at every evaluation): weights, optimizer, position, history
  plot.png      forget vs retain over the steps
Every file is written to a temporary name and renamed (userio.atomic_write): a killed run leaves each
file either complete or absent, never half-written.
"""
import argparse
import copy
import glob
import io
import json
import os
import platform
from dataclasses import asdict

import numpy as np
import tiktoken
import torch

import lora
from lib import data, hf, realmodel, report, tasks, userio
from lib.userio import DAMAGED, UserError


def trainable_state(model, adapter):
    return model.state_dict() if adapter == "full" else lora.lora_state_dict(model)


def torch_bytes(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def json_bytes(obj):
    return json.dumps(obj, indent=1).encode()


def save_state(cfg, start, state, model, optimizer):
    """state.pt: everything --resume needs to continue exactly where the run is (unlearn.run): the
    config, the start (evaluation.Start) and the run's state (runtime.RunState) as JSON-like data,
    the optimizer and the trained weights."""
    userio.atomic_write(os.path.join(cfg.out, "state.pt"), torch_bytes(dict(
        config=asdict(cfg), start=start.to_json(), state=state.to_json(), optimizer=optimizer.state_dict(),
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
    except DAMAGED as e:
        raise UserError(f"--resume {folder}: state.pt is unreadable ({type(e).__name__})") from None
    if not isinstance(saved, dict) or {"config", "start", "state", "optimizer", "weights"} - set(saved):
        raise UserError(f"--resume {folder}: state.pt is from another version of unlearn.py; start the run again")
    return saved


def save_run(model, results):
    """Every file of a finished (or stopped) run but state.pt, from its evaluation.RunResults."""
    cfg = results.config
    out = cfg["out"]
    versions = dict(python=platform.python_version(), torch=torch.__version__, numpy=np.__version__,
                    tiktoken=tiktoken.__version__)
    userio.atomic_write(os.path.join(out, "config.json"), json_bytes(dict(cfg, versions=versions)))
    userio.atomic_write(os.path.join(out, "metrics.json"), json_bytes(results.metrics_json()))
    userio.atomic_write(os.path.join(out, "timing.json"), json_bytes(results.timing_json()))
    name = "model.pt" if cfg["adapter"] == "full" else "adapter.pt"
    userio.atomic_write(os.path.join(out, name), torch_bytes(trainable_state(model, cfg["adapter"])))
    userio.atomic_write(os.path.join(out, "plot.png"), report.plot(results))


def load_run(folder, device="cpu"):
    """A run folder written by unlearn.py -> (its config, the starting model, the unlearned model with
    its adapters merged, the oracle or None (runs on your own files have none), the tokenizer). It
    only reads: where the starting models are missing, the error names the command that builds them."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise UserError(f"{folder} is not a run folder of unlearn.py: it has no config.json")
    try:
        cfg = json.load(open(path))
        weights = os.path.join(folder, "model.pt" if cfg["adapter"] == "full" else "adapter.pt")
    except (json.JSONDecodeError, KeyError, TypeError):
        raise UserError(f"{folder}/config.json was not written by unlearn.py") from None
    if not isinstance(cfg, dict) or {"rank", "alpha", "base_dir", "corpus_seed"} - set(cfg):
        raise UserError(f"{folder}/config.json was not written by unlearn.py")
    if not os.path.exists(weights):
        raise UserError(f"{folder} has no {os.path.basename(weights)}: the run did not finish saving")
    oracle = None
    if cfg.get("init_from") and cfg.get("forget_file"):
        base = hf.load(cfg["init_from"]).to(device)
        enc = hf.tokenizer(cfg["init_from"])
    elif cfg.get("init_from"):  # the built-in world on a real model: its fine-tuned base and oracle
        base, oracle, ckpt = tasks.load_real_world(realmodel.world_dir(cfg["base_dir"], cfg["init_from"], cfg["corpus_seed"]),
                                                   argparse.Namespace(**cfg), lambda line: None)
        enc = hf.tokenizer(cfg["init_from"])
        cfg["world"] = ckpt["corpus"]
    else:
        base, oracle, ckpt = tasks.load_world(tasks.world_dir(cfg["base_dir"], cfg["corpus_seed"]), cfg["corpus_seed"], device)
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
    """The unlearned model, adapters merged in, as a Hugging Face folder of its family (GPT-2 or Llama):
    the config it was loaded from (if any), model.safetensors, and the tokenizer files of the
    checkpoint it came from (hf.tokenizer_files)."""
    for name, blob in hf.files(lora.merged_copy(model), getattr(model, "hf_config", None)).items():
        userio.atomic_write(os.path.join(folder, name), blob)
    if getattr(model, "source", None):
        for name, blob in hf.tokenizer_files(model.source).items():
            userio.atomic_write(os.path.join(folder, name), blob)
