"""The SmolLM2 world: a speciality the base model fails and general abilities it has, as data files.

Everything is generated here, deterministically from a seed, from tables written in this module and
text that ships with Python (`pydoc_data.topics`, the English text of Python's own documentation):

- Speciality `dates`: a date written in one of six forms (`5 March 2024`, `the fifth of March, 2024`,
  `March 5th, 2024`, `Mar. 5, 2024`, `5/3/2024 (day/month/year)`, `2024, March 5`) rewritten as eight
  digits, year, month, day (`20240305`), under one instruction. Split by item: the held-out dates are
  drawn first and no training example has the same day, month and year. Scored by exact match.
- Versatility (the base model's general abilities):
  - `facts`: capitals of countries and names of chemical elements from their symbols, 4-option multiple
    choice scored by option log-likelihood through the chat template (metric `choice`);
  - `prose`: continuing passages of Python's documentation (topics the importance data does not use),
    scored by the per-token probability of the real continuation (metric `loglik`);
  - `arithmetic`: sums and differences of two-digit numbers, 4-option multiple choice (the right value,
    one off by one, one off by ten, one off by both), scored by option log-likelihood;
  - `opposites`: an lm-evaluation-harness task over a local JSONL file (antonyms, 4 options, `acc`,
    lm-eval's own plain prompt, not the chat template).
- Importance data (for soft-masked nodes): passages of the first documentation topics (as the
  `prose` set is built, from other topics) and arithmetic items of their own.

The base model answers neither arithmetic nor simple rewriting instructions with the bare answer
(it explains instead), so general abilities are scored by option or answer log-likelihood, which
measures what it knows without asking for a format it does not follow.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth",
            "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
            "eighteenth", "nineteenth", "twentieth", "twenty-first", "twenty-second", "twenty-third",
            "twenty-fourth", "twenty-fifth", "twenty-sixth", "twenty-seventh", "twenty-eighth", "twenty-ninth",
            "thirtieth", "thirty-first")
DATE_INSTRUCTION = "Rewrite this date as eight digits: year, month, day (YYYYMMDD)."
YEARS = (1950, 2049)


def _suffix(day: int) -> str:
    if day in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


#: The six written forms of a date (year, month 1-12, day).
DATE_FORMS = (
    lambda y, m, d: f"{d} {MONTHS[m - 1]} {y}",
    lambda y, m, d: f"the {ORDINALS[d - 1]} of {MONTHS[m - 1]}, {y}",
    lambda y, m, d: f"{MONTHS[m - 1]} {d}{_suffix(d)}, {y}",
    lambda y, m, d: f"{MONTHS[m - 1][:3]}. {d}, {y}",
    lambda y, m, d: f"{d}/{m}/{y} (day/month/year)",
    lambda y, m, d: f"{y}, {MONTHS[m - 1]} {d}",
)

#: (country, capital): well-known and less-known ones, so the base model is good but not perfect.
CAPITALS = (
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Canada", "Ottawa"),
    ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("India", "New Delhi"), ("Kenya", "Nairobi"),
    ("Peru", "Lima"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"),
    ("Poland", "Warsaw"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Turkey", "Ankara"), ("Iran", "Tehran"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"),
    ("Colombia", "Bogota"), ("Mexico", "Mexico City"), ("Cuba", "Havana"), ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"), ("Ethiopia", "Addis Ababa"), ("Ghana", "Accra"), ("Denmark", "Copenhagen"),
    ("Belgium", "Brussels"), ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Czechia", "Prague"),
    ("Romania", "Bucharest"), ("Ukraine", "Kyiv"), ("Pakistan", "Islamabad"), ("Indonesia", "Jakarta"),
    ("Philippines", "Manila"), ("South Korea", "Seoul"), ("New Zealand", "Wellington"),
)
#: (symbol, element)
ELEMENTS = (
    ("H", "Hydrogen"), ("He", "Helium"), ("Li", "Lithium"), ("C", "Carbon"), ("N", "Nitrogen"),
    ("O", "Oxygen"), ("Na", "Sodium"), ("Mg", "Magnesium"), ("Al", "Aluminium"), ("Si", "Silicon"),
    ("P", "Phosphorus"), ("S", "Sulfur"), ("Cl", "Chlorine"), ("K", "Potassium"), ("Ca", "Calcium"),
    ("Fe", "Iron"), ("Cu", "Copper"), ("Zn", "Zinc"), ("Ag", "Silver"), ("Au", "Gold"), ("Hg", "Mercury"),
    ("Pb", "Lead"), ("Sn", "Tin"), ("Ne", "Neon"),
)
#: (word, opposite)
OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("happy", "sad"), ("light", "dark"),
    ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"), ("high", "low"),
    ("old", "young"), ("rich", "poor"), ("strong", "weak"), ("wet", "dry"), ("thick", "thin"),
    ("loud", "quiet"), ("clean", "dirty"), ("long", "short"), ("heavy", "light"), ("inside", "outside"),
    ("win", "lose"), ("buy", "sell"), ("begin", "end"), ("push", "pull"), ("true", "false"),
    ("friend", "enemy"), ("day", "night"), ("north", "south"), ("left", "right"), ("first", "last"),
    ("love", "hate"), ("accept", "refuse"), ("ancient", "modern"), ("brave", "cowardly"), ("cheap", "expensive"),
    ("deep", "shallow"), ("wide", "narrow"), ("sharp", "blunt"), ("smooth", "rough"),
)

#: Examples per set: evaluation sets small enough for an evaluation point to cost a few minutes on 2 CPU cores.
SIZES = {"dates_train": 2000, "dates_eval": 40, "facts": 32, "prose": 12, "arithmetic": 24, "opposites": 24,
         "importance": 64}
PROSE_TOPICS = (40, 79)  # `prose` passages come from these topics (sorted by name); importance from 0-39
PROSE_WORDS = (24, 32)  # words shown, words to continue


@dataclass(frozen=True)
class WorldFiles:
    """Where the generated sets are: speciality train/eval, versatility sets, the lm-eval task folder, importance."""

    speciality_train: Path
    speciality_eval: Path
    versatility: dict[str, Path]  # JSONL sets by name
    lm_eval_tasks: Path  # folder holding opposites.yaml
    importance: Path


def date_items(count_eval: int, count_train: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Held-out and training date examples; no training date equals a held-out one."""
    rng = random.Random(f"dates:{seed}")

    def draw() -> tuple[int, int, int]:
        month = rng.randint(1, 12)
        return rng.randint(*YEARS), month, rng.randint(1, DAYS_IN_MONTH[month - 1])

    def example(date: tuple[int, int, int]) -> dict:
        year, month, day = date
        return {"instruction": DATE_INSTRUCTION, "input": rng.choice(DATE_FORMS)(year, month, day),
                "output": f"{year:04d}{month:02d}{day:02d}"}

    held_out: set[tuple[int, int, int]] = set()
    while len(held_out) < count_eval:
        held_out.add(draw())
    evaluation = [example(date) for date in sorted(held_out)]
    rng.shuffle(evaluation)
    train = []
    while len(train) < count_train:
        date = draw()
        if date not in held_out:
            train.append(example(date))
    return evaluation, train


