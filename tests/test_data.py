import json
import random
from dataclasses import asdict

import pytest

from lib import corpus, data, userio


def corpus_bytes(**kw):
    return json.dumps(asdict(corpus.make_corpus(**kw)), sort_keys=True).encode()


def test_same_seed_same_bytes_other_seed_other_people():
    assert corpus_bytes(seed=3) == corpus_bytes(seed=3)
    assert corpus_bytes(seed=3) != corpus_bytes(seed=4)


def test_splits_are_disjoint_and_sized():
    c = corpus.make_corpus(seed=1, n_people=200, forget_frac=0.1)
    f, r, h = set(c.forget.names), set(c.retain.names), set(c.holdout.names)
    assert len(f) == 20 and len(r) == 180 and len(h) == 20  # holdout defaults to the forget size
    assert not (f & r or f & h or r & h)
    firsts = [n.split()[0] for n in f | r | h]
    assert len(set(firsts)) == len(firsts)  # first names are unique
    for split in (c.forget, c.retain, c.holdout):
        assert len(split.texts) == len(split.names)
        for name, bio in zip(split.names, split.texts):
            assert bio.startswith(f"Bio: {name}.")
        # every question is about a person of its own split, and names them
        assert all(q.about in split.names and q.prompt.startswith(f"Question: {q.about} ") for q in split.qa)
    c30 = corpus.make_corpus(seed=1, n_people=100, forget_frac=0.3)
    assert len(c30.forget.names) == 30 and len(c30.retain.names) == 70
    sub = corpus.people_subset(c.retain, 5)
    assert sub.names == c.retain.names[:5] and {q.about for q in sub.qa} == set(sub.names)


def test_people_have_6_to_8_attributes_and_qa_is_consistent_with_bios():
    c = corpus.make_corpus(seed=2)
    people, general = corpus.pretraining_corpus()
    for bio in c.retain.texts:
        assert 6 <= bio.count(".") - 1 <= 8  # one sentence per attribute after "Bio: Name."
    for split in (c.forget, c.retain, c.holdout, people, general):
        for q in split.qa:
            assert len(q.perturbed) == corpus.N_PERTURBED and q.answer not in q.perturbed
            assert len(set(q.perturbed)) == corpus.N_PERTURBED
            assert q.prompt.endswith("\nAnswer:") and q.answer.startswith(" ")
            # what an answer of its kind may say: the true value among the kind's, in one of its forms
            assert q.value in q.values and q.answer.strip() in [f.format(v=q.value) for f in q.forms]
            assert all(any(w.strip() == f.format(v=v) for f in q.forms for v in q.values) for w in q.perturbed)
    for name, bio in zip(c.forget.names, c.forget.texts):  # answers state facts of the person's bio
        qa = [q for q in c.forget.qa if q.about == name]
        assert qa
        for q in qa:
            values, forms, _ = next(a for a in corpus.ATTRIBUTES.values() if a[0] == list(q.values))
            assert forms[corpus.BIO].format(v=q.value) in bio  # the bio's sentence names the value
            # a world's people: one wording for answers, another for the paraphrase, never the bio's
            assert q.answer.strip() == forms[corpus.ANSWER].format(v=q.value)
            assert q.paraphrase.strip() == forms[corpus.PARAPHRASE].format(v=q.value)
            assert len(q.perturbed_paraphrase) == corpus.N_PERTURBED and q.paraphrase not in q.perturbed_paraphrase
    assert set(general.texts) == {q.answer.strip() for q in general.qa}
    # the paraphrase's wording is known language: the pretraining people are answered in every wording
    wordings = [p.split("{v}")[0] for _, forms, _ in corpus.ATTRIBUTES.values() for p in forms]
    wording = lambda answer: next(w for w in wordings if answer.strip().startswith(w))
    assert {wording(q.paraphrase) for q in c.retain.qa} <= {wording(q.answer) for q in people.qa}


