"""Tokens: the tokenizers, the encoding of text and QA into training examples (with windows for
sequences longer than the model's block), the user's own files, and batching.

Tokenizers are tiktoken Encodings. The built-in one is a BPE vocabulary trained on the built-in
corpus (corpus.py; 2014 tokens: every word and every possible name is one token) and stored in tiktoken's own file format
(assets/fictitious.tiktoken). GPT-2 checkpoints use GPT-2's encoding, built from the checkpoint
folder's vocab.json when there is one (no download), else by tiktoken.get_encoding("gpt2").
"""
import base64
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import regex  # tiktoken's own dependency; \p{L} in the pre-tokenizer needs it
import tiktoken
import torch

from lib import corpus, userio, vocab
from lib.userio import UserError
from model import IGNORE  # the label of positions that never count in a loss (prompts, padding)

# The built-in vocabulary, in the repository's assets/ folder (build_vocab makes it again).
VOCAB_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "fictitious.tiktoken")
# GPT-2's pre-tokenizer: words, numbers and punctuation become separate chunks before BPE.
PAT_STR = vocab.GPT2_PATTERN
EOT = "<|endoftext|>"



# ----------------------------------------------------------------------------- the tokenizer
def train_bpe(text, vocab_size):
    """Byte-level BPE (the GPT-2 recipe): start from the 256 bytes, repeatedly merge the most
    frequent adjacent pair inside pre-tokenized chunks. Returns {token bytes: rank} for tiktoken."""
    chunks = Counter(regex.findall(PAT_STR, text))
    words = [([bytes([b]) for b in c.encode()], n) for c, n in chunks.items()]
    ranks = {bytes([i]): i for i in range(256)}
    while len(ranks) < vocab_size:
        pairs = Counter()
        for toks, n in words:
            for pair in zip(toks, toks[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))  # ties broken by the bytes: deterministic
        ranks[best[0] + best[1]] = len(ranks)
        for toks, _ in words:
            i = 0
            while i < len(toks) - 1:
                if (toks[i], toks[i + 1]) == best:
                    toks[i:i + 2] = [best[0] + best[1]]
                i += 1
    return ranks


def build_vocab(path=VOCAB_FILE, vocab_size=4096):
    """(Re)build the stored vocabulary from the pretraining corpus, the seed-0 world, every phrasing
    with every value, and every possible name. The merges stop when every word is one token: a name
    as one token is far quicker for a small model to learn."""
    people, general = corpus.pretraining_corpus()
    c = corpus.make_corpus(seed=0)
    splits = (people, general, c.forget, c.retain, c.holdout)
    text = "\n".join(t for s in splits for t in s.texts)
    text += "\n" + "\n".join(q.prompt + "".join([q.answer, q.paraphrase] + q.perturbed + q.perturbed_paraphrase)
                             for s in splits for q in s.qa)
    text += "\n" + " ".join(form.format(v=v) for values, forms, _ in corpus.ATTRIBUTES.values()
                            for form in forms for v in values)
    # Every possible name (corpus.name_word), so that the people of any corpus seed are one token each.
    words = sorted({(a + b).capitalize() for a in corpus.SYLLABLES for b in corpus.SYLLABLES})
    text += "\n" + " ".join(f"Bio: {w} {w}." for w in words)
    ranks = train_bpe(text, vocab_size)
    lines = "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items())
    userio.atomic_write(path, lines.encode())



