import json
import random
from dataclasses import asdict

import pytest

import data


def corpus_bytes(**kw):
    return json.dumps(asdict(data.make_corpus(**kw)), sort_keys=True).encode()


def test_same_seed_same_bytes_other_seed_other_people():
    assert corpus_bytes(seed=3) == corpus_bytes(seed=3)
    assert corpus_bytes(seed=3) != corpus_bytes(seed=4)


def test_splits_are_disjoint_and_sized():
    c = data.make_corpus(seed=1, n_people=200, forget_frac=0.1)
    f, r, h = set(c.forget.names), set(c.retain.names), set(c.holdout.names)
    assert len(f) == 20 and len(r) == 180 and len(h) == 20  # holdout defaults to the forget size
    assert not (f & r or f & h or r & h)
    firsts = [n.split()[0] for n in f | r | h]
    assert len(set(firsts)) == len(firsts)  # first names are unique
    for split in (c.forget, c.retain, c.holdout):
        assert len(split.texts) == len(split.names)
        for name, bio in zip(split.names, split.texts):
            assert bio.startswith(f"Bio: {name}.")
        # every question is about a person of its own split
        assert all(any(q.question.startswith(n + " ") for n in split.names) for q in split.qa)
    c30 = data.make_corpus(seed=1, n_people=100, forget_frac=0.3)
    assert len(c30.forget.names) == 30 and len(c30.retain.names) == 70


def test_people_have_6_to_8_attributes_and_qa_is_consistent_with_bios():
    c = data.make_corpus(seed=2)
    for bio in c.retain.texts:
        assert 6 <= bio.count(".") - 1 <= 8  # one sentence per attribute after "Bio: Name."
    for split in (c.forget, c.retain, c.holdout, c.general):
        for q in split.qa:
            assert len(q.perturbed) == data.N_PERTURBED and q.answer not in q.perturbed
            assert len(set(q.perturbed)) == data.N_PERTURBED
    # a person's answers are sentences of that person's biography
    for name, bio in zip(c.forget.names, c.forget.texts):
        answers = [q.answer for q in c.forget.qa if q.question.startswith(name + " ")]
        assert answers and all(a in bio for a in answers)
    assert set(c.general.texts) == {q.answer for q in c.general.qa}


def test_bad_forget_fraction():
    with pytest.raises(ValueError, match="forget_frac"):
        data.make_corpus(forget_frac=1.5)


def test_tokenizer_round_trip():
    enc = data.get_tokenizer()
    c = data.make_corpus(seed=5)
    rng = random.Random(0)
    samples = c.retain.texts + [q.question for q in c.forget.qa] + ["héllo wörld ✓ 123\n\ttabs", ""]
    samples += ["".join(chr(rng.randint(32, 0x2FFF)) for _ in range(40)) for _ in range(20)]
    for s in samples:
        assert enc.decode(enc.encode_ordinary(s)) == s
    assert enc.n_vocab == 1744 and enc.eot_token == 1743
    # the built-in vocabulary makes names and most words single tokens
    assert len(enc.encode_ordinary(c.retain.texts[0])) < len(c.retain.texts[0].split()) * 1.3


def test_stored_vocabulary_is_the_rebuilt_one(tmp_path):
    """assets/ holds exactly what build_vocab produces: the file is reproducible, not hand-edited."""
    data.build_vocab(tmp_path / "v.tiktoken")
    assert (tmp_path / "v.tiktoken").read_bytes() == open(data.VOCAB_FILE, "rb").read()


def test_train_bpe_merges_most_frequent_pair_first():
    ranks = data.train_bpe("aaab aaab aaab xy", 258)
    assert ranks[b"a"] == ord("a") and len(ranks) == 258
    assert ranks[b"aa"] == 256  # "aa" occurs most often (6 times)


def test_collate_shifts_and_masks():
    enc = data.get_tokenizer()
    ex_qa = data.encode_qa(enc, "Who?", "Me.")
    ex_text = data.encode_text(enc, "Hi there.")
    x, y = data.collate([ex_qa, ex_text])
    toks, target = ex_qa
    n_prompt = target.index(True)
    assert x.shape == y.shape == (2, len(toks) - 1)
    assert x[0].tolist() == toks[:-1]
    # labels: the next token where it is an answer token, IGNORE on the prompt
    assert y[0].tolist() == [data.IGNORE] * (n_prompt - 1) + toks[n_prompt:]
    assert y[0, -1].item() == enc.eot_token
    n = len(ex_text[0]) - 1
    assert y[1, :n].tolist() == ex_text[0][1:] and (y[1, n:] == data.IGNORE).all()
