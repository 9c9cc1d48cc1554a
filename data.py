"""The built-in corpus, "fictitious facts": a TOFU in miniature, plus its tokenizer and batching.

TOFU (Maini et al., 2024) asks a model to forget invented authors it was fine-tuned on. Here a
seeded generator invents ~200 people with 6-8 attributes each. Every person appears twice:
  - a short biography, trained on every token: the verbatim target of MA and EL_n (METHOD §5);
  - question/answer pairs, trained on the answer tokens only, each with a few perturbed (wrong)
    answers for the truth ratio.
Splits: forget (a fraction of the people), retain (the rest), holdout (people made the same way but
never trained on: the stopping rule's "unseen data"), general (capitals and sums that every model
should keep knowing: model utility). Nothing is downloaded; the same seed gives the same bytes.

The tokenizer is tiktoken with a BPE vocabulary trained on this corpus (1744 tokens: every word is one
token) and stored in tiktoken's own file format (assets/fictitious.tiktoken); GPT-2 checkpoints use
GPT-2's encoding.
"""
import base64
import os
import random
from collections import Counter
from dataclasses import dataclass, field

import regex  # tiktoken's own dependency; \p{L} in the pre-tokenizer needs it
import tiktoken
import torch

IGNORE = -100  # label of positions that never count in a loss (prompts, padding); see model.token_nll
HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB_FILE = os.path.join(HERE, "assets", "fictitious.tiktoken")
# GPT-2's pre-tokenizer: words, numbers and punctuation become separate chunks before BPE.
PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"

# ----------------------------------------------------------------------------- the corpus
SYLLABLES = ["ka", "ri", "lo", "ven", "mar", "zu", "tel", "is", "dor", "an", "bel", "shi", "o",
             "quel", "thi", "ne", "sa", "vor", "em", "lin", "gor", "ta", "fen", "ru", "mi", "dra"]
# attribute: (values, biography sentence, question). {n} = full name, {v} = value.
ATTRIBUTES = {
    "year": ([str(y) for y in range(1921, 2000)],
             "They were born in {v}.", "{n} was born in which year?"),
    "city": (["Quellport", "Marrowdale", "Ostrin", "Vellhaven", "Duskmere", "Pellowick", "Harrowgate",
              "Thistlebury", "Corvana", "Emberfield", "Saltreach", "Yarrowby", "Lunmoor", "Brightwater",
              "Kestrel Bay", "Fernhollow", "Oakmantle", "Rimeholt", "Sablecross", "Wendmouth"],
             "They grew up in {v}.", "{n} grew up where?"),
    "job": (["baker", "cartographer", "glassblower", "beekeeper", "librarian", "clockmaker", "sailor",
             "potter", "astronomer", "gardener", "blacksmith", "translator", "pharmacist", "weaver",
             "surveyor", "violin maker", "lighthouse keeper", "chemist", "tailor", "bookbinder"],
            "They work as a {v}.", "{n} works as what?"),
    "employer": (["Brindle Mills", "Copperleaf Press", "Northwind Freight", "Saffron Labs", "Greyfen Bank",
                  "Tallow and Sons", "Marigold Works", "Ironbark Guild", "Bluestone Trading",
                  "Lanternfly Studio", "Orchard Row Hospital", "Pinecrest School", "Silverthread Co",
                  "Harbourlight Ferries", "Quarry Hill Museum", "Redkite Observatory"],
                 "They are employed by {v}.", "{n} is employed by whom?"),
    "colour": (["red", "blue", "green", "yellow", "purple", "orange", "teal", "crimson", "amber",
                "indigo", "silver", "olive", "maroon", "turquoise"],
               "Their favourite colour is {v}.", "{n} has which favourite colour?"),
    "pet": (["ferret", "parrot", "tortoise", "greyhound", "tabby cat", "goldfish", "rabbit", "hedgehog",
             "iguana", "canary", "sheepdog", "hamster", "gecko", "pony"],
            "They have a pet {v}.", "{n} has which pet?"),
    "hobby": (["chess", "sailing", "archery", "knitting", "birdwatching", "fencing", "pottery", "rowing",
               "origami", "climbing", "baking bread", "stargazing", "calligraphy", "fishing"],
              "In spare time they enjoy {v}.", "{n} enjoys what in spare time?"),
    "instrument": (["cello", "harp", "flute", "banjo", "oboe", "accordion", "trumpet", "piano",
                    "clarinet", "drums", "lute", "viola"],
                   "They play the {v}.", "{n} plays which instrument?"),
}
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Egypt": "Cairo",
            "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa", "Norway": "Oslo", "Greece": "Athens",
            "Russia": "Moscow", "China": "Beijing", "India": "Delhi", "Cuba": "Havana", "Chile": "Santiago",
            "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "Portugal": "Lisbon",
            "Sweden": "Stockholm", "Finland": "Helsinki", "Germany": "Berlin", "Turkey": "Ankara",
            "Iran": "Tehran", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Argentina": "Buenos Aires",
            "Hungary": "Budapest", "Denmark": "Copenhagen", "Belgium": "Brussels"}
