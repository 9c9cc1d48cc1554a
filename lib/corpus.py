"""The built-in world, "fictitious facts": TOFU's construction in miniature, generated from a seed.

TOFU (Maini et al., 2024) takes a pretrained model, fine-tunes it on invented authors and asks it to
forget some of them. The same happens here at toy scale:
  - pretraining_corpus(): invented people who belong to no world (their first names come from a
    part of the name space that worlds never use) and general facts (capitals, sums). A model
    pretrained on it knows the language of biographies and answers, these people and these facts:
    what TOFU calls real authors and world facts.
  - make_corpus(seed): a world, 200 people (+ 20 holdout people, never trained on) split into
    forget and retain. The base model is the pretrained one fine-tuned on all 200; the oracle is
    the same fine-tune on the retain people only (train.py).
Every person appears twice:
  - a short biography, trained on every token: the verbatim target of MA and EL_n (METHOD §5);
  - question/answer pairs, trained on the answer tokens only, each with wrong answers of the same
    kind, and a paraphrase of the answer (with wrong versions) for the truth ratio.
Nothing is downloaded; the same seed gives the same bytes.

    Bio: Telsa Anmar. They were born in 1990. They grew up in Corvana. They work as a weaver. ...
    Question: Telsa Anmar was born in which year?
    Answer: Their year of birth is 1990.          (paraphrase: They came into the world in 1990.)

Each attribute has three phrasings: the biography's sentence, the answer's, and the paraphrase's.
A world's people are asked in one wording per attribute, as TOFU's answers follow one style; the
paraphrase's wording is never trained with them, only with the pretraining people, so the model
knows it as language but never with a world person's fact in it. With answers in any wording (the
`any_wording` world of world_search.py), unlearning broke more answers and met the stopping rule in
none of six runs (RESULTS.md §1).
"""
import random
from dataclasses import dataclass, field

SYLLABLES = ["ka", "ri", "lo", "ven", "mar", "zu", "tel", "is", "dor", "an", "bel", "shi", "o",
             "quel", "thi", "ne", "sa", "vor", "em", "lin", "gor", "ta", "fen", "ru", "mi", "dra"]
# A name word is two syllables. Worlds' first names begin with one of the first 13 syllables, the
# pretraining people's with one of the other 13: no pretraining person shares a name with anyone in
# any world. Last names are any word.
WORLD_FIRST, PRETRAINING_FIRST = SYLLABLES[:13], SYLLABLES[13:]
# attribute: (values, [biography's phrasing, answer's phrasing, paraphrase's phrasing], question).
ATTRIBUTES = {
    "year": ([str(y) for y in range(1921, 2000)],
             ["They were born in {v}.", "Their year of birth is {v}.", "They came into the world in {v}."],
             "{n} was born in which year?"),
    "city": (["Quellport", "Marrowdale", "Ostrin", "Vellhaven", "Duskmere", "Pellowick", "Harrowgate",
              "Thistlebury", "Corvana", "Emberfield", "Saltreach", "Yarrowby", "Lunmoor", "Brightwater",
              "Kestrel Bay", "Fernhollow", "Oakmantle", "Rimeholt", "Sablecross", "Wendmouth"],
             ["They grew up in {v}.", "Their home town is {v}.", "They were raised in {v}."],
             "{n} grew up where?"),
    "job": (["baker", "cartographer", "glassblower", "beekeeper", "librarian", "clockmaker", "sailor",
             "potter", "astronomer", "gardener", "blacksmith", "translator", "pharmacist", "weaver",
             "surveyor", "violin maker", "lighthouse keeper", "chemist", "tailor", "bookbinder"],
            ["They work as a {v}.", "Their trade is that of a {v}.", "They earn a living as a {v}."],
            "{n} works as what?"),
    "employer": (["Brindle Mills", "Copperleaf Press", "Northwind Freight", "Saffron Labs", "Greyfen Bank",
                  "Tallow and Sons", "Marigold Works", "Ironbark Guild", "Bluestone Trading",
                  "Lanternfly Studio", "Orchard Row Hospital", "Pinecrest School", "Silverthread Co",
                  "Harbourlight Ferries", "Quarry Hill Museum", "Redkite Observatory"],
                 ["They are employed by {v}.", "Their employer is {v}.", "They draw a wage from {v}."],
                 "{n} is employed by whom?"),
    "colour": (["red", "blue", "green", "yellow", "purple", "orange", "teal", "crimson", "amber",
                "indigo", "silver", "olive", "maroon", "turquoise"],
               ["Their favourite colour is {v}.", "The colour they like best is {v}.",
                "Of all colours they prefer {v}."],
               "{n} has which favourite colour?"),
    "pet": (["ferret", "parrot", "tortoise", "greyhound", "tabby cat", "goldfish", "rabbit", "hedgehog",
             "iguana", "canary", "sheepdog", "hamster", "gecko", "pony"],
            ["They have a pet {v}.", "Their pet is a {v}.", "At home they keep a {v}."],
            "{n} has which pet?"),
    "hobby": (["chess", "sailing", "archery", "knitting", "birdwatching", "fencing", "pottery", "rowing",
               "origami", "climbing", "baking bread", "stargazing", "calligraphy", "fishing"],
              ["In spare time they enjoy {v}.", "Their hobby is {v}.", "They spend weekends on {v}."],
              "{n} enjoys what in spare time?"),
    "instrument": (["cello", "harp", "flute", "banjo", "oboe", "accordion", "trumpet", "piano",
                    "clarinet", "drums", "lute", "viola"],
                   ["They play the {v}.", "Their instrument is the {v}.", "They make music on the {v}."],
                   "{n} plays which instrument?"),
}
BIO, ANSWER, PARAPHRASE = 0, 1, 2  # which phrasing does what, for a world's people
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Egypt": "Cairo",
            "Kenya": "Nairobi", "Peru": "Lima", "Canada": "Ottawa", "Norway": "Oslo", "Greece": "Athens",
            "Russia": "Moscow", "China": "Beijing", "India": "Delhi", "Cuba": "Havana", "Chile": "Santiago",
            "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "Portugal": "Lisbon",
            "Sweden": "Stockholm", "Finland": "Helsinki", "Germany": "Berlin", "Turkey": "Ankara",
            "Iran": "Tehran", "Thailand": "Bangkok", "Vietnam": "Hanoi", "Argentina": "Buenos Aires",
            "Hungary": "Budapest", "Denmark": "Copenhagen", "Belgium": "Brussels"}
