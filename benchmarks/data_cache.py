"""Training data per worker: tokenised once per search (the Arrow cache) vs once per trial (in memory).

    python benchmarks/data_cache.py [--examples 100000] [--trials 10] [--workers 2]

Generates `--examples` instruction records (JSONL) and trains a byte-level BPE tokenizer on them with
`tokenizers` (no download), then measures, each in a fresh process so that peak memory is its own:
- build: the search's tokenisation into the cache (`training/tokenized.py`, what preflight does once);
- per search: a worker's start with the cache built (key check, open memory-mapped with pyarrow) and one
  pass over its shard (rank 0 of `--workers`, DistributedSampler, DataLoader, collate);
- per trial: a worker that reads and tokenises the whole file itself into lists (the former behaviour;
  batched tokenisation, so if anything faster than the former one-example-at-a-time) and the same pass.
Peak memory is the process's peak resident set above its resident set before the data was touched
(with torch, transformers and the tokenizer loaded, as in every worker); what a variant imports for its
data (pyarrow, datasets) counts in its time and memory.
Prints the table and the ratios for a search of `--trials` trials of `--workers` workers.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = "alpaca"
MAX_SEQ_LENGTH = 256
TASKS = ["Reverse the words of", "Sort the words of", "Count the words in", "Repeat twice", "Upper-case",
         "Name the first word of", "Name the last word of", "Join with dashes"]


def generate(path: Path, count: int, seed: int = 0) -> None:
    """`count` instruction records over pseudo-words (10 to 40 words of input each)."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "men", "sa", "lo", "vi", "dra", "pe", "nu", "shi", "gor", "tel", "ba", "qu", "ix"]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(5000)]
    with path.open("w") as handle:
        for _ in range(count):
            words = [rng.choice(lexicon) for _ in range(rng.randint(10, 40))]
            task = rng.randrange(len(TASKS))
            output = {0: " ".join(reversed(words)), 1: " ".join(sorted(words)), 2: str(len(words)),
                      3: " ".join(words * 2), 4: " ".join(words).upper(), 5: words[0], 6: words[-1],
                      7: "-".join(words)}[task]
            handle.write(json.dumps({"instruction": TASKS[task], "input": " ".join(words), "output": output}) + "\n")


def train_tokenizer(data: Path, directory: Path, vocab_size: int = 8192) -> None:
    """A byte-level BPE tokenizer trained on the generated data, saved in Hugging Face format."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def texts():
        with data.open() as handle:
            for line in handle:
                record = json.loads(line)
                yield record["instruction"] + " " + record["input"] + " " + record["output"]

    tokenizer.train_from_iterator(texts(), trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(directory)


def _config(data: Path, tokenizer: Path, storage: Path):
    from cofitune_ray.config import config_from_dict

    return config_from_dict({
        "model": {"path": str(tokenizer)},
        "data": {"speciality_train": str(data), "speciality_eval": {"name": "s", "path": str(data)},
                 "versatility": [{"name": "v", "path": str(data)}], "prompt_template": TEMPLATE,
                 "max_seq_length": MAX_SEQ_LENGTH},
        "storage_path": str(storage),
    })


def _resident_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def measure(variant: str, data: Path, tokenizer_dir: Path, storage: Path, workers: int) -> dict:
    """One variant in this process: seconds until the data is ready, seconds for one pass, peak memory."""
    import torch
    from torch.utils.data import DataLoader, DistributedSampler

    from cofitune_ray.training.data import collate, read_examples, tokenize_for_training
    from cofitune_ray.training.model import load_tokenizer
    from cofitune_ray.training.tokenized import training_set

    torch.set_num_threads(1)
    config = _config(data, tokenizer_dir, storage)
    tokenizer = load_tokenizer(str(tokenizer_dir))
    before = _resident_mb()
    started = time.perf_counter()
    if variant == "build":
        entry = training_set(config, tokenizer)
        assert entry.built
        return {"ready_s": time.perf_counter() - started, "pass_s": 0.0, "peak_mb": _peak_mb() - before,
                "rows": entry.rows}
    if variant == "per search":
        entry = training_set(config, tokenizer)
        assert not entry.built
        rows = entry.load()
        assert "datasets" not in sys.modules  # a worker reads the cache with pyarrow alone
    else:
        rows = tokenize_for_training(read_examples(data), tokenizer, TEMPLATE, MAX_SEQ_LENGTH).dataset
    ready = time.perf_counter() - started
    sampler = DistributedSampler(rows, num_replicas=workers, rank=0, shuffle=True, seed=0)
    loader = DataLoader(rows, batch_size=8, sampler=sampler, collate_fn=lambda b: collate(b, tokenizer.pad_token_id))
    started = time.perf_counter()
    tokens = sum(int(batch["attention_mask"].sum()) for batch in loader)
    return {"ready_s": ready, "pass_s": time.perf_counter() - started, "peak_mb": _peak_mb() - before,
            "rows": len(rows), "shard_tokens": tokens}


def run_variant(variant: str, data: Path, tokenizer_dir: Path, storage: Path, workers: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", variant, "--data", str(data), "--tokenizer",
                          str(tokenizer_dir), "--storage", str(storage), "--workers", str(workers)],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{variant}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--storage", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, Path(args.data), Path(args.tokenizer), Path(args.storage),
                                 args.workers)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data, tokenizer_dir, storage = root / "train.jsonl", root / "tokenizer", root / "storage"
        started = time.perf_counter()
        generate(data, args.examples)
        train_tokenizer(data, tokenizer_dir)
        print(f"{args.examples:,} generated examples ({data.stat().st_size / 2**20:.1f} MB JSONL); byte-level BPE "
              f"tokenizer trained on them (vocab 8192) in {time.perf_counter() - started:.1f} s; template {TEMPLATE}, "
              f"max_seq_length {MAX_SEQ_LENGTH}; {args.workers} workers, worker = rank 0")
        results = {v: run_variant(v, data, tokenizer_dir, storage, args.workers)
                   for v in ("build", "per search", "per trial")}
    build, cached, own = results["build"], results["per search"], results["per trial"]
    assert cached["shard_tokens"] == own["shard_tokens"], "the cache and in-memory tokens differ"
    print(f"{'':34}{'ready s':>9}{'pass s':>9}{'peak MB':>9}")
    print(f"{'build the cache (once per search)':34}{build['ready_s']:9.2f}{'':>9}{build['peak_mb']:9.0f}")
    for name, r in (("worker, tokenised once per search", cached), ("worker, tokenising per trial", own)):
        print(f"{name:34}{r['ready_s']:9.2f}{r['pass_s']:9.2f}{r['peak_mb']:9.0f}")
    print(f"rows {cached['rows']:,}; tokens in rank 0's shard {cached['shard_tokens']:,} (equal in both)")
    t, w = args.trials, args.workers
    per_search = build["ready_s"] + t * w * cached["ready_s"]
    per_trial = t * w * own["ready_s"]
    print(f"worker start: per trial / per search = {own['ready_s'] / cached['ready_s']:.1f}x; "
          f"worker peak memory: per trial / per search = {own['peak_mb'] / max(cached['peak_mb'], 1):.1f}x")
    print(f"a search of {t} trials x {w} workers spends {per_trial:.0f} s on data per trial vs {per_search:.0f} s "
          f"once per search ({per_trial / per_search:.1f}x)")


if __name__ == "__main__":
    main()