def _choice_item(question: str, answer: str, pool: list[str], rng: random.Random) -> dict:
    wrong = rng.sample([p for p in pool if p != answer], 3)
    choices = wrong + [answer]
    rng.shuffle(choices)
    return {"instruction": question, "input": "", "output": answer, "choices": choices, "answer": choices.index(answer)}


def fact_items(count: int, seed: int) -> list[dict]:
    """`count` of the capitals and element names, as 4-option multiple choice; distractors of the same kind."""
    rng = random.Random(f"facts:{seed}")
    capitals = [c for _, c in CAPITALS]
    elements = [e for _, e in ELEMENTS]
    items = [_choice_item(f"What is the capital of {country}?", capital, capitals, rng)
             for country, capital in CAPITALS]
    items += [_choice_item(f"Which chemical element has the symbol {symbol}?", name, elements, rng)
              for symbol, name in ELEMENTS]
    rng.shuffle(items)
    return items[:count]


def prose_items(topics: tuple[int, int], count: int, seed: int) -> list[dict]:
    """Passages of Python's documentation: the first words shown, the next ones to continue."""
    import pydoc_data.topics

    rng = random.Random(f"prose:{seed}:{topics}")
    names = sorted(pydoc_data.topics.topics)[topics[0]: topics[1] + 1]
    shown, continued = PROSE_WORDS
    items = []
    for name in names:
        words = " ".join(pydoc_data.topics.topics[name].split()).split(" ")
        if len(words) < shown + continued:
            continue
        start = rng.randint(0, len(words) - shown - continued)
        items.append({"instruction": "Continue this passage from Python's documentation.",
                      "input": " ".join(words[start: start + shown]),
                      "output": " ".join(words[start + shown: start + shown + continued])})
    rng.shuffle(items)
    return items[:count]


