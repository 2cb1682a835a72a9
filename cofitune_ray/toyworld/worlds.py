"""The named toy worlds: which tasks the base model is pretrained on, which speciality it is tuned to.

- `calibrated` (the default, the committed demo world in assets/toyworld/calibrated/seed-0): 18
  general tasks (15 on letters, 3 on digits), each asked in 3 phrasings, on inputs of 3 to 8 symbols;
  the speciality `drev` reverses 4 digits under its own instruction, and its training corpus, like
  real domain instruction data, also holds general instructions (`general_share` of it, drawn from
  the general tasks' training examples). Calibrated on the base and full SFT only (docs/toyworld.md):
  full SFT learns the speciality while losing part of the base's versatility, gradually.
- `cliff`: 8 general tasks, one instruction each, fixed input lengths; the specialities `cipher` and
  `scramble` are fresh mappings with nothing else in their corpus. Full SFT loses most of Vers within
  its first 50 steps, before Spec moves: the hard case, where no method avoids the cliff
  (configs/toy-hard.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass

from cofitune_ray.toyworld import tasks as t
from cofitune_ray.toyworld.pretrain import PretrainSettings
from cofitune_ray.toyworld.tasks import GENERAL, SPECIAL, Task


class UnknownWorldError(ValueError):
    """A toy-world name that is not one of WORLDS."""


@dataclass(frozen=True)
class WorldDefinition:
    """What a toy world is made of: its tasks, how many examples each split holds, how its base is pretrained."""

    name: str
    tasks: tuple[Task, ...]
    speciality: str  # the special task the world's configs fine-tune on
    split_sizes: dict[str, dict[str, int]]  # task kind -> split -> examples (drawn in this order)
    pretrain: PretrainSettings
    # share of a special task's train split drawn from the general tasks' train splits: a domain corpus
    # that also holds general instructions (data.with_general_share); 0 = the speciality's own examples only
    general_share: float = 0.0

    @property
    def task_map(self) -> dict[str, Task]:
        return {task.name: task for task in self.tasks}

    @property
    def general_tasks(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks if task.kind == GENERAL)

    @property
    def special_tasks(self) -> tuple[str, ...]:
        return tuple(task.name for task in self.tasks if task.kind == SPECIAL)


#: General tasks get train (pretraining), eval (versatility) and importance (soft-mask data) splits;
#: special tasks get train (fine-tuning) and eval (speciality). Eval is drawn first, so it does not
#: depend on the train size.
SPLIT_SIZES = {
    GENERAL: {"eval": 200, "importance": 200, "train": 5000},
    SPECIAL: {"eval": 200, "train": 2000},
}

WORD = (4, 4)
CLIFF = WorldDefinition(
    name="cliff",
    tasks=(
        Task("copy", GENERAL, t.letters(WORD), t.copy, "repeat the 4-letter word"),
        Task("reverse", GENERAL, t.letters(WORD), t.reverse, "the word backwards"),
        Task("rotate", GENERAL, t.letters(WORD), t.rotate, "the word with its first letter moved to the end"),
        Task("upper", GENERAL, t.letters(WORD), t.upper, "the word in capitals"),
        Task("successor", GENERAL, t.letters(WORD), t.successor, "each letter replaced by the next one (z -> a)"),
        Task("count", GENERAL, t.counted_letters((6, 6)), t.count_counted, "how many 'a' in a 6-letter word"),
        Task("max", GENERAL, t.digits(WORD), t.largest, "the largest of four digits"),
        Task("min", GENERAL, t.digits(WORD), t.smallest, "the smallest of four digits"),
        Task("cipher", SPECIAL, t.letters(WORD), t.cipher, "a fixed letter-substitution cipher"),
        Task("scramble", SPECIAL, t.letters(WORD), t.scramble, "the letters moved by a fixed permutation of positions"),
    ),
    speciality="cipher",
    split_sizes=SPLIT_SIZES,
    pretrain=PretrainSettings(steps=1200),
)

VARIED = (3, 8)
CALIBRATED = WorldDefinition(
    name="calibrated",
    tasks=(
        Task("copy", GENERAL, t.letters(VARIED), t.copy, "repeat the word", ("repeat", "echo")),
        Task("reverse", GENERAL, t.letters(VARIED), t.reverse, "the word backwards", ("backwards", "mirror")),
        Task("rotate", GENERAL, t.letters(VARIED), t.rotate, "first letter moved to the end", ("cycle", "shift")),
        Task("upper", GENERAL, t.letters(VARIED), t.upper, "the word in capitals", ("caps", "shout")),
        Task("lower", GENERAL, t.capitals(VARIED), t.lower, "a capitalised word in lowercase", ("small", "quiet")),
        Task("successor", GENERAL, t.letters(VARIED), t.successor, "each letter's successor (z -> a)",
             ("next", "plus1")),
        Task("predecessor", GENERAL, t.letters(VARIED), t.predecessor, "each letter's predecessor (a -> z)",
             ("prev", "minus1")),
        Task("sort", GENERAL, t.letters(VARIED), t.sort, "the letters in alphabetical order", ("alphabetize", "order")),
        Task("dedupe", GENERAL, t.letters(VARIED), t.dedupe, "each letter once, at its first occurrence",
             ("unique", "distinct")),
        Task("swap", GENERAL, t.letters(VARIED), t.swap_pairs, "neighbours swapped pairwise", ("pairswap", "zigzag")),
        Task("first", GENERAL, t.letters(VARIED), t.first, "the first letter", ("head", "initial")),
        Task("last", GENERAL, t.letters(VARIED), t.last, "the last letter", ("tail", "final")),
        Task("length", GENERAL, t.letters(VARIED), t.length, "how many letters", ("len", "size")),
        Task("count", GENERAL, t.counted_letters(VARIED), t.count_counted, "how many 'a'", ("count_a", "how_many_a")),
        Task("vowels", GENERAL, t.letters(VARIED), t.count_vowels, "how many vowels", ("nvowels", "count_vowels")),
        Task("max", GENERAL, t.digits(VARIED), t.largest, "the largest digit", ("largest", "biggest")),
        Task("min", GENERAL, t.digits(VARIED), t.smallest, "the smallest digit", ("smallest", "least")),
        Task("dsort", GENERAL, t.digits(VARIED), t.sort, "the digits in ascending order", ("sort_digits", "ascending")),
        Task("drev", SPECIAL, t.digits(WORD), t.reverse, "4 digits backwards (reverse, on digits)"),
    ),
    speciality="drev",
    split_sizes=SPLIT_SIZES,
    pretrain=PretrainSettings(steps=2000),
    general_share=0.15,
)

WORLDS: dict[str, WorldDefinition] = {world.name: world for world in (CALIBRATED, CLIFF)}
#: The world the demo, its configs and `prepare` use.
DEFAULT_WORLD = CALIBRATED.name


def get_world(name: str) -> WorldDefinition:
    """The world called `name`; an unknown name is an error that lists the known ones."""
    if name not in WORLDS:
        raise UnknownWorldError(f"unknown toy world {name!r}; the toy worlds are: {', '.join(WORLDS)}")
    return WORLDS[name]
