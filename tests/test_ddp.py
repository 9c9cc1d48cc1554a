"""torchrun with 2 processes (gloo, CPU) gives the same metrics and adapter as one process with
the same global batch, up to float summation order; also when a batch is smaller than the number of
processes (one of them then has no example of its own, and must still join every all-reduce)."""
import json
import os
import subprocess
import sys

import pytest
import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numbers(obj):
    """Every number in a nested JSON value, in order."""
    if isinstance(obj, dict):
        return [x for k in sorted(obj) for x in numbers(obj[k])]
    if isinstance(obj, list):
        return [x for v in obj for x in numbers(v)]
    return [float(obj)] if isinstance(obj, (int, float)) and not isinstance(obj, bool) else []


# The tiny world has 10 forget sequences: batches of 4 are 4, 4, 2 (two per process); batches of 3
# end with a batch of 1, which leaves the second process with an empty shard of both batches.
@pytest.mark.parametrize("adapter,batch_size", [("lora", 4), ("fila", 3)])
def test_two_processes_match_one(base_dir, tmp_path, adapter, batch_size):
    args = ["unlearn.py", "--base_dir", str(base_dir), "--epochs", "2", "--batch_size", str(batch_size),
            "--lr", "1e-2", "--no_stop", "--adapter", adapter, "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--out", str(tmp_path / "two")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)  # a process left out of an all-reduce would wait forever
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved to") == 1  # only rank 0 prints and writes
    assert "data parallel over 2 processes" in two.stdout
    m1, m2 = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    for key in ("history", "end", "start"):
        a, b = numbers(m1[key]), numbers(m2[key])
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-4, key
    w1, w2 = (torch.load(tmp_path / r / "adapter.pt", weights_only=True) for r in ("one", "two"))
    assert w1.keys() == w2.keys()
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    scale = max(w1[k].abs().max().item() for k in w1)
    print(f"largest adapter difference {diff:.2e} (largest weight {scale:.2f})")
    # LoRA: the sharded gradient is the single-process one, up to float32 summation order (measured
    # 1e-7). FILA also sums the Fisher over the ranks in another order, and its SVD turns those
    # last-bit differences into ~1e-4 of the weights (measured 7e-5) before two epochs of training.
    assert diff < (1e-5 if adapter == "lora" else 1e-3 * scale)