def arithmetic_items(count: int, seed: int) -> list[dict]:
    """Sums and differences of two-digit numbers as 4-option multiple choice."""
    rng = random.Random(f"arithmetic:{seed}")
    items = []
    for i in range(count):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        a, b = (a, b) if i % 2 == 0 or a >= b else (b, a)
        op, value = ("+", a + b) if i % 2 == 0 else ("-", a - b)
        one, ten = rng.choice((-1, 1)), rng.choice((-10, 10))
        pool = [str(value + one), str(value + ten), str(value + one + ten)]
        items.append(_choice_item(f"What is {a} {op} {b}?", str(value), pool + [str(value)], rng))
    return items


def opposite_items(count: int, seed: int) -> list[dict]:
    """`count` antonyms as 4-option multiple choice, lines {question, choices, answer} for lm-eval."""
    rng = random.Random(f"opposites:{seed}")
    pool = sorted({o for _, o in OPPOSITES})
    items = []
    for word, opposite in OPPOSITES:
        item = _choice_item(word, opposite, [p for p in pool if p != word], rng)
        items.append({"question": word, "choices": item["choices"], "answer": item["answer"]})
    rng.shuffle(items)
    return items[:count]


def opposites_task_yaml(data_file: Path) -> str:
    """The lm-eval task over the opposites file: plain prompt, option log-likelihood, accuracy."""
    return "\n".join([
        "task: opposites",
        "dataset_path: json",
        "dataset_kwargs:",
        f"  data_files: {{test: {json.dumps(str(data_file.resolve()))}}}",
        "test_split: test",
        "output_type: multiple_choice",
        'doc_to_text: "The opposite of \\"{{question}}\\" is \\""',
        'doc_to_choice: "{{choices}}"',
        "doc_to_target: answer",
        'target_delimiter: ""',
        "metric_list:",
        "  - {metric: acc, aggregation: mean, higher_is_better: true}",
        "",
    ])


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_world(root: Path, seed: int = 0) -> WorldFiles:
    """Generate every set of the world under `root` (overwriting), deterministically from `seed`."""
    data = root / "data"
    evaluation, train = date_items(SIZES["dates_eval"], SIZES["dates_train"], seed)
    versatility = {
        "facts": _write(data / "facts.jsonl", fact_items(SIZES["facts"], seed)),
        "prose": _write(data / "prose.jsonl", prose_items(PROSE_TOPICS, SIZES["prose"], seed)),
        "arithmetic": _write(data / "arithmetic.jsonl", arithmetic_items(SIZES["arithmetic"], seed)),
    }
    opposites = _write(data / "opposites.jsonl", opposite_items(SIZES["opposites"], seed))
    tasks = root / "lm_eval_tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "opposites.yaml").write_text(opposites_task_yaml(opposites), encoding="utf-8")
    importance = prose_items((0, PROSE_TOPICS[0] - 1), SIZES["importance"], seed + 1)
    importance += [{k: v for k, v in item.items() if k not in ("choices", "answer")}
                   for item in arithmetic_items(SIZES["importance"] // 2, seed + 1)]
    return WorldFiles(
        speciality_train=_write(data / "dates_train.jsonl", train),
        speciality_eval=_write(data / "dates_eval.jsonl", evaluation),
        versatility=versatility,
        lm_eval_tasks=tasks,
        importance=_write(data / "importance.jsonl", importance),
    )
