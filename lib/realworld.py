"""Real-world knowledge as a scored split: TOFU's "real authors" and "world facts" at small scale.

A pool of questions about the real world (capitals, authors, painters, composers, scientists, chemical
symbols, planets, continents, languages, currencies, landmarks, numbers), each with a true value and
the other values of its kind, so that wrong answers, the truth ratio and "well-formed" work as they do
for the invented people. A real model is asked each one as a plain completion of the first phrasing
("The capital of France is"); `choose` keeps those it completes with the true value, and the kept
subjects are stored (assets/real_world.json, `python -m experiments.real_world` writes it). Unlearning
must leave these answers alone: they are scored, never trained on.
"""
import json
import os
import random

from lib import corpus
from lib.userio import UserError

ASSET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "real_world.json")

# category: (question, [first phrasing (a completion that ends in the value), second phrasing], {subject: value}).
# The values of a category are each other's wrong answers.
POOL = {
    "capital": ("What is the capital of {s}?", ["The capital of {s} is {v}.", "{v} is the capital of {s}."], {
        **corpus.CAPITALS, "Australia": "Canberra", "Mexico": "Mexico City", "Netherlands": "Amsterdam",
        "Switzerland": "Bern", "South Korea": "Seoul", "Indonesia": "Jakarta", "Philippines": "Manila",
        "Saudi Arabia": "Riyadh", "England": "London", "Scotland": "Edinburgh"}),
    "author": ("Who wrote {s}?", ["{s} was written by {v}.", "The author of {s} is {v}."], {
        "Hamlet": "Shakespeare", "Romeo and Juliet": "Shakespeare", "Macbeth": "Shakespeare",
        "Pride and Prejudice": "Austen", "Nineteen Eighty-Four": "Orwell", "Animal Farm": "Orwell",
        "War and Peace": "Tolstoy", "Anna Karenina": "Tolstoy", "the Odyssey": "Homer", "the Iliad": "Homer",
        "Don Quixote": "Cervantes", "Oliver Twist": "Dickens", "A Christmas Carol": "Dickens",
        "The Adventures of Tom Sawyer": "Twain", "Moby-Dick": "Melville", "Frankenstein": "Shelley",
        "The Great Gatsby": "Fitzgerald", "The Hobbit": "Tolkien", "The Lord of the Rings": "Tolkien",
        "Crime and Punishment": "Dostoevsky", "Harry Potter and the Philosopher's Stone": "Rowling"}),
    "painter": ("Who painted {s}?", ["{s} was painted by {v}.", "The painter of {s} is {v}."], {
        "the Mona Lisa": "Leonardo da Vinci", "The Last Supper": "Leonardo da Vinci", "The Starry Night": "Van Gogh",
        "Sunflowers": "Van Gogh", "Guernica": "Picasso", "The Scream": "Munch", "The Night Watch": "Rembrandt",
        "Girl with a Pearl Earring": "Vermeer", "The Birth of Venus": "Botticelli", "Water Lilies": "Monet",
        "the ceiling of the Sistine Chapel": "Michelangelo"}),
    "composer": ("Who composed {s}?", ["{s} was composed by {v}.", "The composer of {s} is {v}."], {
        "the Moonlight Sonata": "Beethoven", "the Ninth Symphony": "Beethoven", "The Magic Flute": "Mozart",
        "The Four Seasons": "Vivaldi", "Swan Lake": "Tchaikovsky", "The Nutcracker": "Tchaikovsky",
        "the Brandenburg Concertos": "Bach", "Messiah": "Handel", "The Blue Danube": "Strauss",
        "The Barber of Seville": "Rossini", "Carmen": "Bizet"}),
    "discovery": ("Who is known for {s}?", ["{s} is credited to {v}.", "The person known for {s} is {v}."], {
        "the theory of relativity": "Einstein", "the laws of motion": "Newton", "the law of universal gravitation": "Newton",
        "the theory of evolution by natural selection": "Darwin", "the discovery of penicillin": "Fleming",
        "the invention of the telephone": "Bell", "the phonograph": "Edison", "the periodic table": "Mendeleev",
        "the heliocentric model of the Solar System": "Copernicus", "the World Wide Web": "Berners-Lee",
        "the laws of inheritance in pea plants": "Mendel", "the discovery of radium": "Curie",
        "alternating current": "Tesla", "the first powered aeroplane": "Wright"}),
    "symbol": ("What is the chemical symbol for {s}?", ["The chemical symbol for {s} is {v}.", "{v} is the chemical symbol for {s}."], {
        "gold": "Au", "silver": "Ag", "iron": "Fe", "sodium": "Na", "potassium": "K", "oxygen": "O", "hydrogen": "H",
        "carbon": "C", "helium": "He", "lead": "Pb", "copper": "Cu", "mercury": "Hg", "calcium": "Ca", "nitrogen": "N"}),
    "planet": ("Which planet is {s}?", ["The planet {s} is {v}.", "{v} is the planet {s}."], {
        "known as the Red Planet": "Mars", "closest to the Sun": "Mercury", "famous for its rings": "Saturn",
        "we live on": "Earth", "farthest from the Sun": "Neptune", "with the Great Red Spot": "Jupiter",
        "known as the Morning Star": "Venus"}),
    "continent": ("On which continent is {s}?", ["{s} is in {v}.", "{s} lies on the continent of {v}."], {
        "Kenya": "Africa", "Egypt": "Africa", "Nigeria": "Africa", "Brazil": "South America", "Argentina": "South America",
        "Peru": "South America", "Japan": "Asia", "India": "Asia", "Thailand": "Asia", "France": "Europe",
        "Germany": "Europe", "Poland": "Europe", "Canada": "North America", "Mexico": "North America"}),
    "language": ("What language is mainly spoken in {s}?", ["The main language of {s} is {v}.", "In {s} people mainly speak {v}."], {
        "Brazil": "Portuguese", "Portugal": "Portuguese", "Mexico": "Spanish", "Argentina": "Spanish",
        "Germany": "German", "Austria": "German", "France": "French", "Japan": "Japanese", "Italy": "Italian",
        "Russia": "Russian", "the Netherlands": "Dutch", "Greece": "Greek", "Egypt": "Arabic", "Sweden": "Swedish"}),
    "currency": ("What is the currency of {s}?", ["The currency of {s} is the {v}.", "In {s} people pay with the {v}."], {
        "Japan": "yen", "the United Kingdom": "pound", "the United States": "dollar", "India": "rupee",
        "China": "yuan", "Russia": "ruble", "Mexico": "peso", "Switzerland": "franc", "South Korea": "won",
        "Germany": "euro", "Turkey": "lira"}),
    "landmark": ("In which city is {s}?", ["{s} is in the city of {v}.", "The city where {s} stands is {v}."], {
        "the Eiffel Tower": "Paris", "the Louvre": "Paris", "the Colosseum": "Rome", "the Statue of Liberty": "New York",
        "Big Ben": "London", "Buckingham Palace": "London", "the Kremlin": "Moscow",
        "the Acropolis": "Athens", "the Brandenburg Gate": "Berlin", "the Golden Gate Bridge": "San Francisco",
        "the Taj Mahal": "Agra"}),
    "number": ("What is the number of {s}?", ["The number of {s} is {v}.", "There are {v} {s}."], {
        "days in a week": "7", "legs on a spider": "8", "legs on an insect": "6", "continents on Earth": "7",
        "planets in the Solar System": "8", "hours in a day": "24", "minutes in an hour": "60",
        "sides of a triangle": "3", "sides of a hexagon": "6", "months in a year": "12", "days in a leap year": "366",
        "players on a football team": "11", "strings on a violin": "4", "bones in the adult human body": "206"}),
}

