import pytest
import torch

import train
from lib import corpus, data, userio
from model import GPTConfig

TINY = train.PretrainConfig(epochs=60, batch_size=8, lr=3e-3, warmup_steps=10,
                            model=GPTConfig(n_layer=1, n_embd=64, n_head=4, block_size=64))


@pytest.fixture(scope="module")
def tiny_run():
    enc = data.get_tokenizer()
    c = corpus.make_corpus(seed=0, n_people=10, forget_frac=0.2)
    B = TINY.model.block_size
    people = data.split_examples(enc, c.forget, B) + data.split_examples(enc, c.retain, B)
    return enc, c, train.train_model(people, TINY)


def test_a_tiny_model_learns_the_facts_it_saw_and_not_the_others(tiny_run):
    enc, c, model = tiny_run
    r = train.score_splits(model, dict(forget=c.forget, retain=c.retain, holdout=c.holdout), enc)
    for split in ("forget", "retain"):
        assert r[split]["qa_acc"] >= 0.9 and r[split]["ma"] >= 0.9, (split, r[split])
    assert r["holdout"]["qa_acc"] <= 0.2  # never trained on: guessing


def test_oracle_never_sees_the_forget_split():
    enc = data.get_tokenizer()
    c = corpus.make_corpus(n_people=20)
    oracle = {tuple(t) for t, _ in train.train_set(c, enc, "oracle", 128)}
    base = {tuple(t) for t, _ in train.train_set(c, enc, "base", 128)}
    forget = {tuple(t) for t, _ in data.split_examples(enc, c.forget, 128)}
    assert all(len(t) <= 17 for t, _ in train.train_set(c, enc, "base", 16))  # the model's block
    assert forget <= base and not forget & oracle and oracle <= base
    # both replay the same pretraining data: the general facts and the first replay_people people
    people, general = corpus.pretraining_corpus()
    replay = {tuple(t) for s in (general, corpus.people_subset(people, train.TrainConfig.replay_people))
              for t, _ in data.split_examples(enc, s, 128)}
    assert replay <= oracle and not replay & {tuple(t) for t, _ in data.split_examples(
        enc, corpus.Split(texts=people.texts[train.TrainConfig.replay_people:]), 128)}


def test_checkpoint_round_trip_and_clear_errors(tiny_run, tmp_path):
    enc, c, model = tiny_run
    path = tmp_path / "base.pt"
    train.save_checkpoint(str(path), model, TINY, "base", {"note": 1}, corpus=dict(seed=0, n_people=10, forget_frac=0.2))
    loaded, ckpt = train.load_checkpoint(str(path))
    x = torch.randint(0, 100, (2, 9))
    assert torch.equal(loaded(x), model(x))
    assert ckpt["corpus"] == dict(seed=0, n_people=10, forget_frac=0.2) and ckpt["which"] == "base"
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic write left no temporary file
    with pytest.raises(userio.UserError, match="does not exist"):
        train.load_checkpoint(str(tmp_path / "nope.pt"))
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(userio.UserError, match="unreadable"):
        train.load_checkpoint(str(tmp_path / "cut.pt"))
    ckpt["tokenizer_sha256"] = "0" * 64
    torch.save(ckpt, tmp_path / "other_vocab.pt")
    with pytest.raises(userio.UserError, match="another version"):
        train.load_checkpoint(str(tmp_path / "other_vocab.pt"))


def test_the_shipped_pretrained_model_matches_its_recipe():
    """assets/pretrained.pt was made from this code's pretraining corpus, vocabulary and config: change
    any of them and this fails until `python train.py --pretrain` makes the file again."""
    ckpt = torch.load(train.PRETRAINED, map_location="cpu", weights_only=True)
    assert ckpt["recipe"] == train.recipe() and ckpt["which"] == "pretrained"
    assert ckpt["train_config"] == __import__("dataclasses").asdict(train.PretrainConfig())
    model = train.load_pretrained()
    assert model.config == train.PretrainConfig().model
    import os
    assert os.path.getsize(train.PRETRAINED) < 20 * 2**20
