"""The toy world's tasks: general ones (versatility) and special ones (speciality).

A task draws one (input, output) pair from a random generator. Inputs have a fixed length per task
(4 letters, 6 letters for count, 4 digits), which a tiny model learns far faster than
varying lengths. The instruction of every example is the task's name.

The special tasks are fixed mappings, the same for every world seed, so that base models pretrained
with different seeds face the same speciality: `cipher` substitutes letters by a fixed key (no letter
maps to itself or to its successor, so the cipher does not coincide with `successor`), `scramble`
moves the letters of a 4-letter word by a fixed permutation of positions.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

LETTERS = string.ascii_lowercase
WORD_LENGTH = 4
COUNT_LENGTH = 6
COUNTED_LETTER = "a"
SPECIAL_KEY_SEED = 1234  # the special tasks' fixed mappings; independent of the world seed
SCRAMBLE_ORDER = (2, 0, 3, 1)  # output position i takes input letter SCRAMBLE_ORDER[i]

GENERAL = "general"
SPECIAL = "special"


@dataclass(frozen=True)
class Task:
    """A named task: its kind and how to draw one (input, output) pair."""

    name: str
    kind: str  # GENERAL | SPECIAL
    draw: Callable[[random.Random], tuple[str, str]]
    description: str


def _word(rng: random.Random, length: int = WORD_LENGTH) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(length))


def _successor(letter: str) -> str:
    return LETTERS[(LETTERS.index(letter) + 1) % len(LETTERS)]


def cipher_key() -> dict[str, str]:
    """The fixed substitution: a permutation of the letters with no letter sent to itself or its successor."""
    rng = random.Random(SPECIAL_KEY_SEED)
    while True:
        shuffled = rng.sample(LETTERS, len(LETTERS))
        if all(c != p and _successor(p) != c for p, c in zip(LETTERS, shuffled)):
            return dict(zip(LETTERS, shuffled))


def _copy(rng):
    word = _word(rng)
    return word, word


def _reverse(rng):
    word = _word(rng)
    return word, word[::-1]


def _rotate(rng):
    word = _word(rng)
    return word, word[1:] + word[0]


def _upper(rng):
    word = _word(rng)
    return word, word.upper()


def _successor_task(rng):
    word = _word(rng)
    return word, "".join(_successor(c) for c in word)


def _count(rng):
    # about a third of the letters are the counted one, so counts 0..6 are all common
    word = "".join(COUNTED_LETTER if rng.random() < 0.35 else rng.choice(LETTERS[1:]) for _ in range(COUNT_LENGTH))
    return word, str(word.count(COUNTED_LETTER))


def _digits(rng: random.Random) -> str:
    return "".join(rng.choice(string.digits) for _ in range(WORD_LENGTH))


def _max(rng):
    digits = _digits(rng)
    return digits, max(digits)


def _min(rng):
    digits = _digits(rng)
    return digits, min(digits)


_CIPHER = cipher_key()


def _cipher(rng):
    word = _word(rng)
    return word, "".join(_CIPHER[c] for c in word)


def _scramble(rng):
    word = _word(rng)
    return word, "".join(word[i] for i in SCRAMBLE_ORDER)


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("copy", GENERAL, _copy, "repeat the 4-letter word"),
        Task("reverse", GENERAL, _reverse, "the word backwards"),
        Task("rotate", GENERAL, _rotate, "the word with its first letter moved to the end"),
        Task("upper", GENERAL, _upper, "the word in capitals"),
        Task("successor", GENERAL, _successor_task, "each letter replaced by the next one (z -> a)"),
        Task("count", GENERAL, _count, f"how many times '{COUNTED_LETTER}' occurs in a 6-letter word"),
        Task("max", GENERAL, _max, "the largest of four digits"),
        Task("min", GENERAL, _min, "the smallest of four digits"),
        Task("cipher", SPECIAL, _cipher, "a fixed letter-substitution cipher"),
        Task("scramble", SPECIAL, _scramble, "the word's letters moved by a fixed permutation of positions"),
    )
}
GENERAL_TASKS = tuple(name for name, task in TASKS.items() if task.kind == GENERAL)
SPECIAL_TASKS = tuple(name for name, task in TASKS.items() if task.kind == SPECIAL)