# Never scored: true facts in the same format that a fine-tune may train on, so that the model learns to
# answer real questions in the world's QA format from what it knows (without them the base answered 25%
# of the kept questions, with them 72%: RESULTS.md). Every subject differs from the scored pool's.
REPLAY = {
    "capital": ("What is the capital of {s}?", ["The capital of {s} is {v}.", "{v} is the capital of {s}."], {
        "Nepal": "Kathmandu", "Ukraine": "Kyiv", "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Morocco": "Rabat",
        "Ethiopia": "Addis Ababa", "Venezuela": "Caracas", "Colombia": "Bogota", "New Zealand": "Wellington",
        "Iceland": "Reykjavik", "Romania": "Bucharest", "the Czech Republic": "Prague", "Serbia": "Belgrade",
        "Malaysia": "Kuala Lumpur"}),
    "colour": ("What colour is {s}?", ["The colour of {s} is {v}.", "{s} is {v} in colour."], {
        "the sky on a clear day": "blue", "fresh grass": "green", "snow": "white", "a ripe banana": "yellow",
        "coal": "black", "a ripe tomato": "red", "milk chocolate": "brown"}),
    "animal": ("What kind of animal is {s}?", ["{s} is a {v}.", "Zoologists class {s} as a {v}."], {
        "a whale": "mammal", "a shark": "fish", "an eagle": "bird", "a frog": "amphibian", "a snake": "reptile",
        "a bat": "mammal", "a penguin": "bird", "a salmon": "fish", "a crocodile": "reptile", "a dolphin": "mammal"}),
    "opposite": ("What is the opposite of {s}?", ["The opposite of {s} is {v}.", "{v} is the opposite of {s}."], {
        "hot": "cold", "up": "down", "day": "night", "big": "small", "fast": "slow", "light": "dark",
        "happy": "sad", "early": "late"}),
    "young": ("What is a young {s} called?", ["A young {s} is called a {v}.", "The young of a {s} is a {v}."], {
        "dog": "puppy", "cat": "kitten", "cow": "calf", "sheep": "lamb", "horse": "foal", "duck": "duckling",
        "frog": "tadpole"}),
}


