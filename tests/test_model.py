import json
import math

import pytest
import torch
import torch.nn.functional as F

from lib import hf
from lib.userio import UserError
from model import GPT, GPTConfig, IGNORE, lm_loss, token_nll

TINY = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=16)


def tiny_model(seed=0, cfg=TINY):
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def test_forward_shape():
    m = tiny_model()
    assert m(torch.randint(0, 50, (3, 7))).shape == (3, 7, 50)


def test_causal():
    m = tiny_model()
    x = torch.randint(0, 50, (2, 12))
    x2 = x.clone()
    x2[:, 8] = (x2[:, 8] + 1) % 50  # change a future token
    a, b = m(x), m(x2)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_weights_tied():
    m = tiny_model()
    assert m.lm_head.weight is m.transformer.wte.weight
    lm_loss(m(torch.randint(0, 50, (2, 5))), torch.randint(0, 50, (2, 5))).backward()
    assert m.transformer.wte.weight.grad is not None


def test_too_long_is_a_clear_error():
    with pytest.raises(ValueError, match="block_size"):
        tiny_model()(torch.zeros(1, 17, dtype=torch.long))


def test_token_nll_matches_hand_computation_and_ignores_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6, dtype=torch.float64)
    targets = torch.tensor([[1, IGNORE, 3, 0], [IGNORE, IGNORE, 5, 2]])
    nll, mask = token_nll(logits, targets)
    for b in range(2):
        for t in range(4):
            y = targets[b, t].item()
            want = 0.0 if y == IGNORE else -(logits[b, t, y] - torch.logsumexp(logits[b, t], 0)).item()
            assert math.isclose(nll[b, t].item(), want, rel_tol=1e-6, abs_tol=1e-7)
    assert mask.tolist() == [[True, False, True, True], [False, False, True, True]]
    assert math.isclose(lm_loss(logits, targets).item(), nll.sum().item() / 5, rel_tol=1e-6)
    # changing an ignored position's logits changes nothing
    logits2 = logits.clone()
    logits2[0, 1] += 100
    assert lm_loss(logits2, targets).item() == lm_loss(logits, targets).item()


def test_generate_greedy_matches_step_by_step_argmax():
    """The key/value cache gives the same tokens as recomputing the whole sequence each step,
    also past block_size, where the context is cropped."""
    m = tiny_model()
    x = torch.randint(0, 50, (3, 5))
    out = m.generate(x, 20, temperature=0)
    ref = x
    for _ in range(20):
        nxt = m(ref[:, -TINY.block_size:])[:, -1].argmax(-1, keepdim=True)
        ref = torch.cat([ref, nxt], 1)
    assert torch.equal(out, ref)
    # with a stop token: the same tokens, ending as soon as every row has produced it
    stop = ref[0, 6].item()  # the first row's second new token
    done = next(k for k in range(6, 26) if (ref[0, 5:k] == stop).any())
    assert torch.equal(m.generate(x[:1], 20, temperature=0, stop=stop), ref[:1, :done]) and done < 25
    assert torch.equal(m.generate(x, 20, temperature=0, stop=stop), ref)  # not every row stops here


def test_several_tokens_after_a_filled_cache_see_what_a_full_forward_sees():
    """Feeding a sequence in chunks through the key/value cache gives the logits of one forward pass,
    also for chunks of several tokens after the first (each new token sees the cache and the new
    tokens before it, none after)."""
    m = tiny_model()
    x = torch.randint(0, 50, (2, 12))
    cache = [dict() for _ in m.transformer.h]
    chunks = [m(x[:, a:b], cache) for a, b in ((0, 5), (5, 9), (9, 10), (10, 12))]
    assert (torch.cat(chunks, 1) - m(x)).abs().max() < 1e-5


def test_generate_sampling_is_seeded():
    m = tiny_model()
    x = torch.randint(0, 50, (2, 3))
    torch.manual_seed(5)
    a = m.generate(x, 10, temperature=0.8, top_k=5)
    torch.manual_seed(5)
    b = m.generate(x, 10, temperature=0.8, top_k=5)
    assert torch.equal(a, b) and a.shape == (2, 13)