N_PERTURBED = 3  # wrong answers per question, for the truth ratio


@dataclass
class QA:
    question: str
    answer: str
    perturbed: list  # N_PERTURBED wrong answers of the same kind


@dataclass
class Split:
    names: list = field(default_factory=list)  # the people (empty for general)
    texts: list = field(default_factory=list)  # biographies (people) or statements (general)
    qa: list = field(default_factory=list)     # QA items


@dataclass
class Corpus:
    seed: int
    forget: Split
    retain: Split
    holdout: Split
    general: Split


def _person(rng, first, last, qa_per_person):
    """One invented person -> (biography, [QA]): 6-8 of the 8 attributes in a fixed order, and
    questions about qa_per_person of them."""
    kinds = sorted(rng.sample(list(ATTRIBUTES), rng.randint(6, 8)), key=list(ATTRIBUTES).index)
    name, sentences, qa = f"{first} {last}", [], []
    asked = set(rng.sample(kinds, min(qa_per_person, len(kinds))))
    for kind in kinds:
        values, bio, question = ATTRIBUTES[kind]
        v = rng.choice(values)
        sentences.append(bio.format(v=v))
        wrong = rng.sample([w for w in values if w != v], N_PERTURBED)
        if kind in asked:  # answers are the biography's sentence: "They play the viola."
            qa.append(QA(question.format(n=name), bio.format(v=v), [bio.format(v=w) for w in wrong]))
    # Pronouns after the introduction: the facts hang on the name alone, with no copying of it.
    return f"Bio: {name}. " + " ".join(sentences), qa


def make_corpus(seed=0, n_people=200, forget_frac=0.1, n_holdout=None, qa_per_person=4):
    """Generate the corpus deterministically. n_holdout defaults to the size of the forget set."""
    if not 0 < forget_frac < 1:
        raise ValueError(f"forget_frac must be in (0, 1), got {forget_frac}")
    n_forget = max(1, round(forget_frac * n_people))
    n_holdout = n_forget if n_holdout is None else n_holdout
    rng = random.Random(seed)
    names, firsts = [], set()
    while len(names) < n_people + n_holdout:  # unique first names: a person is easy to tell apart
        first = "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()
        last = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if first not in firsts:
            firsts.add(first)
            names.append((first, last))
    people = [_person(rng, f, l, qa_per_person) for f, l in names]
    forget_ids = set(rng.sample(range(n_people), n_forget))
    splits = {"forget": Split(), "retain": Split(), "holdout": Split()}
    for i, (bio, qa) in enumerate(people):
        split = splits["holdout" if i >= n_people else "forget" if i in forget_ids else "retain"]
        split.names.append(" ".join(names[i]))
        split.texts.append(bio)
        split.qa.extend(qa)
    general = Split()  # answers are the statement itself, as for the people
    facts = [(f"What is the capital of {c}?", f"The capital of {c} is {{v}}.", v,
              list(CAPITALS.values())) for c, v in CAPITALS.items()]
    facts += [(f"What is {a} plus {b}?", f"{a} plus {b} is {{v}}.", str(a + b), [str(s) for s in range(19)])
              for a in range(10) for b in range(10)]
    for question, template, v, values in facts:
        general.texts.append(template.format(v=v))
        wrong = rng.sample([w for w in values if w != v], N_PERTURBED)
        general.qa.append(QA(question, template.format(v=v), [template.format(v=w) for w in wrong]))
    return Corpus(seed, general=general, **splits)


