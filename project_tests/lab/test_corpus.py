"""The bundled synthetic corpus: deterministic, varied, in the TinyStories file format."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from cs336_lab.corpus import (
    ANIMAL_NAMES,
    BOYS,
    EOT,
    GIRLS,
    PLACES,
    SEPARATOR,
    generate_stories,
    generate_story,
    write_corpus,
)


@pytest.fixture(scope="module")
def stories() -> list[str]:
    return list(generate_stories(500, seed=0))


def test_same_seed_same_stories_and_stable_prefix():
    assert list(generate_stories(20, seed=3)) == list(generate_stories(20, seed=3))
    # story i depends only on (seed, i): a window of a longer run equals a shorter run started there
    assert list(generate_stories(30, seed=3))[10:] == list(generate_stories(20, seed=3, start=10))


def test_different_seeds_differ():
    a, b = list(generate_stories(50, seed=0)), list(generate_stories(50, seed=1))
    assert sum(x == y for x, y in zip(a, b)) <= 1


def test_generate_story_uses_only_the_given_rng():
    state = random.getstate()
    assert generate_story(random.Random(5)) == generate_story(random.Random(5))
    assert random.getstate() == state  # no global random state touched


def test_stories_are_short_clean_text(stories):
    lengths = [len(s) for s in stories]
    assert 200 <= min(lengths) and max(lengths) <= 2_000
    for story in stories:
        assert EOT not in story
        assert story == story.strip()
        assert story[-1] in '.!"'
        assert story.isascii()
        assert "{" not in story and "}" not in story  # no unfilled template slot
        assert story.count('"') % 2 == 0  # quotes are balanced


def test_variety(stories):
    text = "\n".join(stories)
    names = set(GIRLS) | set(BOYS) | set(ANIMAL_NAMES)
    used_names = {w for w in re.findall(r"[A-Z][a-z]+", text) if w in names}
    assert len(used_names) >= 0.9 * len(names)
    assert sum(place in text for place in PLACES) == len(PLACES)
    assert len(set(stories)) == len(stories)
    sentences = re.findall(r"[^.!?\"]+[.!?]", text)
    assert len(set(sentences)) / len(sentences) > 0.25  # templates, but many distinct fillings
    assert text.count('"') / len(stories) >= 4  # dialogue in (almost) every story
    first_words = Counter(s.split()[0] for s in stories)
    assert len(first_words) >= 5 and first_words.most_common(1)[0][1] < 0.4 * len(stories)
    feelings = ("happy", "sad", "scared", "proud", "lonely", "angry", "worried", "surprised")
    assert all(f in text for f in feelings)


def test_write_corpus_split_and_format(tmp_path):
    files = write_corpus(tmp_path / "c", num_train=40, num_valid=7, seed=2)
    train, valid = files.train.read_text(), files.valid.read_text()
    for text, count in ((train, 40), (valid, 7)):
        assert text.endswith(SEPARATOR)
        docs = text.split(SEPARATOR)
        assert docs[-1] == "" and len(docs) == count + 1
        assert all(doc and EOT not in doc for doc in docs[:-1])
    # valid continues the sequence of stories where train stops: no story is shared
    assert valid.split(SEPARATOR)[:-1] == list(generate_stories(7, seed=2, start=40))
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["train.txt", "valid.txt"]
    assert write_corpus(tmp_path / "d", num_train=40, num_valid=7, seed=2).train.read_bytes() == train.encode()


@pytest.mark.parametrize(
    "kwargs", [{"num_train": 0}, {"num_valid": -1}, {"num_train": 2.5}], ids=["zero", "negative", "float"]
)
def test_write_corpus_rejects_bad_counts(tmp_path, kwargs):
    with pytest.raises(ValueError, match="positive int"):
        write_corpus(tmp_path, **kwargs)


def test_default_corpus_size_is_several_megabytes():
    sample = list(generate_stories(200, seed=0))
    mean_bytes = sum(len(s) + len(SEPARATOR) for s in sample) / len(sample)
    from inspect import signature

    num_train = signature(write_corpus).parameters["num_train"].default
    assert 3e6 <= mean_bytes * num_train <= 20e6