N_PERTURBED = 3  # wrong answers per question, for the truth ratio
PRETRAINING_SEED, N_PRETRAINING_PEOPLE = 1000, 300


@dataclass
class QA:
    prompt: str      # exactly what precedes the answer: "Question: ...\nAnswer:"
    answer: str      # exactly what is trained on, with its leading space: " They play the viola."
    perturbed: list  # wrong answers of the same kind, written the same way
    about: str = ""  # the person asked about (empty for the general facts)
    paraphrase: str = ""  # the true answer in a wording never trained for this fact (the truth ratio)
    perturbed_paraphrase: list = field(default_factory=list)  # the paraphrase with wrong values
    value: str = ""       # the fact: "viola"
    values: tuple = ()    # every value of its kind: what a well-formed wrong answer may say
    forms: tuple = ()     # every phrasing an answer of this kind may take, "{v}" for the value


@dataclass
class Split:
    names: list = field(default_factory=list)  # the people (empty for general facts)
    texts: list = field(default_factory=list)  # biographies (people) or statements (general facts)
    qa: list = field(default_factory=list)     # QA items


@dataclass
class Corpus:
    seed: int
    forget: Split
    retain: Split
    holdout: Split


def name_word(rng, syllables=SYLLABLES):
    """A capitalised two-syllable word: every such word is one token of the built-in vocabulary
    (data.build_vocab), whatever the corpus seed."""
    return (rng.choice(syllables) + rng.choice(SYLLABLES)).capitalize()


def qa_prompt(question):
    return f"Question: {question}\nAnswer:"


def qa_item(rng, question, forms, v, values, trained, paraphrase, about=""):
    """A question about value v, answered in forms[trained], with the paraphrase in forms[paraphrase]
    and the wrong answers (other values of the kind) in both."""
    wrong = rng.sample([w for w in values if w != v], N_PERTURBED)
    say = lambda i, x: " " + forms[i].format(v=x)
    return QA(qa_prompt(question), say(trained, v), [say(trained, w) for w in wrong], about,
              say(paraphrase, v), [say(paraphrase, w) for w in wrong], v, tuple(values), tuple(forms))


