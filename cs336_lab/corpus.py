"""The bundled default corpus: synthetic children's stories, generated deterministically from a seed.

It is NOT real text. Short, simple stories are assembled from templates (eight plots, each sentence with
several phrasings) and word lists (characters, places, objects, feelings, weather, dialogue), so that a small
LM trained on a laptop CPU learns something visible in minutes. Story ``i`` of seed ``s`` depends only on
``(s, i)``, so the corpus is the same on every machine and any prefix of it is stable.

    >>> story = generate_story(random.Random(0))
    >>> story.split()[0] in {"Once", "One", "Long", "It", "There", "Every", "Yesterday"}
    True

Files are written like TinyStories: each story followed by ``"\\n<|endoftext|>\\n"``.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cs336_common.atomic import atomic_open, prepare_directory

logger = logging.getLogger(__name__)

EOT = "<|endoftext|>"
SEPARATOR = f"\n{EOT}\n"

# ----------------------------------------------------------------------------------------- word lists

GIRLS = (
    "Lily",
    "Mia",
    "Emma",
    "Sara",
    "Zoe",
    "Anna",
    "Lucy",
    "Ella",
    "Nora",
    "Ruby",
    "Maya",
    "Amy",
    "Rosa",
    "Ivy",
    "Hana",
    "Kate",
    "Lena",
    "Tia",
    "Jade",
    "Nina",
    "Olive",
    "Daisy",
    "Grace",
    "Alice",
    "Sofia",
)
BOYS = (
    "Tom",
    "Ben",
    "Max",
    "Sam",
    "Leo",
    "Jack",
    "Tim",
    "Finn",
    "Noah",
    "Eli",
    "Jake",
    "Omar",
    "Luca",
    "Ravi",
    "Kai",
    "Theo",
    "Hugo",
    "Owen",
    "Ned",
    "Felix",
    "Oscar",
    "Milo",
    "Arlo",
    "Ali",
    "Pablo",
)
ANIMALS = (
    "bunny",
    "puppy",
    "kitten",
    "fox",
    "bear",
    "duck",
    "mouse",
    "frog",
    "owl",
    "squirrel",
    "pig",
    "lamb",
    "turtle",
    "bird",
    "hedgehog",
    "deer",
    "goat",
    "cow",
    "penguin",
    "monkey",
)
ANIMAL_NAMES = (
    "Pip",
    "Coco",
    "Bubbles",
    "Fluffy",
    "Spot",
    "Rusty",
    "Hoppy",
    "Nutmeg",
    "Biscuit",
    "Pebble",
    "Whiskers",
    "Honey",
    "Patch",
    "Ziggy",
    "Button",
    "Sunny",
    "Maple",
    "Pickles",
    "Tilly",
    "Bramble",
)
TRAITS = (
    "kind",
    "brave",
    "shy",
    "curious",
    "silly",
    "clever",
    "gentle",
    "happy",
    "little",
    "busy",
    "cheerful",
    "quiet",
    "funny",
    "careful",
    "grumpy",
    "sleepy",
)
HELPERS = ("mom", "dad", "grandma", "grandpa", "big sister", "big brother", "teacher", "aunt", "uncle")
PLACES = {  # place -> a thing you can see there
    "the park": "a big green slide",
    "the forest": "tall old trees",
    "the beach": "soft yellow sand",
    "the garden": "bright red flowers",
    "the farm": "a noisy red barn",
    "the pond": "little green lily pads",
    "the school": "a yard full of children",
    "the library": "shelves full of books",
    "the meadow": "tall grass",
    "the hill": "a view of the whole town",
    "the river": "clear cold water",
    "the market": "baskets of fruit",
    "the zoo": "a tall giraffe",
    "the kitchen": "a warm oven",
    "the backyard": "a wooden swing",
    "the castle": "a high stone tower",
    "the lake": "a little blue boat",
    "the playground": "a red sandbox",
    "the mountain": "white snow on top",
    "the village": "small houses with red roofs",
}
COLORS = ("red", "blue", "green", "yellow", "purple", "pink", "orange", "shiny", "golden", "striped", "spotted")
OBJECTS = (
    "ball",
    "kite",
    "hat",
    "teddy bear",
    "book",
    "balloon",
    "toy boat",
    "drum",
    "scarf",
    "shell",
    "stone",
    "crayon",
    "cup",
    "bucket",
    "wagon",
    "doll",
    "robot",
    "umbrella",
    "flower",
    "key",
    "bell",
    "sock",
    "blanket",
    "train",
    "feather",
)
FOODS = ("apple", "cookie", "sandwich", "carrot", "banana", "cupcake", "pear", "muffin", "pie", "honey cake")
FEARS = (
    "the dark",
    "thunder",
    "big waves",
    "the tall slide",
    "the deep water",
    "the loud dog",
    "bees",
    "the old bridge",
    "the first day of school",
    "the big swing",
)
WEATHER = ("sunny", "rainy", "windy", "snowy", "cloudy", "warm", "cold", "bright")
TIMES = ("morning", "afternoon", "day", "evening")
OPENERS = (
    "Once upon a time, there was {a}.",
    "One {weather} morning, {a} woke up early.",
    "Long ago, in a small town, there lived {a}.",
    "There was once {a}.",
    "It was a {weather} {time}, and {a} wanted to play.",
    "Every day, {a} went outside to play.",
    "Yesterday, {a} had a very big day.",
)
ENDINGS = (
    "From that day on, {n} always remembered to {lesson}.",
    "{n} learned that it is good to {lesson}.",
    "And so {n} was happy, because {p} knew how to {lesson}.",
    "That night, {n} smiled and fell asleep.",
    "It was the best day ever.",
    '{N_cap} hugged everyone and said, "Thank you!"',
)
SAID = {  # speech verbs by the final punctuation of the words said
    "?": ("asked", "said", "wondered"),
    "!": ("said", "shouted", "cried", "called"),
    ".": ("said", "whispered", "said softly"),
}


@dataclass(frozen=True)
class Character:
    """Someone in a story: ``Character("Lily", "girl", "she", "her")`` or an animal named ``Pip``."""

    name: str
    kind: str
    subject: str  # she / he
    possessive: str  # her / his

    def intro(self, rng: random.Random) -> str:
        """ "a curious girl named Lily" """
        trait = rng.choice(TRAITS)
        article = "an" if trait[0] in "aeiou" else "a"
        return f"{article} {trait} {self.kind} named {self.name}"


def make_character(rng: random.Random, exclude: tuple[str, ...] = ()) -> Character:
    """A random child or animal whose name is not in ``exclude``."""
    while True:
        roll = rng.random()
        if roll < 0.35:
            c = Character(rng.choice(GIRLS), "girl", "she", "her")
        elif roll < 0.7:
            c = Character(rng.choice(BOYS), "boy", "he", "his")
        else:
            she = rng.random() < 0.5
            pronouns = ("she", "her") if she else ("he", "his")
            c = Character(rng.choice(ANIMAL_NAMES), rng.choice(ANIMALS), *pronouns)
        if c.name not in exclude:
            return c


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _say(rng: random.Random, who: str, words: str) -> str:
    """One line of dialogue, e.g. ``"Look!" said Tom.`` or ``Tom said, "Look!"``."""
    verb = rng.choice(SAID[words[-1]])
    if rng.random() < 0.5:
        if words.endswith("."):
            words = words[:-1] + ","  # "Let's go," said Tom.
        return f'"{words}" {verb} {who}.'
    return f'{_cap(who)} {verb}, "{words}"'


# ------------------------------------------------------------------------------------------------ plots
# Each plot returns (sentences, lesson): the middle of a story; the opener and ending are shared.


def _lost_object(rng: random.Random, a: Character, b: Character, place: str) -> tuple[list[str], str]:
    thing = f"{rng.choice(COLORS)} {rng.choice(OBJECTS)}"
    spot = rng.choice(
        (
            "under a bush",
            "behind a big rock",
            "in a hole in a tree",
            "next to the gate",
            "inside an old box",
            "on top of the fence",
            "under a pile of leaves",
        )
    )
    return [
        f"{_cap(a.name)} had a {thing}. {_cap(a.subject)} loved it very much.",
        f"One day, {a.name} took the {thing} to {place}, where there was {PLACES[place]}.",
        rng.choice(
            (
                f"But when it was time to go home, the {thing} was gone!",
                f"{_cap(a.subject)} played all day, and then {a.subject} could not find the {thing}.",
            )
        ),
        f"{a.name} felt {rng.choice(('sad', 'worried', 'upset'))} and began to cry.",
        f"{_cap(b.intro(rng))} saw {a.name} and came over.",
        _say(rng, b.name, rng.choice(("Why are you sad?", "What is wrong?", "Can I help you?"))),
        _say(rng, a.name, f"I lost my {thing}. I looked everywhere!"),
        _say(
            rng,
            b.name,
            rng.choice(
                (
                    "Let's look together.",
                    "Don't worry, we will find it.",
                    "Two eyes are good, but four eyes are better!",
                )
            ),
        ),
        f"They looked and looked. At last, {b.name} found the {thing} {spot}.",
        f"{a.name} was so {rng.choice(('happy', 'glad', 'surprised'))} that {a.subject} jumped up and down.",
        f"{_cap(a.subject)} shared {a.possessive} {rng.choice(FOODS)} with {b.name}, and they became good friends.",
    ], rng.choice(("help a friend", "ask for help", "take care of the things you love"))


def _new_friend(rng: random.Random, a: Character, b: Character, place: str) -> tuple[list[str], str]:
    game = rng.choice(("tag", "hide and seek", "catch", "jump rope", "ball", "hopscotch", "pirates"))
    return [
        f"{a.name} lived near {place}, but {a.subject} had no friends to play with.",
        f"{_cap(a.subject)} felt {rng.choice(('lonely', 'sad', 'bored'))}.",
        f"One day, {a.subject} saw {b.intro(rng)} sitting alone by {PLACES[place]}.",
        f"{a.name} felt shy, but {a.subject} walked over and said hello.",
        _say(rng, a.name, rng.choice((f"Do you want to play {game}?", "Will you be my friend?", "What is your name?"))),
        _say(
            rng,
            b.name,
            rng.choice(
                ("Yes, I would love to!", "Yes, please! I was feeling lonely too.", f"My name is {b.name}. Let's play!")
            ),
        ),
        f"They played {game} until the sun went down.",
        rng.choice(
            (
                f"{b.name} laughed so much that {b.subject} fell on the grass.",
                f"{a.name} did not feel lonely any more.",
                "They had so much fun together.",
            )
        ),
        _say(rng, a.name, "Can we play again tomorrow?"),
        _say(rng, b.name, "Yes! Every day!"),
    ], rng.choice(("be brave and say hello", "make new friends", "be kind to someone who is alone"))


def _fear(rng: random.Random, a: Character, b: Character, place: str) -> tuple[list[str], str]:
    fear, helper = rng.choice(FEARS), rng.choice(HELPERS)
    return [
        f"{a.name} was afraid of {fear}.",
        f"When {a.subject} went to {place} with {a.possessive} {helper}, {a.subject} held on tight.",
        _say(rng, a.name, rng.choice(("I am scared!", "I don't want to go!", "What if something bad happens?"))),
        f"{_cap(a.possessive)} {helper} knelt down and smiled.",
        _say(
            rng,
            f"{a.possessive} {helper}",
            rng.choice(
                (
                    "It is okay to be scared. Being brave means you try anyway.",
                    "I will be right here with you.",
                    "Take a deep breath. You can do it.",
                )
            ),
        ),
        f"{a.name} took a deep breath. {_cap(a.subject)} counted to three.",
        rng.choice(
            (
                f"Then {a.subject} tried, one small step at a time.",
                f"Then {a.subject} looked at {fear} and was not so scared any more.",
            )
        ),
        f"It was not so bad after all! {a.name} felt {rng.choice(('proud', 'brave', 'happy', 'strong'))}.",
        _say(rng, a.name, rng.choice(("I did it!", "Look at me! I am brave!", "That was fun! Can we do it again?"))),
    ], rng.choice(("be brave", "try new things", "take a deep breath when you are scared"))


def _sharing(rng: random.Random, a: Character, b: Character, place: str) -> tuple[list[str], str]:
    thing, helper = f"{rng.choice(COLORS)} {rng.choice(OBJECTS)}", rng.choice(HELPERS)
    return [
        f"{a.name} and {b.name} were playing at {place}.",
        f"They both wanted to play with the same {thing}.",
        _say(rng, a.name, rng.choice(("It is mine!", "I had it first!", "Give it to me!"))),
        _say(rng, b.name, rng.choice(("No, it is my turn!", "But I want it too!", "That is not fair!"))),
        f"They pulled and pulled, and both of them felt {rng.choice(('angry', 'cross', 'upset'))}.",
        f"Then {a.possessive} {helper} came and asked what was wrong.",
        _say(
            rng,
            f"the {helper}",
            rng.choice(
                (
                    "Why don't you take turns?",
                    "If you share, you can both have fun.",
                    "Toys are more fun when we play together.",
                )
            ),
        ),
        f"{a.name} thought about it. {_cap(a.subject)} gave the {thing} to {b.name} first.",
        f'{b.name} smiled and said, "Thank you! Now it is your turn."',
        f"Soon they were laughing and playing together with the {thing}.",
    ], rng.choice(("share", "take turns", "be fair to friends"))


def _quest(rng: random.Random, a: Character, b: Character, place: str) -> tuple[list[str], str]:
    goal = rng.choice(
        (
            "a flower for grandma",
            "a lost treasure",
            "a shiny stone",
            "the biggest apple",
            "a golden feather",
            "a magic key",
            "a pretty shell",
        )
    )
    obstacle, fix = rng.choice(
        (
            ("a wide river", "they found some big stones and hopped across"),
            ("a tall tree", f"{b.name} lifted {a.name} up high"),
            ("a dark cave", "they held hands and sang a song to feel brave"),
            ("a muddy path", "they took off their shoes and laughed as they walked"),
            ("a big locked gate", "they found the key under a flower pot"),
        )
    )
    return [
        f"{a.name} wanted to find {goal}.",
        f"{_cap(a.subject)} asked {b.name} to come too, and they set off to {place}.",
        f"At {place} they saw {PLACES[place]}, but then they came to {obstacle}.",
        _say(rng, b.name, rng.choice(("How will we get past?", "What do we do now?", "Oh no! We are stuck!"))),
        _say(rng, a.name, rng.choice(("I have an idea!", "Let's think.", "We can do it if we work together."))),
        f"{_cap(fix)}.",
        f"At last, they found {goal}. "
        f"It was {rng.choice(('beautiful', 'bigger than they thought', 'sparkly', 'perfect'))}.",
        f"They went home {rng.choice(('tired but happy', 'singing a song', 'holding hands'))}.",
    ], rng.choice(("work together", "never give up", "think before you act"))


def _baking(rng: random.Random, a: Character, b: Character, place: str) -> tuple[list[str], str]:
    treat = rng.choice(("a cake", "some cookies", "a pie", "some muffins", "pancakes"))
    oops = rng.choice(
        (
            "spilled the flour all over the floor",
            "dropped an egg",
            "put in too much sugar",
            "forgot to turn on the oven",
        )
    )
    return [
        f"It was {b.name}'s birthday, and {a.name} wanted to make {treat} for {b.name}.",
        f"{_cap(a.subject)} got a bowl, some flour, some eggs and some milk.",
        f"But {a.subject} {oops}.",
        _say(
            rng, a.name, rng.choice(("Oh no! Now it is all wrong!", "Oops! What a mess!", "I will never get it right!"))
        ),
        f"{_cap(a.possessive)} {rng.choice(HELPERS)} came into the kitchen and helped {a.name} try again.",
        f"This time, {a.name} went slowly and was very careful.",
        f"Soon the house smelled {rng.choice(('sweet', 'warm and yummy', 'like a bakery'))}.",
        f"{a.name} gave the {treat.split()[-1]} to {b.name}.",
        _say(
            rng,
            b.name,
            rng.choice(("This is the best birthday ever!", "Yum! Did you make this for me?", "Thank you, my friend!")),
        ),
    ], rng.choice(("try again", "be patient", "make things for the people you love"))


def _hurt_animal(rng: random.Random, a: Character, b: Character, place: str) -> tuple[list[str], str]:
    animal = rng.choice(("bird", "baby duck", "little frog", "tiny mouse", "kitten", "butterfly"))
    name = rng.choice([n for n in ANIMAL_NAMES if n not in (a.name, b.name)])
    return [
        f"One day at {place}, {a.name} found a {animal} with a hurt {rng.choice(('wing', 'leg', 'foot'))}.",
        _say(
            rng,
            a.name,
            rng.choice(("Poor thing! I will help you.", "Don't be scared. I am your friend.", "Are you okay?")),
        ),
        f"{_cap(a.subject)} carried the {animal} home in a soft {rng.choice(('box', 'basket', 'blanket'))}.",
        f"{a.name} gave it water and {rng.choice(('seeds', 'crumbs', 'a leaf'))}, and named it {name}.",
        f"Every day, {name} got a little stronger.",
        f"At last, {name} was well again, and it was time to say goodbye.",
        f"{a.name} felt {rng.choice(('sad', 'a little sad', 'proud'))}, but {a.subject} opened the door.",
        f"{name} went back to {place}. But the next morning, {name} came back to visit!",
    ], rng.choice(("be gentle with animals", "care for others", "help those who are small"))


def _weather(rng: random.Random, a: Character, b: Character, place: str) -> tuple[list[str], str]:
    return [
        f"{a.name} and {b.name} went to {place} to play with a {rng.choice(COLORS)} {rng.choice(OBJECTS)}.",
        f"They saw {PLACES[place]} and ran around laughing.",
        rng.choice(
            (
                "Suddenly, dark clouds came and it started to rain.",
                "Then the wind began to blow hard.",
                "Then they heard a big clap of thunder.",
            )
        ),
        _say(rng, b.name, rng.choice(("Quick, let's hide!", "We are getting wet!", "I want to go home!"))),
        f"They ran under a {rng.choice(('big tree', 'little roof', 'bridge', 'big umbrella'))} and waited.",
        f"{a.name} told {b.name} a funny story, and they forgot about the rain.",
        "Soon the sun came out again, and they saw a big rainbow in the sky.",
        _say(rng, a.name, rng.choice(("Look! A rainbow!", "Wow, it is so pretty!", "The rain made a rainbow for us!"))),
    ], rng.choice(("find something good on a bad day", "stay together", "be patient"))


PLOTS: tuple[Callable[[random.Random, Character, Character, str], tuple[list[str], str]], ...] = (
    _lost_object,
    _new_friend,
    _fear,
    _sharing,
    _quest,
    _baking,
    _hurt_animal,
    _weather,
)


def generate_story(rng: random.Random) -> str:
    """One story (a few short paragraphs) drawn with ``rng``."""
    a = make_character(rng)
    b = make_character(rng, exclude=(a.name,))
    place = rng.choice(list(PLACES))
    opener = rng.choice(OPENERS).format(a=a.intro(rng), weather=rng.choice(WEATHER), time=rng.choice(TIMES))
    body, lesson = rng.choice(PLOTS)(rng, a, b, place)
    ending = rng.choice(ENDINGS).format(n=a.name, N_cap=_cap(a.name), p=a.subject, lesson=lesson)
    sentences = [opener, *body, ending]
    # Two or three paragraphs, as in TinyStories.
    cut1 = rng.randint(2, max(2, len(sentences) // 2))
    cut2 = rng.randint(cut1 + 1, len(sentences) - 1)
    paragraphs = [sentences[:cut1], sentences[cut1:cut2], sentences[cut2:]]
    return "\n\n".join(" ".join(p) for p in paragraphs if p)


def generate_stories(num_stories: int, *, seed: int = 0, start: int = 0) -> Iterator[str]:
    """Stories ``start, ..., start + num_stories - 1`` of ``seed``; story ``i`` depends only on ``(seed, i)``."""
    for i in range(start, start + num_stories):
        yield generate_story(random.Random(f"cs336-corpus/{seed}/{i}"))


@dataclass(frozen=True)
class CorpusFiles:
    train: Path
    valid: Path


def write_corpus(
    out_dir: str | os.PathLike[str], *, num_train: int = 20_000, num_valid: int = 1_000, seed: int = 0
) -> CorpusFiles:
    """Write ``train.txt`` (stories ``0..num_train-1``) and ``valid.txt`` (the next ``num_valid``), atomically."""
    for name, value in (("num_train", num_train), ("num_valid", num_valid)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    out = prepare_directory(out_dir, "--out")
    files = CorpusFiles(train=out / "train.txt", valid=out / "valid.txt")
    for path, count, start in ((files.train, num_train, 0), (files.valid, num_valid, num_train)):
        with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
            for story in generate_stories(count, seed=seed, start=start):
                f.write(story + SEPARATOR)
        logger.info("wrote %s: %d stories, %.1f MB", path, count, path.stat().st_size / 1e6)
    return files


# -------------------------------------------------------------------------------------------------- CLI


def _run(args: argparse.Namespace) -> int:
    write_corpus(args.out, num_train=args.num_train, num_valid=args.num_valid, seed=args.seed)
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """``cs336 make-corpus [--out DIR] [--num-train N] [--num-valid N] [--seed S]``."""
    p = subparsers.add_parser(
        "make-corpus",
        help="generate the synthetic children's-stories corpus (offline)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", type=Path, default=Path("data/synthetic"), help="output directory (default: %(default)s)")
    p.add_argument("--num-train", type=int, default=20_000, help="stories in train.txt (default: %(default)s)")
    p.add_argument("--num-valid", type=int, default=1_000, help="stories in valid.txt (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed (default: %(default)s)")
    p.set_defaults(func=_run)