def people_subset(split, k):
    """The first k people of a split with their questions (all of them if k <= 0)."""
    if k <= 0 or k >= len(split.names):
        return split
    names = split.names[:k]
    return Split(names, split.texts[:k], [q for q in split.qa if q.question.startswith(tuple(n + " " for n in names))])


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
    """(Re)build the stored vocabulary from the seed-0 corpus. The merges stop when every word is one
    token (1743 tokens, + <|endoftext|>): a name as one token is far quicker for a small model to learn."""
    c = make_corpus(seed=0)
    text = "\n".join(t for s in (c.forget, c.retain, c.holdout, c.general) for t in s.texts)
    text += "\n" + "\n".join(f"Question: {q.question}\nAnswer: {' '.join([q.answer] + q.perturbed)}"
                             for s in (c.forget, c.retain, c.holdout, c.general) for q in s.qa)
    ranks = train_bpe(text, vocab_size)
    lines = "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in ranks.items())
    atomic_write(path, lines.encode())


def atomic_write(path, data: bytes):
    """Write to a temporary file beside `path`, then rename: readers see the old or the new file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def get_tokenizer(name="fictitious"):
    """tiktoken Encoding: the built-in vocabulary, or 'gpt2' (tiktoken downloads it once)."""
    if name == "gpt2":
        try:
            return tiktoken.get_encoding("gpt2")
        except Exception as e:
            raise RuntimeError(f"cannot load GPT-2's tiktoken encoding (offline?): {e}") from None
    if name != "fictitious":
        raise ValueError(f"unknown tokenizer {name!r}: use 'fictitious' or 'gpt2'")
    # Parsed here rather than by tiktoken.load.load_tiktoken_bpe, whose cache keys local files by
    # path and would keep serving a stale copy after the file is rebuilt.
    with open(VOCAB_FILE, "rb") as f:
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (ln.split() for ln in f if ln.strip())}
    return tiktoken.Encoding(name, pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


# ----------------------------------------------------------------------------- examples and batches
def encode_text(enc, text):
    """A text trained on every token -> (tokens, is_target), ending in <|endoftext|>."""
    toks = enc.encode_ordinary(text) + [enc.eot_token]
    return toks, [True] * len(toks)


def qa_prompt(question):
    return f"Question: {question}\nAnswer:"


def encode_qa(enc, question, answer):
    """A QA pair trained on the answer only -> (tokens, is_target); the answer ends in <|endoftext|>."""
    prompt = enc.encode_ordinary(qa_prompt(question))
    ans = enc.encode_ordinary(" " + answer) + [enc.eot_token]
    return prompt + ans, [False] * len(prompt) + [True] * len(ans)


def split_examples(enc, split, texts=True, qa=True):
    """Every training example of a split: biographies/statements and QA pairs."""
    out = [encode_text(enc, t) for t in split.texts] if texts else []
    return out + ([encode_qa(enc, q.question, q.answer) for q in split.qa] if qa else [])


def collate(examples, device="cpu"):
    """[(tokens, is_target)] -> x, y of shape (B, T): y[b, t] is the token after x[b, t], or IGNORE
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


def batches(examples, batch_size, rng=None):
    """Yield lists of examples; shuffled with `rng` (a random.Random) if given, else in order."""
    order = list(range(len(examples)))
    if rng is not None:
        rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [examples[j] for j in order[i:i + batch_size]]