def question(category, subject, rng, pool=POOL):
    """One corpus.QA about a real fact, asked in the world's format and answered in the first phrasing;
    the paraphrase is the second phrasing, the wrong answers other values of the category in both."""
    q, forms, facts = pool[category]
    values = sorted(set(facts.values()))
    v = facts[subject]
    forms = tuple(capitalised(f.replace("{s}", subject)) for f in forms)
    return corpus.qa_item(rng, q.format(s=subject), forms, v, values, 0, 1)


def completion_prompt(category, subject):
    """The first phrasing up to the value: what a base model completes ("The capital of France is")."""
    return capitalised(POOL[category][1][0].replace("{s}", subject)).split("{v}")[0].rstrip()


def capitalised(sentence):
    return sentence[0].upper() + sentence[1:]


def candidates():
    """Every (category, subject) of the pool, in order."""
    return [(c, s) for c, (_, _, facts) in POOL.items() for s in facts]


def split(path=ASSET, seed=0, kept=True):
    """The kept questions (assets/real_world.json) as a corpus.Split, its wrong answers seeded; with
    kept=False the rest of the pool, which the model did not know (a fine-tune may train on those)."""
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist: python -m experiments.real_world chooses the questions")
    chosen = [tuple(k) for k in json.load(open(path))["kept"]]
    if unknown := [k for k in chosen if k[0] not in POOL or k[1] not in POOL[k[0]][2]]:
        raise UserError(f"{path} names questions the pool does not have: {unknown[:3]}")
    rng = random.Random(seed)
    return corpus.Split(qa=[question(c, s, rng) for c, s in (chosen if kept else
                                                             [k for k in candidates() if k not in chosen])])


def replay(path=ASSET, seed=0):
    """What a fine-tune may train on: the pool's questions the model did not know (split(kept=False))
    and the REPLAY facts, never the kept ones."""
    rng = random.Random(seed)
    extra = [question(c, s, rng, REPLAY) for c, (_, _, facts) in REPLAY.items() for s in facts]
    return corpus.Split(qa=split(path, seed, kept=False).qa + extra)
