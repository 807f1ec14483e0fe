"""Writes corpus.txt: small English fables composed from templates (deterministic; no external text).

The corpus is the bundled training data for the example configuration and the trainer's tests: regular
enough that a tiny model learns it in a few hundred steps, varied enough that a unigram model cannot.
Run: python examples/data/generate_corpus.py  (rewrites examples/data/corpus.txt, ~300 KB)
"""

from __future__ import annotations

import random
from pathlib import Path

NAMES = ["Ada", "Bram", "Cleo", "Dov", "Edda", "Finn", "Greta", "Hugo", "Iris", "Jonas", "Kira", "Leo",
         "Mila", "Nils", "Olga", "Pim", "Rosa", "Sami", "Tove", "Ugo", "Vera", "Wim", "Yara", "Zeno"]
ANIMALS = ["fox", "owl", "hare", "badger", "crow", "otter", "wolf", "heron", "mouse", "bear", "goat", "swan"]
ADJECTIVES = ["quiet", "clever", "hungry", "old", "young", "brave", "curious", "tired", "gentle", "proud",
              "lonely", "cheerful", "careful", "restless"]
PLACES = ["the river", "the old mill", "the hill", "the forest", "the market", "the harbour", "the orchard",
          "the bridge", "the meadow", "the village well", "the lighthouse", "the barn"]
TIMES = ["at dawn", "in the evening", "before the rain", "after supper", "on a cold morning",
         "late at night", "in early spring", "at the end of summer"]
OBJECTS = ["a silver key", "a loaf of bread", "a red lantern", "an old map", "a basket of apples",
           "a wooden flute", "a letter", "a lost boot", "a jar of honey", "a blue feather"]
FEELINGS = ["glad", "afraid", "surprised", "worried", "grateful", "puzzled", "calm"]
MORALS = [
    "Those who share their bread never eat alone.",
    "A careful step is faster than a hasty fall.",
    "Patience finds what hurry loses.",
    "A friend in the rain is worth two in the sun.",
    "Small kindnesses travel far.",
    "Listen first, and the answer often follows.",
    "Pride builds walls; kindness builds bridges.",
    "What is given freely returns in its own time.",
]


def fable(rng: random.Random) -> str:
    hero, friend = rng.sample(NAMES, 2)
    animal, other = rng.sample(ANIMALS, 2)
    adjective, place, time, thing = rng.choice(ADJECTIVES), rng.choice(PLACES), rng.choice(TIMES), rng.choice(OBJECTS)
    place2 = rng.choice([p for p in PLACES if p != place])
    feeling = rng.choice(FEELINGS)
    sentences = [
        f"Once there was a {adjective} {animal} named {hero} who lived near {place}.",
        f"{time.capitalize()}, {hero} found {thing} lying in the grass.",
        rng.choice([
            f"{hero} did not know whose it was, so {hero} walked to {place2} to ask.",
            f"{hero} wondered who had lost it and set off toward {place2}.",
            f"Not knowing what to do, {hero} carried it all the way to {place2}.",
        ]),
        f"There {hero} met {friend}, a {rng.choice(ADJECTIVES)} {other}.",
        rng.choice([
            f'"Is this yours?" asked {hero}. "It is," said {friend}, and {friend} was {feeling}.',
            f'"I found this near {place}," said {hero}. {friend} looked {feeling} and thanked {hero}.',
            f'"What a strange thing," said {friend}. "Let us find its owner together."',
        ]),
        rng.choice([
            f"The two of them stayed at {place2} until {rng.choice(TIMES)}.",
            f"Together they walked back to {place} and talked of many things.",
            f"From that day on, {hero} and {friend} met at {place2} every week.",
        ]),
        rng.choice(MORALS),
    ]
    return " ".join(sentences)


def main() -> None:
    rng = random.Random(20240611)
    paragraphs = [fable(rng) for _ in range(620)]
    target = Path(__file__).with_name("corpus.txt")
    target.write_text("\n\n".join(paragraphs) + "\n")
    print(f"wrote {target} ({target.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
