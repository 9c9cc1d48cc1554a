"""The user's own model and files (tasks.file_task), offline: the tiny trained base of
test_unlearn_run is exported as a Hugging Face GPT-2 folder, with a vocab.json that encodes our BPE
vocabulary the way GPT-2's does, and then unlearned from text/JSONL files with --init_from."""
import json

import pytest
import torch

import unlearn
from lib import corpus, data, hf, runfiles


def write_vocab_json(enc, path):
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    to_str = {b: chr(b) for b in printable} | {b: chr(256 + k) for k, b in enumerate(others)}
    vocab = {"".join(to_str[b] for b in tok): rank for tok, rank in enc._mergeable_ranks.items()}
    path.write_text(json.dumps(vocab | {"<|endoftext|>": enc.eot_token}))


@pytest.fixture(scope="module")
def hf_folder(base_dir, tmp_path_factory):
    import train
    model, _ = train.load_checkpoint(str(base_dir / "world0" / "base.pt"))
    folder = tmp_path_factory.mktemp("hf")
    for name, blob in hf.files(model).items():
        (folder / name).write_bytes(blob)
    write_vocab_json(data.get_tokenizer(), folder / "vocab.json")
    return folder, model


def test_hf_round_trip_is_exact(hf_folder, tmp_path):
    folder, model = hf_folder
    loaded = hf.load(str(folder))
    for name, blob in hf.files(loaded, loaded.hf_config).items():  # load -> save -> load
        (tmp_path / name).write_bytes(blob)
    again = hf.load(str(tmp_path))
    x = torch.randint(0, 1700, (2, 20))
    assert torch.equal(model(x), loaded(x)) and torch.equal(loaded(x), again(x))
    assert data.get_tokenizer("gpt2", str(folder)).encode_ordinary("Bio: x") == \
        data.get_tokenizer().encode_ordinary("Bio: x")


def write_user_files(tmp_path, overlap=False):
    c = corpus.make_corpus(seed=0, n_people=10, forget_frac=0.2)
    qa = lambda q: json.dumps(dict(prompt=q.prompt, answer=q.answer, perturbed=q.perturbed))
    (tmp_path / "forget.jsonl").write_text("\n".join([json.dumps({"text": t}) for t in c.forget.texts] +
                                                     [qa(q) for q in c.forget.qa]) + "\n")
    retain = [json.dumps({"text": t}) for t in c.retain.texts] + [qa(q) for q in c.retain.qa]
    if overlap:
        retain.append(json.dumps({"text": c.forget.texts[0]}))
    (tmp_path / "retain.jsonl").write_text("\n".join(retain) + "\n")
    (tmp_path / "holdout.txt").write_text("\n".join(c.holdout.texts) + "\n" + " Quellport" * 80 + "\n")
    return c


def test_unlearn_a_hugging_face_model_from_files(hf_folder, tmp_path):
    folder, model = hf_folder
    write_user_files(tmp_path, overlap=True)
    lines = []
    cfg = unlearn.UnlearnConfig(init_from=str(folder), forget_file=str(tmp_path / "forget.jsonl"),
                                retain_file=str(tmp_path / "retain.jsonl"), holdout_file=str(tmp_path / "holdout.txt"),
                                lr=1e-2, epochs=4, batch_size=4, no_stop=True, out=str(tmp_path / "run"), device="cpu")
    unlearned, r = unlearn.run(cfg, log=lines.append)
    assert any("1 sequences of --retain_file are also in --forget_file" in ln for ln in lines)
    assert any("1 sequences are longer than the model's 64 tokens" in ln for ln in lines)
    h = r.history
    assert h[0].forget["qa_acc"] >= 0.9 and h[-1].forget["qa_acc"] <= h[0].forget["qa_acc"] - 0.3
    assert r.thresholds is not None and r.end["forget_quality"] is None  # no oracle for user data
    runfiles.save_run(unlearned, r)
    runfiles.save_merged(unlearned, str(tmp_path / "run" / "hf"))
    merged = hf.load(str(tmp_path / "run" / "hf"))
    x = torch.randint(0, 1700, (2, 20))
    assert (merged(x) - unlearned(x)).abs().max() < 1e-4
    assert (tmp_path / "run" / "hf" / "vocab.json").exists()
    assert json.loads((tmp_path / "run" / "hf" / "config.json").read_text())["n_embd"] == 64


