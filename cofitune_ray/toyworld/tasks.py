"""A toy task: an input generator, the rule that answers it, and the instructions that ask for it.

Tasks are built from two small vocabularies, so that worlds (`worlds.py`) can compose them:
input generators (`letters`, `capitals`, `digits`, `counted_letters`: random strings whose length is
drawn from a range) and rules (pure functions from an input to the expected output, e.g. `reverse`).
A task's instructions are its name plus optional phrasings of the same request; each example is
asked with one of them, drawn at random.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

LETTERS = string.ascii_lowercase
VOWELS = "aeiou"
COUNTED_LETTER = "a"
COUNTED_SHARE = 0.35  # about a third of the letters are the counted one, so small and large counts are common
CIPHER_KEY_SEED = 1234  # the cipher's fixed mapping; independent of the world seed
SCRAMBLE_ORDER = (2, 0, 3, 1)  # output position i takes input letter SCRAMBLE_ORDER[i]

GENERAL = "general"  # pretrained: the versatility the base model has
SPECIAL = "special"  # not pretrained: a speciality to fine-tune

InputGenerator = Callable[[random.Random], str]


@dataclass(frozen=True)
class Task:
    """A named task: its kind, how to draw an input, the rule that answers it, and how it is asked."""

    name: str
    kind: str  # GENERAL | SPECIAL
    inputs: InputGenerator
    rule: Callable[[str], str]
    description: str
    phrasings: tuple[str, ...] = ()  # other instructions for the same task (the name is always one)

    @property
    def instructions(self) -> tuple[str, ...]:
        """Every instruction this task is asked with: its name first, then its phrasings."""
        return (self.name, *self.phrasings)

    def draw(self, rng: random.Random) -> dict[str, str]:
        """One example {instruction, input, output}; the instruction is drawn only when there are several."""
        source = self.inputs(rng)
        instruction = rng.choice(self.instructions) if self.phrasings else self.name
        return {"instruction": instruction, "input": source, "output": self.rule(source)}


# Input generators. The length is drawn only when the range has more than one value, so a fixed
# length consumes exactly one random draw per symbol (the cliff world's files depend on that).

def _length(rng: random.Random, lengths: tuple[int, int]) -> int:
    low, high = lengths
    return low if low == high else rng.randint(low, high)


def _symbols(alphabet: str, lengths: tuple[int, int]) -> InputGenerator:
    def draw(rng: random.Random) -> str:
        return "".join(rng.choice(alphabet) for _ in range(_length(rng, lengths)))
    return draw


def letters(lengths: tuple[int, int]) -> InputGenerator:
    """Lowercase words, length drawn from the inclusive range `lengths`."""
    return _symbols(LETTERS, lengths)


def capitals(lengths: tuple[int, int]) -> InputGenerator:
    """Uppercase words."""
    return _symbols(LETTERS.upper(), lengths)


def digits(lengths: tuple[int, int]) -> InputGenerator:
    """Strings of decimal digits."""
    return _symbols(string.digits, lengths)


def counted_letters(lengths: tuple[int, int]) -> InputGenerator:
    """Lowercase words rich in COUNTED_LETTER (each letter is it with probability COUNTED_SHARE)."""
    def draw(rng: random.Random) -> str:
        return "".join(COUNTED_LETTER if rng.random() < COUNTED_SHARE else rng.choice(LETTERS[1:])
                       for _ in range(_length(rng, lengths)))
    return draw


# Rules: input -> expected output.

def copy(text: str) -> str:
    return text


def reverse(text: str) -> str:
    return text[::-1]


def rotate(text: str) -> str:
    """The first symbol moved to the end."""
    return text[1:] + text[0]


def upper(text: str) -> str:
    return text.upper()


def lower(text: str) -> str:
    return text.lower()


def _shift(text: str, by: int) -> str:
    alphabet = string.digits if text.isdigit() else LETTERS
    return "".join(alphabet[(alphabet.index(c) + by) % len(alphabet)] for c in text)


def successor(text: str) -> str:
    """Each letter replaced by the next one (z -> a); each digit by the next one (9 -> 0)."""
    return _shift(text, 1)


def predecessor(text: str) -> str:
    """Each letter replaced by the previous one (a -> z)."""
    return _shift(text, -1)


def count_counted(text: str) -> str:
    """How many times COUNTED_LETTER occurs."""
    return str(text.count(COUNTED_LETTER))


def count_vowels(text: str) -> str:
    return str(sum(c in VOWELS for c in text))


def length(text: str) -> str:
    return str(len(text))


def largest(text: str) -> str:
    return max(text)


def smallest(text: str) -> str:
    return min(text)


def sort(text: str) -> str:
    return "".join(sorted(text))


def dedupe(text: str) -> str:
    """Each symbol once, at its first occurrence."""
    return "".join(dict.fromkeys(text))


def first(text: str) -> str:
    return text[0]


def last(text: str) -> str:
    return text[-1]


def swap_pairs(text: str) -> str:
    """Neighbours swapped pairwise (abcde -> badce)."""
    return "".join(text[i + 1] + text[i] if i + 1 < len(text) else text[i] for i in range(0, len(text), 2))


def scramble(text: str) -> str:
    """The letters of a 4-letter word moved by the fixed permutation SCRAMBLE_ORDER."""
    return "".join(text[i] for i in SCRAMBLE_ORDER)


def cipher_key() -> dict[str, str]:
    """The fixed substitution: a permutation of the letters with no letter sent to itself or its successor."""
    rng = random.Random(CIPHER_KEY_SEED)
    while True:
        shuffled = rng.sample(LETTERS, len(LETTERS))
        if all(c != p and successor(p) != c for p, c in zip(LETTERS, shuffled)):
            return dict(zip(LETTERS, shuffled))


_CIPHER_KEY = cipher_key()


def cipher(text: str) -> str:
    """Each letter substituted by the fixed key (cipher_key)."""
    return "".join(_CIPHER_KEY[c] for c in text)