def get_tokenizer(name="fictitious", folder=None):
    """tiktoken Encoding: 'fictitious' (built-in) or 'gpt2' (from folder/vocab.json if there is one,
    else tiktoken downloads it once)."""
    if name == "gpt2":
        if folder and os.path.exists(os.path.join(folder, "vocab.json")):
            return gpt2_from_vocab_json(os.path.join(folder, "vocab.json"))
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise UserError(f"cannot load GPT-2's tokenizer: no vocab.json in {folder} and tiktoken's "
                               f"download failed ({type(e).__name__}); put the model's vocab.json there") from None
    if name != "fictitious":
        raise UserError(f"unknown tokenizer {name!r}: use 'fictitious' or 'gpt2'")
    # Parsed here rather than by tiktoken.load.load_tiktoken_bpe, whose cache keys local files by
    # path and would keep serving a stale copy after the file is rebuilt.
    with open(VOCAB_FILE, "rb") as f:
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (ln.split() for ln in f if ln.strip())}
    return tiktoken.Encoding(name, pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


def gpt2_from_vocab_json(path):
    """GPT-2's tiktoken Encoding from a Hugging Face vocab.json: its keys are token bytes in GPT-2's
    byte-level alphabet (vocab.unicode_to_byte) and its ids are tiktoken's ranks."""
    to_byte = vocab.unicode_to_byte()
    with open(path, encoding="utf-8") as f:
        tokens = json.load(f)
    specials = {t: i for t, i in tokens.items() if t.startswith("<|") and t.endswith("|>")}
    ranks = {bytes(to_byte[c] for c in t): i for t, i in tokens.items() if t not in specials}
    return tiktoken.Encoding("gpt2", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=specials)


# ----------------------------------------------------------------------------- token ids
class Example(NamedTuple):
    """One sequence to train on or score: its token ids, and for each whether it is a target (a
    token the loss counts; a QA pair's prompt is not)."""
    tokens: list
    is_target: list


@dataclass
class Encoded:
    """A split as token ids, ready for training and for the metrics."""
    texts: list = field(default_factory=list)  # [tokens], trained on every token, ending in <|endoftext|>
    qa: list = field(default_factory=list)     # [(prompt tokens, [answer tokens, *wrong answers])]
    paraphrased: list = field(default_factory=list)  # [(prompt tokens, [paraphrase, *wrong ones])] or []
    facts: list = field(default_factory=list)  # per question, the corpus.QA it came from (built-in world) or []


def encode(enc, split, block_size):
    """corpus.Split -> (Encoded, number of texts cut). A sequence of block_size + 1 tokens gives
    block_size predictions: longer texts are cut into windows that overlap by one token, so every
    token is a target exactly once; a QA pair keeps its last tokens (the prompt is cut at the left)."""
    out, cut, W = Encoded(), 0, block_size + 1
    for text in split.texts:
        toks = enc.encode_ordinary(text) + [enc.eot_token]
        windows = [toks[i:i + W] for i in range(0, max(len(toks) - 1, 1), block_size)]
        out.texts += windows
        cut += len(windows) > 1
    for q in split.qa:
        answers = [enc.encode_ordinary(a) + [enc.eot_token] for a in [q.answer] + list(q.perturbed)]
        paraphrases = [enc.encode_ordinary(a) + [enc.eot_token] for a in [q.paraphrase] + list(q.perturbed_paraphrase)
                       ] if q.paraphrase else []
        longest = max(map(len, answers + paraphrases))
        room = W - longest
        if room < 1:
            raise UserError(f"an answer of {longest} tokens does not fit block_size {block_size}")
        prompt = enc.encode_ordinary(q.prompt)[-room:]
        out.qa.append((prompt, answers))
        if paraphrases:
            out.paraphrased.append((prompt, paraphrases))
        if q.forms:
            out.facts.append(q)
    if out.facts and len(out.facts) != len(out.qa):
        raise UserError("either every question of a split says what kind of answer it wants or none does")
    if out.paraphrased and len(out.paraphrased) != len(out.qa):
        raise UserError("either every question of a split has a paraphrase or none has")
    return out, cut


def answer_example(prompt, answer):
    """A prompt and its answer as one Example whose targets are the answer's tokens."""
    return Example(prompt + answer, [False] * len(prompt) + [True] * len(answer))


def whole(texts):
    """Token lists as Examples trained (or scored) on every token."""
    return [Example(t, [True] * len(t)) for t in texts]


def training_examples(encoded):
    """Encoded -> [Example]: texts on every token, QA on the true answer only."""
    return whole(encoded.texts) + [answer_example(p, a[0]) for p, a in encoded.qa]


def split_examples(enc, split, block_size):
    """Training examples of a corpus split, in one call."""
    return training_examples(encode(enc, split, block_size)[0])


def load_file(path, flag):
    """A user's data -> corpus.Split. Plain text: one sequence per non-blank line. JSON Lines (.jsonl or
    .json; a .json file may also hold one list of rows), one object per row:
      {"text": ...}                                 a sequence, trained on every token;
      {"prompt": ..., "answer": ...}                a question, the answer trained on exactly as written,
                                                    optionally "perturbed": a list of wrong answers;
      {"question": ..., "answer": ...}              TOFU's rows: asked as "Question: …\nAnswer:" and
                                                    answered " …", optionally with "paraphrased_answer"
                                                    and "perturbed_answer" (TOFU's truth ratio)."""
    if not os.path.isfile(path):
        raise UserError(f"{flag} {path} does not exist")
    raw = open(path, "rb").read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{flag} {path} is not UTF-8 text (byte {e.start}); convert it, e.g. with iconv") from None
    split = corpus.Split()
    if not path.endswith((".jsonl", ".json")):
        split.texts = [line for line in text.splitlines() if line.strip()]
    for n, obj in json_rows(text, path, flag):
        if isinstance(obj, dict) and isinstance(obj.get("text"), str):
            split.texts.append(obj["text"])
        elif isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and isinstance(obj.get("answer"), str):
            split.qa.append(corpus.QA(obj["prompt"], obj["answer"], wrong_answers(obj, "perturbed", path, n, flag)))
        elif isinstance(obj, dict) and isinstance(obj.get("question"), str) and isinstance(obj.get("answer"), str):
            para = obj.get("paraphrased_answer")
            wrong = wrong_answers(obj, "perturbed_answer", path, n, flag)
            space = lambda a: " " + a.strip()  # "Answer: …", as TOFU's own template writes it
            split.qa.append(corpus.QA(f"Question: {obj['question'].strip()}\nAnswer:", space(obj["answer"]),
                                      [] if para else [space(w) for w in wrong], paraphrase=space(para) if para else "",
                                      perturbed_paraphrase=[space(w) for w in wrong] if para else []))
        else:
            raise UserError(f'{flag} {path} {n}: expected a "text" field, "prompt" and "answer", '
                            f'or "question" and "answer"')
    if not split.texts and not split.qa:
        raise UserError(f"{flag} {path} has no sequences (it is empty or only blank lines)")
    return split


def json_rows(text, path, flag):
    """[(where, object)] of a JSON Lines file ("line 3"), or of a .json file holding one list ("row 3");
    [] for plain text."""
    if not path.endswith((".jsonl", ".json")):
        return []
    if path.endswith(".json") and text.lstrip().startswith("["):
        try:
            return [(f"row {n}", obj) for n, obj in enumerate(json.loads(text), 1)]
        except json.JSONDecodeError as e:
            raise UserError(f"{flag} {path} is not valid JSON (line {e.lineno})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError:
                raise UserError(f"{flag} {path} line {n} is not valid JSON") from None
    return rows


def wrong_answers(obj, key, path, n, flag):
    if not isinstance(obj.get(key, []), list):
        raise UserError(f'{flag} {path} {n}: "{key}" must be a list of wrong answers')
    return [str(w) for w in obj.get(key, [])]


def collate(examples, device="cpu"):
    """[Example] -> x, y of shape (B, T): y[b, t] is the token after x[b, t], or IGNORE
    where that token is not a target (prompt) or is padding. Right padding is safe under causal
    attention: no real position ever attends to a pad to its right."""
    T = max(len(toks) for toks, _ in examples) - 1
    x = torch.zeros(len(examples), T, dtype=torch.long)
    y = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    for b, (toks, target) in enumerate(examples):
        t = torch.tensor(toks)
        x[b, :len(toks) - 1] = t[:-1]
        y[b, :len(toks) - 1] = torch.where(torch.tensor(target[1:]), t[1:], IGNORE)
    return x.to(device), y.to(device)


def batches(examples, batch_size):
    """Yield the examples in order, batch_size at a time."""
    for i in range(0, len(examples), batch_size):
        yield examples[i:i + batch_size]