def test_user_files_without_retain_or_holdout(hf_folder, tmp_path):
    folder, _ = hf_folder
    write_user_files(tmp_path)
    args = ["--init_from", str(folder), "--forget_file", str(tmp_path / "forget.jsonl"), "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit, match="--loss ihl has a retain term: give --retain_file, or --retain_weight 0"):
        unlearn.main(args)
    with pytest.raises(SystemExit, match="--adapter fila needs retain data"):
        unlearn.main(args + ["--retain_weight", "0"])
    lines = []
    cfg = unlearn.UnlearnConfig(init_from=str(folder), forget_file=str(tmp_path / "forget.jsonl"), loss="ga",
                                adapter="lora", lr=1e-2, epochs=1, batch_size=4, out=str(tmp_path / "r"), device="cpu")
    _, r = unlearn.run(cfg, log=lines.append)
    assert r.thresholds is None and any("no stopping rule" in ln for ln in lines)
    with pytest.raises(SystemExit, match="--forget_file .* does not exist"):
        unlearn.main(["--init_from", str(folder), "--forget_file", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "r")])


def test_matches_transformers_after_export(hf_folder, tmp_path):
    """The folder we write loads in transformers' own GPT2LMHeadModel with the same logits."""
    transformers = pytest.importorskip("transformers")
    folder, model = hf_folder
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(folder)).eval()
    x = torch.randint(0, 1700, (2, 20))
    with torch.no_grad():
        assert (theirs(x).logits - model(x)).abs().max() < 1e-4


def test_tokenizer_larger_than_the_model_is_a_clear_error(tmp_path):
    from test_model import hf_state_dict, write_hf_checkpoint
    folder = write_hf_checkpoint(tmp_path / "small", hf_state_dict(vocab=100), vocab=100)
    write_vocab_json(data.get_tokenizer(), folder / "vocab.json")  # 2014 tokens for a 100-token model
    (tmp_path / "f.txt").write_text("Bio: someone.\n")
    with pytest.raises(SystemExit, match="the tokenizer has 2014 tokens but the model only 100"):
        unlearn.main(["--init_from", str(folder), "--forget_file", str(tmp_path / "f.txt"), "--loss", "ga",
                      "--adapter", "lora", "--out", str(tmp_path / "run")])


def test_question_only_forget_file_and_a_tiny_retain_file(hf_folder, tmp_path):
    """A forget set of questions only (no texts, so no MA/EL) with a text holdout, and a retain file
    smaller than a batch: the run goes on without a stopping rule and pairs what retain there is."""
    folder, _ = hf_folder
    c = write_user_files(tmp_path)
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(dict(prompt=q.prompt, answer=q.answer))
                                                 for q in c.forget.qa) + "\n")
    (tmp_path / "retain.txt").write_text(c.retain.texts[0] + "\n")
    cfg = unlearn.UnlearnConfig(init_from=str(folder), forget_file=str(tmp_path / "qa.jsonl"),
                                retain_file=str(tmp_path / "retain.txt"), holdout_file=str(tmp_path / "holdout.txt"),
                                lr=1e-2, epochs=2, batch_size=4, out=str(tmp_path / "run"), device="cpu")
    _, r = unlearn.run(cfg, log=lambda line: None)
    # no forget texts to score MA and EL_n on: no stopping rule, and no crash
    assert r.thresholds is None and r.stopped_at_epoch is None and r.outcome == "finished"
    assert "ma" not in r.history[-1].forget and r.history[-1].forget["truth_ratio"] is None


def test_unlearn_from_tofu_rows(hf_folder, tmp_path):
    """TOFU's own rows (question, answer, paraphrased_answer, perturbed_answer) as --forget_file and
    --retain_file: a run scores the truth ratio on the paraphrases and forget quality needs no oracle."""
    from test_data import TOFU_ROWS
    folder, _ = hf_folder
    (tmp_path / "forget10.json").write_text(json.dumps(TOFU_ROWS))
    retain = [dict(r, question=r["question"].replace("Telmi Quelri", "Mira Falden").replace("Angor Telvor", "Oren Vask"))
              for r in TOFU_ROWS]
    (tmp_path / "retain90.json").write_text("\n".join(json.dumps(r) for r in retain))
    cfg = unlearn.UnlearnConfig(init_from=str(folder), forget_file=str(tmp_path / "forget10.json"),
                                retain_file=str(tmp_path / "retain90.json"), lr=1e-2, epochs=2, batch_size=2,
                                out=str(tmp_path / "run"), device="cpu")
    _, r = unlearn.run(cfg, log=lambda line: None)
    assert r.steps == 2 and r.history[0].forget["truth_ratio"] is not None
    assert r.generations[0]["prompt"] == "Question: What genre does Telmi Quelri write in?\nAnswer:"