def test_pretraining_people_belong_to_no_world():
    """No first name of the pretraining corpus is the first name of anyone in any world."""
    people, _ = corpus.pretraining_corpus()
    pre = {n.split()[0] for n in people.names}
    assert len(people.names) == corpus.N_PRETRAINING_PEOPLE and len(pre) == len(people.names)
    for seed in range(6):
        c = corpus.make_corpus(seed=seed)
        assert not pre & {n.split()[0] for s in (c.forget, c.retain, c.holdout) for n in s.names}


def test_bad_forget_fraction():
    with pytest.raises(ValueError, match="forget_frac"):
        corpus.make_corpus(forget_frac=1.5)


def test_tokenizer_round_trip():
    enc = data.get_tokenizer()
    c = corpus.make_corpus(seed=5)
    rng = random.Random(0)
    samples = c.retain.texts + [q.prompt for q in c.forget.qa] + ["héllo wörld ✓ 123\n\ttabs", ""]
    samples += ["".join(chr(rng.randint(32, 0x2FFF)) for _ in range(40)) for _ in range(20)]
    for s in samples:
        assert enc.decode(enc.encode_ordinary(s)) == s
    assert enc.n_vocab == 2014 and enc.eot_token == 2013
    from model import GPTConfig
    assert enc.n_vocab <= GPTConfig().vocab_size
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


