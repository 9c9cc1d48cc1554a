"""The built-in corpus, "fictitious facts": a TOFU in miniature, generated from a seed.

TOFU (Maini et al., 2024) asks a model to forget invented authors it was fine-tuned on. Here a
seeded generator invents ~200 people with 6-8 attributes each. Every person appears twice:
  - a short biography, trained on every token: the verbatim target of MA and EL_n (METHOD §5);
  - question/answer pairs, trained on the answer tokens only, each with a few perturbed (wrong)
    answers, and a paraphrase of the answer (with its own perturbations) for the truth ratio.
Splits: forget (a fraction of the people), retain (the rest), holdout (people made the same way but
never trained on: the stopping rule's "unseen data"), general (capitals and sums that every model
should keep knowing). Nothing is downloaded; the same seed gives the same bytes.

    Bio: Telsa Anmar. They were born in 1990. They grew up in Corvana. They work as a weaver. ...
    Question: Telsa Anmar was born in which year?
    Answer: Their year of birth is 1990.          (paraphrase: They came into the world in 1990.)

The format came out of measurement: pronouns rather than repeated names, name-first questions, and
names that are one token each let a small model learn 200 people in about a minute on a CPU; the
plainer formats took several times longer or failed for some seeds. Every answer has three
phrasings (the biography's sentence and two more): one is trained for a fact, another is its
paraphrase, never trained with that fact, on which the truth ratio is measured (RESULTS.md, section 1).
"""
import random
from dataclasses import dataclass, field

SYLLABLES = ["ka", "ri", "lo", "ven", "mar", "zu", "tel", "is", "dor", "an", "bel", "shi", "o",
             "quel", "thi", "ne", "sa", "vor", "em", "lin", "gor", "ta", "fen", "ru", "mi", "dra"]
# attribute: (values, [phrasings], question). {n} = full name, {v} = value. The first phrasing is the
# biography's sentence; every phrasing can be a trained answer, and the other ones are paraphrases.
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
    prompt: str      # exactly what precedes the answer: "Question: ...\nAnswer:"
    answer: str      # exactly what is trained on, with its leading space: " They play the viola."
    perturbed: list  # wrong answers of the same kind, written the same way
    about: str = ""  # the person asked about (empty for the general facts)
    paraphrase: str = ""  # the true answer in a wording never trained for this fact (the truth ratio)
    perturbed_paraphrase: list = field(default_factory=list)  # the paraphrase with wrong values


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


def name_word(rng):
    """A capitalised two-syllable word: every first and last name is one of these 676, and each of
    them is one token of the built-in vocabulary (data.build_vocab), whatever the corpus seed."""
    return "".join(rng.choice(SYLLABLES) for _ in range(2)).capitalize()


def qa_prompt(question):
    return f"Question: {question}\nAnswer:"


def _answers(rng, phrasings, v, wrong, bio_first=True):
    """A trained answer and a paraphrase for value v, each with its wrong-value versions. The trained
    wording is any phrasing; the paraphrase is one that this fact is never trained in (neither as
    the answer nor, when bio_first, as the biography's sentence, phrasing 0). Every phrasing is
    trained for some facts, so the model knows each wording, just not with this fact."""
    trained = rng.randrange(len(phrasings))
    para = rng.choice([i for i in range(len(phrasings)) if i != trained and not (bio_first and i == 0)])
    say = lambda i, x: " " + phrasings[i].format(v=x)
    return dict(answer=say(trained, v), perturbed=[say(trained, w) for w in wrong],
                paraphrase=say(para, v), perturbed_paraphrase=[say(para, w) for w in wrong])


def _person(rng, name, qa_per_person):
    """One invented person -> (biography, [QA]): 6-8 of the 8 attributes in a fixed order, and
    questions about qa_per_person of them."""
    kinds = sorted(rng.sample(list(ATTRIBUTES), rng.randint(6, 8)), key=list(ATTRIBUTES).index)
    sentences, qa = [], []
    asked = set(rng.sample(kinds, min(qa_per_person, len(kinds))))
    for kind in kinds:
        values, phrasings, question = ATTRIBUTES[kind]
        v = rng.choice(values)
        sentences.append(phrasings[0].format(v=v))
        wrong = rng.sample([w for w in values if w != v], N_PERTURBED)
        if kind in asked:
            qa.append(QA(qa_prompt(question.format(n=name)), about=name, **_answers(rng, phrasings, v, wrong)))
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
        first, last = name_word(rng), name_word(rng)
        if first not in firsts:
            firsts.add(first)
            names.append((first, last))
    people = [_person(rng, f"{f} {l}", qa_per_person) for f, l in names]
    forget_ids = set(rng.sample(range(n_people), n_forget))
    splits = {"forget": Split(), "retain": Split(), "holdout": Split()}
    for i, (bio, qa) in enumerate(people):
        split = splits["holdout" if i >= n_people else "forget" if i in forget_ids else "retain"]
        split.names.append(" ".join(names[i]))
        split.texts.append(bio)
        split.qa.extend(qa)
    general = Split()  # statements; the answers are statements too, in one of two wordings
    facts = [(f"What is the capital of {c}?", [f"The capital of {c} is {{v}}.", f"The capital city of {c} is {{v}}."],
              v, list(CAPITALS.values())) for c, v in CAPITALS.items()]
    facts += [(f"What is {a} plus {b}?", [f"{a} plus {b} is {{v}}.", f"{a} and {b} make {{v}}."], str(a + b),
               [str(s) for s in range(19)]) for a in range(10) for b in range(10)]
    for question, phrasings, v, values in facts:
        wrong = rng.sample([w for w in values if w != v], N_PERTURBED)
        q = QA(qa_prompt(question), **_answers(rng, phrasings, v, wrong, bio_first=False))
        general.texts.append(q.answer.strip())
        general.qa.append(q)
    return Corpus(seed, general=general, **splits)


def people_subset(split, k):
    """The first k people of a split with their questions (all of them if k <= 0)."""
    if k <= 0 or k >= len(split.names):
        return split
    names = split.names[:k]
    return Split(names, split.texts[:k], [q for q in split.qa if q.about in names])