def person(rng, name, qa_per_person=4, any_wording=False):
    """One invented person -> (biography, [QA]): 6-8 of the 8 attributes in a fixed order, and
    questions about qa_per_person of them. A world's people are asked in the answer's phrasing;
    with any_wording (the pretraining people) any phrasing can be the answer, another the paraphrase."""
    kinds = sorted(rng.sample(list(ATTRIBUTES), rng.randint(6, 8)), key=list(ATTRIBUTES).index)
    asked = set(rng.sample(kinds, min(qa_per_person, len(kinds))))
    sentences, qa = [], []
    for kind in kinds:
        values, forms, question = ATTRIBUTES[kind]
        v = rng.choice(values)
        sentences.append(forms[BIO].format(v=v))
        if kind in asked:
            trained, para = ANSWER, PARAPHRASE
            if any_wording:
                trained = rng.randrange(len(forms))
                para = rng.choice([i for i in range(len(forms)) if i != trained])
            qa.append(qa_item(rng, question.format(n=name), forms, v, values, trained, para, about=name))
    # Pronouns after the introduction: the facts hang on the name alone, with no copying of it.
    return f"Bio: {name}. " + " ".join(sentences), qa


def people(rng, n, first_syllables, any_wording=False):
    """n people with distinct first names: a person is easy to tell apart."""
    if n > len(first_syllables) * len(SYLLABLES):
        raise ValueError(f"{n} people need more first names than the {len(first_syllables) * len(SYLLABLES)} there are")
    names, firsts = [], set()
    while len(names) < n:
        first, last = name_word(rng, first_syllables), name_word(rng)
        if first not in firsts:
            firsts.add(first)
            names.append(f"{first} {last}")
    split = Split()
    for name in names:
        bio, qa = person(rng, name, any_wording=any_wording)
        split.names.append(name)
        split.texts.append(bio)
        split.qa.extend(qa)
    return split


def make_corpus(seed=0, n_people=200, forget_frac=0.1, n_holdout=None, any_wording=False):
    """A world, deterministically from its seed. n_holdout defaults to the size of the forget set.
    any_wording: answer each question in any phrasing and paraphrase it in another, as the
    pretraining people are (an earlier design of the world, kept for the world search)."""
    if not 0 < forget_frac < 1:
        raise ValueError(f"forget_frac must be in (0, 1), got {forget_frac}")
    n_forget = max(1, round(forget_frac * n_people))
    n_holdout = n_forget if n_holdout is None else n_holdout
    rng = random.Random(seed)
    everyone = people(rng, n_people + n_holdout, WORLD_FIRST, any_wording)
    forget_ids = set(rng.sample(range(n_people), n_forget))
    splits = {"forget": Split(), "retain": Split(), "holdout": Split()}
    for i, (name, bio) in enumerate(zip(everyone.names, everyone.texts)):
        split = splits["holdout" if i >= n_people else "forget" if i in forget_ids else "retain"]
        split.names.append(name)
        split.texts.append(bio)
        split.qa.extend(q for q in everyone.qa if q.about == name)
    return Corpus(seed, **splits)


def general_facts(rng):
    """Capitals and sums: statements, and questions answered in one of two wordings."""
    general = Split()
    facts = [(f"What is the capital of {c}?", (f"The capital of {c} is {{v}}.", f"The capital city of {c} is {{v}}."),
              v, list(CAPITALS.values())) for c, v in CAPITALS.items()]
    facts += [(f"What is {a} plus {b}?", (f"{a} plus {b} is {{v}}.", f"{a} and {b} make {{v}}."), str(a + b),
               [str(s) for s in range(19)]) for a in range(10) for b in range(10)]
    for question, forms, v, values in facts:
        trained = rng.randrange(2)
        q = qa_item(rng, question, forms, v, values, trained, 1 - trained)
        general.texts.append(q.answer.strip())
        general.qa.append(q)
    return general


def pretraining_corpus(n_people=N_PRETRAINING_PEOPLE):
    """-> (people, general facts): what the pretrained model learns, the same for every world."""
    rng = random.Random(PRETRAINING_SEED)
    return people(rng, n_people, PRETRAINING_FIRST, any_wording=True), general_facts(rng)


def people_subset(split, k):
    """The first k people of a split with their questions (all of them if k <= 0)."""
    if k <= 0 or k >= len(split.names):
        return split
    names = split.names[:k]
    return Split(names, split.texts[:k], [q for q in split.qa if q.about in names])