def test_gpt2_tokenizer_from_vocab_json_matches_tiktoken_conversion(tmp_path):
    """A Hugging Face vocab.json/merges.txt pair (a small made-up one: the 256 bytes + 3 merges) read
    by data.gpt2_from_vocab_json gives exactly the ranks of tiktoken's own converter."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    others = [b for b in range(256) if b not in printable]
    to_str = {b: chr(b) for b in printable} | {b: chr(256 + k) for k, b in enumerate(others)}
    tokens = [to_str[b] for b in printable + others]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]  # "Ġ" is the space byte
    vocab = {t: i for i, t in enumerate(tokens + [a + b for a, b in merges] + ["<|endoftext|>"])}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    enc = data.get_tokenizer("gpt2", str(tmp_path))
    want = data_gym_to_mergeable_bpe_ranks(str(tmp_path / "merges.txt"), str(tmp_path / "vocab.json"))
    assert enc._mergeable_ranks == want and enc.eot_token == 259
    assert enc.encode_ordinary(" the") == [258] and enc.decode(enc.encode_ordinary("a the b")) == "a the b"


def test_encode_windows_long_texts_and_trims_long_prompts():
    enc = data.get_tokenizer()
    text = " Quellport" * 25  # 25 tokens (one per word, with its space) + <|endoftext|>
    e, cut = data.encode(enc, corpus.Split(texts=[text, "Hi."]), block_size=10)
    assert cut == 1
    windows = e.texts[:-1]
    assert [len(w) for w in windows] == [11, 11, 6]  # overlapping by one token: every token a target once
    assert windows[0][-1] == windows[1][0] and sum(len(w) - 1 for w in windows) == 25
    qa = corpus.QA("Question: " + text + "\nAnswer:", " Paris.", [" Rome."])
    e, _ = data.encode(enc, corpus.Split(qa=[qa]), block_size=10)
    prompt, answers = e.qa[0]
    assert len(prompt) + len(answers[0]) == 11 and answers[0][-1] == enc.eot_token


def test_collate_shifts_and_masks():
    enc = data.get_tokenizer()
    e, _ = data.encode(enc, corpus.Split(texts=["Hi there."], qa=[corpus.QA("Who?", " Me.", [])]), 128)
    ex_text, ex_qa = data.training_examples(e)
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


TOFU_ROWS = [  # TOFU's forget10_perturbed.json, in its own keys (rows written for this test)
    {"question": "What genre does Telmi Quelri write in?", "answer": "Telmi Quelri writes crime novels.",
     "paraphrased_answer": "Crime fiction is the genre of Telmi Quelri's books.",
     "paraphrased_question": "Which genre are Telmi Quelri's books?",
     "perturbed_answer": ["Romance is the genre of Telmi Quelri's books.", "Poetry is the genre of Telmi Quelri's books."]},
    {"question": "Where was Angor Telvor born?", "answer": "Angor Telvor was born in Brenmoor.",
     "paraphrased_answer": "Brenmoor is the birthplace of Angor Telvor.",
     "perturbed_answer": ["Oshkar is the birthplace of Angor Telvor.", "Caldwick is the birthplace of Angor Telvor."]},
]


@pytest.mark.parametrize("layout", ["jsonl", "json list"])
def test_tofu_rows_are_questions_with_tofus_truth_ratio(tmp_path, layout):
    import json
    path = tmp_path / ("forget10.jsonl" if layout == "jsonl" else "forget10.json")
    path.write_text("\n".join(json.dumps(r) for r in TOFU_ROWS) if layout == "jsonl" else json.dumps(TOFU_ROWS))
    s = data.load_file(str(path), "--forget_file")
    assert not s.texts and len(s.qa) == 2
    q = s.qa[0]
    assert q.prompt == "Question: What genre does Telmi Quelri write in?\nAnswer:" and q.answer == " Telmi Quelri writes crime novels."
    assert q.paraphrase == " Crime fiction is the genre of Telmi Quelri's books." and q.perturbed == []
    assert q.perturbed_paraphrase == [" Romance is the genre of Telmi Quelri's books.", " Poetry is the genre of Telmi Quelri's books."]
    encoded, _ = data.encode(data.get_tokenizer(), s, 128)  # the truth ratio is taken on the paraphrases
    assert len(encoded.paraphrased) == 2 and len(encoded.paraphrased[0][1]) == 3
    (tmp_path / "plain.json").write_text(json.dumps([{"question": "Q?", "answer": "A."}]))
    assert data.load_file(str(tmp_path / "plain.json"), "--x").qa == [corpus.QA("Question: Q?\nAnswer:", " A.", [])]


@pytest.mark.parametrize("content,suffix,match", [
    (None, ".txt", "does not exist"),
    (b"", ".txt", "empty or only blank lines"),
    (b"\n   \n\t\n", ".txt", "empty or only blank lines"),
    (b"caf\xe9 au lait\n", ".txt", r"not UTF-8 text \(byte 3\)"),
    (b'{"text": "ok"}\nnot json\n', ".jsonl", "line 2 is not valid JSON"),
    (b'{"prompt": "Q"}\n', ".jsonl", 'line 1: expected a "text" field, "prompt" and "answer", or "question" and "answer"'),
    (b'{"prompt": "Q", "answer": " A", "perturbed": " B"}\n', ".jsonl", '"perturbed" must be a list'),
    (b'[{"question": "Q", "answer": "A", "perturbed_answer": "B"}]', ".json", 'row 1: "perturbed_answer" must be a list'),
    (b'[{"question": "Q", "answer": "A"}', ".json", r"is not valid JSON \(line 1\)"),
])
def test_bad_files_get_one_line_errors(tmp_path, content, suffix, match):
    path = tmp_path / f"forget{suffix}"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(userio.UserError, match=match) as e:
        data.load_file(str(path), "--forget_file")
    assert "--forget_file" in str(e.value) and "\n" not in str(e.value)


def test_load_file_formats(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
    assert data.load_file(str(tmp_path / "a.txt"), "--x").texts == ["first line", "second line"]
    (tmp_path / "b.jsonl").write_text('{"text": "t"}\n{"prompt": "P:", "answer": " A", "perturbed": [" B"]}\n')
    s = data.load_file(str(tmp_path / "b.jsonl"), "--x")
    assert s.texts == ["t"] and s.qa == [corpus.QA("P:", " A", [" B"])]
