"""The Llama block (model.py, METHOD §8) against transformers' LlamaForCausalLM at random init, the
Hugging Face folder loader and writer, and LoRA and FILA on it. Tiny models, offline, seconds."""
import json

import pytest
import torch

import fisher
import lora
from lib import hf
from lib.userio import UserError
from model import GPT, LlamaConfig

transformers = pytest.importorskip("transformers")

SHAPES = {  # name: (n_head, n_kv_head, tie, rope θ)
    "gqa-tied": (4, 2, True, 1e4),
    "mha-untied": (4, 4, False, 1e5),
}


def hf_llama(tmp_path, n_head=4, n_kv=2, tie=True, theta=1e4, seed=0, shard=None):
    """A random-init LlamaForCausalLM saved as a Hugging Face folder; -> (folder, the transformers model)."""
    cfg = transformers.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                                   num_attention_heads=n_head, num_key_value_heads=n_kv, max_position_embeddings=64,
                                   rope_theta=theta, rms_norm_eps=1e-5, tie_word_embeddings=tie)
    torch.manual_seed(seed)
    ref = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norms away from 1, so that their weights are tested too
        for name, p in ref.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path / "hf"
    ref.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    return folder, ref


@pytest.mark.parametrize("shape", SHAPES)
def test_llama_logits_and_cache_equal_transformers(tmp_path, shape):
    n_head, n_kv, tie, theta = SHAPES[shape]
    folder, ref = hf_llama(tmp_path, n_head, n_kv, tie, theta)
    m = hf.load(str(folder))
    assert m.config.n_kv_head == n_kv and m.config.tie_head == tie and m.config.rope_theta == theta
    assert (m.lm_head.weight is m.transformer.wte.weight) == tie
    x = torch.randint(0, 97, (3, 20))
    with torch.no_grad():
        want = ref(x).logits
        assert (m(x) - want).abs().max() < 1e-5
        cache = m.new_cache()  # fed in chunks through the key/value cache: the same logits
        chunks = [m(x[:, a:b], cache) for a, b in ((0, 7), (7, 8), (8, 20))]
        assert (torch.cat(chunks, 1) - want).abs().max() < 1e-5


def test_llama_greedy_generation_equals_transformers(tmp_path):
    folder, ref = hf_llama(tmp_path)
    m = hf.load(str(folder))
    x = torch.randint(0, 97, (2, 6))
    ours = m.generate(x, 12, temperature=0)
    theirs = ref.generate(x, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_sharded_folder_and_export_reload_in_transformers(tmp_path):
    folder, ref = hf_llama(tmp_path, tie=False, theta=1e5, shard="40KB")
    assert (folder / "model.safetensors.index.json").exists()
    m = hf.load(str(folder))
    out = tmp_path / "export"
    out.mkdir()
    for name, blob in hf.files(m, m.hf_config).items():
        (out / name).write_bytes(blob)
    again = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    x = torch.randint(0, 97, (2, 15))
    with torch.no_grad():
        assert (again(x).logits - ref(x).logits).abs().max() < 1e-5
    reloaded = hf.load(str(out))  # and our own reader reads our writer back exactly
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), reloaded.state_dict().values()))


def test_unsupported_llama_variants_are_one_line_errors(tmp_path):
    folder, _ = hf_llama(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in (("rope_scaling", {"rope_type": "llama3", "factor": 8.0}), ("attention_bias", True),
                       ("rope_parameters", {"rope_type": "llama3", "rope_theta": 5e5}), ("model_type", "mistral")):
        (folder / "config.json").write_text(json.dumps(cfg | {key: value}))
        with pytest.raises(UserError, match=key):
            hf.load(str(folder))
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        hf.load(str(folder))


def test_lora_and_fila_on_a_llama_block():
    """The adapters go on q, k, v, o, gate, up, down (GQA's k and v are narrower); the merged copy
    computes the adapted forward, and FILA (like PiSSA) leaves the model unchanged at step 0."""
    torch.manual_seed(0)
    cfg = LlamaConfig(block_size=32, vocab_size=61, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, n_hidden=48)
    m = GPT(cfg).eval()
    x = torch.randint(0, 61, (2, 12))
    before = m(x).detach()
    layers = lora.add_lora(m, rank=3, alpha=6)
    assert sorted({n.split(".", 3)[3] for n in layers}) == sorted(m.lora_targets.values())
    assert layers["transformer.h.0.attn.c_k"].B.shape == (16, 3)  # 2 KV heads of size 8
    batch = lambda seed: [(torch.randint(0, 61, (9,), generator=torch.Generator().manual_seed(seed + i)).tolist(),
                           [False] * 3 + [True] * 6) for i in range(4)]
    ff = fisher.fisher_diagonal(m, [batch(0)[:2], batch(0)[2:]])
    fr = fisher.fisher_diagonal(m, [batch(10)[:2], batch(10)[2:]])
    fisher.init_adapters(m, "fila", ff, fr)
    assert (m(x) - before).abs().max() < 1e-5
    for layer in layers.values():
        torch.nn.init.normal_(layer.A, std=0.1)
    adapted = m(x)
    assert (adapted - before).abs().max() > 1e-3
    assert (lora.merged_copy(m)(x) - adapted).abs().max() < 1e-5