# ----------------------------------------------------------------------------- Hugging Face files
def hf_state_dict(seed=0, n_layer=2, n_embd=16, vocab=50, n_pos=16):
    """Random weights in Hugging Face's GPT-2 layout: Conv1D weights are (in, out), q/k/v fused."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.2
    sd = {"transformer.wte.weight": r(vocab, n_embd), "transformer.wpe.weight": r(n_pos, n_embd),
          "transformer.ln_f.weight": 1 + r(n_embd), "transformer.ln_f.bias": r(n_embd)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + r(n_embd), r(n_embd)
        for name, (din, dout) in {"attn.c_attn": (n_embd, 3 * n_embd), "attn.c_proj": (n_embd, n_embd),
                                  "mlp.c_fc": (n_embd, 4 * n_embd), "mlp.c_proj": (4 * n_embd, n_embd)}.items():
            sd[p + name + ".weight"], sd[p + name + ".bias"] = r(din, dout), r(dout)
    return sd


def write_hf_checkpoint(path, sd, fmt="safetensors", n_layer=2, n_head=2, n_embd=16, vocab=50, n_pos=16, **extra):
    path.mkdir(parents=True, exist_ok=True)
    cfg = dict(model_type="gpt2", n_layer=n_layer, n_head=n_head, n_embd=n_embd, vocab_size=vocab,
               n_positions=n_pos, activation_function="gelu_new", layer_norm_epsilon=1e-5, n_inner=None)
    (path / "config.json").write_text(json.dumps({**cfg, **extra}))
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path / "model.safetensors"))
    else:  # the original GPT-2 .bin files: no "transformer." prefix, plus causal-mask buffers
        old = {k.removeprefix("transformer."): v for k, v in sd.items()}
        for i in range(n_layer):
            old[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n_pos, n_pos)).view(1, 1, n_pos, n_pos)
            old[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
        torch.save(old, path / "pytorch_model.bin")
    return path


def reference_gpt2_logits(sd, idx, n_layer=2, n_head=2):
    """GPT-2's forward pass written directly from the Hugging Face tensors in float64: an
    independent reference that shares no code with model.py."""
    w = {k.removeprefix("transformer."): v.double() for k, v in sd.items()}
    T = idx.shape[1]
    x = w["wte.weight"][idx] + w["wpe.weight"][:T]
    ln = lambda x, p: F.layer_norm(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"], 1e-5)
    conv1d = lambda x, p: x @ w[p + ".weight"] + w[p + ".bias"]
    C = x.shape[-1]
    hs = C // n_head
    for i in range(n_layer):
        p = f"h.{i}."
        q, k, v = conv1d(ln(x, p + "ln_1"), p + "attn.c_attn").split(C, dim=-1)
        heads = lambda t: t.view(*t.shape[:2], n_head, hs).transpose(1, 2)
        att = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(hs)
        att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf")).softmax(-1)
        y = (att @ heads(v)).transpose(1, 2).reshape(*x.shape)
        x = x + conv1d(y, p + "attn.c_proj")
        h = conv1d(ln(x, p + "ln_2"), p + "mlp.c_fc")
        h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))  # gelu_new
        x = x + conv1d(h, p + "mlp.c_proj")
    return ln(x, "ln_f") @ w["wte.weight"].T


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_hf_load_matches_float64_reference(tmp_path, fmt):
    sd = hf_state_dict()
    m = hf.load(str(write_hf_checkpoint(tmp_path / fmt, sd, fmt))).eval()
    idx = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        assert (m(idx).double() - reference_gpt2_logits(sd, idx)).abs().max() < 1e-4


def test_hf_load_names_bad_keys(tmp_path):
    sd = hf_state_dict()
    del sd["transformer.h.1.mlp.c_fc.bias"]
    with pytest.raises(UserError, match=r"missing 'h\.1\.mlp\.c_fc\.bias'"):
        hf.load(str(write_hf_checkpoint(tmp_path / "a", sd)))
    sd = hf_state_dict()
    sd["transformer.h.0.attn.extra.weight"] = torch.zeros(2)
    with pytest.raises(UserError, match=r"unexpected keys: h\.0\.attn\.extra\.weight"):
        hf.load(str(write_hf_checkpoint(tmp_path / "b", sd)))
    sd = hf_state_dict()
    sd["lm_head.weight"] = sd.pop("transformer.wte.weight")  # the head is there, the embedding not
    with pytest.raises(UserError, match=r"missing 'wte\.weight'"):
        hf.load(str(write_hf_checkpoint(tmp_path / "d", sd)))
    with pytest.raises(UserError, match="activation_function"):
        hf.load(str(write_hf_checkpoint(tmp_path / "c", hf_state_dict(), activation_function="relu")))


def test_hf_load_missing_files_are_clear(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="config.json"):
        hf.load(str(tmp_path / "empty"))
    (tmp_path / "badconfig").mkdir()
    (tmp_path / "badconfig" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="lacks n_positions"):
        hf.load(str(tmp_path / "badconfig"))
    path = write_hf_checkpoint(tmp_path / "noweights", hf_state_dict())
    (path / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors or pytorch_model.bin"):
        hf.load(str(path))
    with pytest.raises(UserError, match="into a folder"):
        hf.load(str(tmp_path / "no-such-model"))


def test_matches_huggingface_gpt2(tmp_path):
    """A checkpoint saved by transformers' own GPT2LMHeadModel: same logits, same greedy tokens."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    theirs = transformers.GPT2LMHeadModel(cfg).eval()
    theirs.save_pretrained(tmp_path)
    ours = hf.load(str(tmp_path)).eval()
    idx = torch.randint(0, 100, (3, 20))
    with torch.no_grad():
        assert (theirs(idx).logits - ours(idx)).abs().max() < 1e-4
        want = theirs.generate(idx[:, :4], max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert torch.equal(ours.generate(idx[:, :4], 24, temperature=0), want)


def test_logits_at_the_targets_alone_give_the_same_losses_and_gradients():
    """forward(only=mask) runs the head where there is a target: the same rows as the full logits, and
    token_nll, lm_loss and their gradients unchanged (each target row computed alone, put back in place)."""
    m = tiny_model().double()
    x, y = torch.randint(0, 50, (3, 9)), torch.randint(0, 50, (3, 9))
    y[:, :4] = IGNORE
    y[1, 6] = IGNORE
    keep = y != IGNORE
    full, part = m(x), m(x, only=keep)
    assert part.shape == (int(keep.sum()), 50) and torch.allclose(part, full[keep], atol=1e-12)
    nll_full, mask = token_nll(full, y)
    nll_part, mask2 = token_nll(part, y)
    assert torch.equal(mask, mask2) and torch.allclose(nll_full, nll_part, atol=1e-12)
    grads = [torch.autograd.grad(lm_loss(m(x, only=o), y), list(m.parameters())) for o in (None, keep)]
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(*grads))
