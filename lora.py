"""LoRA written out (Hu et al., 2021; METHOD §2): a frozen Linear plus a trainable low-rank path,

    y = W x + s · B A x,    A: (r, in),  B: (out, r),  s = alpha / r.

Default init (loralib): A ~ Kaiming-uniform(a=√5), B = 0, so the model is unchanged at step 0.
PiSSA and FILA (fisher.py) instead start B A at a chosen rank-r piece of W and subtract it from the
frozen weight (W ← W − s·B₀A₀), which also leaves the model unchanged; init_residual does that and
remembers B₀, A₀ so that the adapter can be saved and loaded onto the original weights.
merged_copy folds the adapters into plain Linear layers (W + s·BA) for export.

Fused q/k/v: model.py keeps q, k and v as three Linear layers, so each gets its own adapter, as in the
paper (three rank-r adapters, not one rank-r adapter shared by a fused (3C, C) weight).
"""
import copy
import math

import torch
import torch.nn as nn

class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        out_f, in_f = base.weight.shape
        if not 0 < rank <= min(out_f, in_f):
            raise ValueError(f"LoRA rank must be in [1, {min(out_f, in_f)}] for a {out_f}x{in_f} layer, got {rank}")
        if alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {alpha}")
        self.base = base.requires_grad_(False)  # W (and its bias) stay frozen
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = base.weight
        self.A = nn.Parameter(torch.empty(rank, in_f, dtype=w.dtype, device=w.device))
        self.B = nn.Parameter(torch.zeros(out_f, rank, dtype=w.dtype, device=w.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.register_buffer("A0", None)  # set by init_residual: the piece of W that moved into B A
        self.register_buffer("B0", None)

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T  # (.., in) -> (.., r) -> (.., out)

    def delta(self):
        return self.scaling * self.B @ self.A  # s·BA: (out, in)

    @torch.no_grad()
    def original_weight(self):
        """The W this layer was built with: the frozen weight plus what a residual init took out."""
        return self.base.weight if self.B0 is None else self.base.weight + self.scaling * self.B0 @ self.A0

    @torch.no_grad()
    def init_residual(self, B, A):
        """Start the adapter at (B, A) and take s·BA out of the frozen weight: the layer's function
        is unchanged. (PiSSA; FILA with Fisher-weighted B, A.)"""
        self.base.weight.copy_(self.original_weight())  # undo an earlier residual init, if any
        self.A.copy_(A)
        self.B.copy_(B)
        self.A0, self.B0 = A.detach().clone().to(self.A), B.detach().clone().to(self.B)
        self.base.weight -= self.delta()

    def extra_repr(self):
        return f"rank={self.rank}, alpha={self.alpha}"


def add_lora(model, rank, alpha, layers=None):
    """Wrap the named Linear layers of every block (short names of model.lora_targets; default: all of
    them, the paper's q, k, v, o and the MLP's) with LoRALinear and freeze everything else. Never the
    embedding or the output head. Returns {module name: LoRALinear}."""
    targets = model.lora_targets
    if unknown := set(layers or ()) - set(targets):
        raise ValueError(f"unknown LoRA layers {sorted(unknown)}; choose from {list(targets)}")
    model.requires_grad_(False)
    for block in model.blocks:
        for short in layers or targets:
            parent_name, attr = targets[short].split(".")
            parent = getattr(block, parent_name)
            lora = LoRALinear(getattr(parent, attr), rank, alpha)
            setattr(parent, attr, lora)
    return lora_layers(model)


def lora_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state_dict(model):
    """Only the adapters: A and B, and A0/B0 where a residual init moved part of W into them."""
    return {f"{name}.{k}": v.detach().clone() for name, m in lora_layers(model).items()
            for k, v in (("A", m.A), ("B", m.B), ("A0", m.A0), ("B0", m.B0)) if v is not None}


@torch.no_grad()
def load_lora_state_dict(model, sd):
    """Load adapters saved by lora_state_dict onto a model freshly wrapped by add_lora (the original
    weights): residual inits are re-applied first, so the result equals the saved model."""
    layers = lora_layers(model)
    expected = {f"{n}.{k}" for n in layers for k in ("A", "B")}
    if missing := expected - set(sd):
        raise ValueError(f"adapter file lacks {sorted(missing)[:3]}: saved with other layers adapted?")
    if extra := {k for k in sd if k.rsplit(".", 1)[0] not in layers}:
        raise ValueError(f"adapter file has unexpected entries {sorted(extra)[:3]}")
    for name, m in layers.items():
        if m.A.shape != sd[f"{name}.A"].shape or m.B.shape != sd[f"{name}.B"].shape:
            raise ValueError(f"adapter {name} has rank {sd[f'{name}.A'].shape[0]}, the model {m.rank}")
        if f"{name}.A0" in sd:
            m.init_residual(sd[f"{name}.B0"], sd[f"{name}.A0"])
        m.A.copy_(sd[f"{name}.A"])
        m.B.copy_(sd[f"{name}.B"])


@torch.no_grad()
def merged_copy(model):
    """A plain GPT (no LoRALinear left) whose adapted weights are W + s·BA: for export or for
    fine-tuning further (relearn.py). The model itself is left as it is; so is every requires_grad."""
    out = copy.deepcopy(model)
    for name, m in lora_layers(out).items():
        parent_name, attr = name.rsplit(".", 1)
        m.base.weight += m.delta()
        setattr(out.get_submodule(parent_name), attr, m.base)
    return out

