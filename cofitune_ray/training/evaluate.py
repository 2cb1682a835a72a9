"""Scoring a model: exact match of greedy generation, response log-likelihood, multiple choice.

Each worker scores its share of every set (example i goes to rank i % world_size); counts are
summed across workers, so the result does not depend on the number of workers. Every worker runs
as many batches as the busiest one (padding batches are discarded), and generation runs in step
across workers: a sharded (FSDP) model's every forward is a collective all workers must join.

Every score is in [0, 1]: exact match and choice accuracy as they are, log-likelihood as the
per-token probability exp(mean response log-likelihood). Spec is the speciality set's score,
Vers the mean over versatility sets, Uni their weighted mean. A versatility set may instead be an
lm-evaluation-harness task (`training/harness.py`), scored by rank 0 and broadcast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
import torch.nn.functional as F

from cofitune_ray.config import ColumnsConfig
from cofitune_ray.training.data import IGNORE_INDEX, DataError, Example, collate, encode_example, read_examples
from cofitune_ray.training.harness import HarnessTask
from cofitune_ray.training.sharding import unwrapped
from cofitune_ray.training.tokenized import EvalTokens, eval_tokens


@dataclass
class EvalSet:
    """Examples plus the metric that scores them, and their token ids once tokenised for the search."""

    name: str
    examples: list[Example]
    metric: str  # exact_match | loglik | choice
    tokens: EvalTokens | None = None  # None: tokenised when scored (`encode_example`)

    @classmethod
    def load(cls, name: str, path: str, metric: str = "auto", limit: int | None = None,
             columns: ColumnsConfig | None = None) -> "EvalSet":
        """The first `limit` examples of a data file or directory (`training/data.py`), scored by `metric`."""
        examples = read_examples(path, columns)[:limit]
        has_choices = [e.choices is not None for e in examples]
        if metric == "auto":
            metric = "choice" if all(has_choices) else "exact_match"
        if metric == "choice" and not all(has_choices):
            where = examples[has_choices.index(False)].where
            raise DataError(f"{where}: metric 'choice' needs 'choices' and 'answer' in every record")
        return cls(name, examples, metric)


def uni_score(spec: float, vers: float, spec_weight: float = 0.5, vers_weight: float = 0.5) -> float:
    """The weighted mean of Spec and Vers (both already in [0, 1])."""
    return (spec_weight * spec + vers_weight * vers) / (spec_weight + vers_weight)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(values: list[float], device: torch.device, op=dist.ReduceOp.SUM) -> list[float]:
    if not _distributed():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def _lockstep_batches(items: list, batch_size: int, filler, device: torch.device):
    """(batch, real) pairs: `items` in batches, then `[filler]` batches (real=False, to discard)
    until this worker has run as many batches as the busiest worker."""
    count = math.ceil(len(items) / batch_size)
    (count,) = _all_reduce([count], device, op=dist.ReduceOp.MAX)
    for start in range(0, int(count) * batch_size, batch_size):
        batch = items[start : start + batch_size]
        yield (batch, True) if batch else ([filler], False)


@torch.no_grad()
def _response_logliks(model, tokenizer, encode, pairs: list[tuple[Example, str]], batch_size, device, filler):
    """Summed log-likelihood and token count of each (example, response) pair (`encode(example, response)`: their
    prompt and response ids)."""
    results = []
    for chunk, real in _lockstep_batches(pairs, batch_size, filler, device):
        rows = []
        for example, response in chunk:
            prompt_ids, response_ids = encode(example, response)
            rows.append({"input_ids": prompt_ids + response_ids,
                         "labels": [IGNORE_INDEX] * len(prompt_ids) + response_ids})
        batch = {k: v.to(device) for k, v in collate(rows, tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        labels = batch["labels"][:, 1:]
        logprobs = F.log_softmax(logits[:, :-1], dim=-1)
        picked = logprobs.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        valid = labels != IGNORE_INDEX
        if real:
            results += list(zip((picked * valid).sum(dim=1).tolist(), valid.sum(dim=1).tolist()))
    return results


@torch.no_grad()
def _greedy_outputs(model, tokenizer, encode, examples: list[Example], batch_size, max_new_tokens, device,
                    filler: Example) -> list[str]:
    """Greedy completions of the examples' prompts (`encode(example)[0]`), batched with left padding."""
    outputs = []
    for chunk, real in _lockstep_batches(examples, batch_size, filler, device):
        prompts = [encode(e)[0] for e in chunk]
        width = max(map(len, prompts))
        input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, ids in enumerate(prompts):
            input_ids[i, width - len(ids) :] = torch.tensor(ids)
            attention[i, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            synced_gpus=_distributed(),  # finished workers keep joining the forwards of the others
        )
        if not real:
            continue
        for row in generated[:, width:].tolist():
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            outputs.append(tokenizer.decode(row, skip_special_tokens=True))
    return outputs


def score_set(model, tokenizer, template: str, eval_set: EvalSet, batch_size: int, max_new_tokens: int,
              rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """This set's score, plus exact match / accuracy and log-likelihood, summed over workers."""
    model = unwrapped(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mine = eval_set.examples[rank::world_size]
    filler = eval_set.examples[0]
    gold_filler = (filler, filler.output)
    correct = 0.0
    encode = eval_set.tokens.encode if eval_set.tokens else partial(encode_example, tokenizer, template)
    if eval_set.metric == "choice":
        pairs = [(e, c) for e in mine for c in e.choices]
        scores = iter(_response_logliks(model, tokenizer, encode, pairs, batch_size, device, gold_filler))
        for e in mine:
            option_scores = [next(scores)[0] for _ in e.choices]
            correct += float(max(range(len(option_scores)), key=option_scores.__getitem__) == e.answer)
    elif eval_set.metric == "exact_match":
        generated = _greedy_outputs(model, tokenizer, encode, mine, batch_size, max_new_tokens, device, filler)
        correct = float(sum(g.strip() == e.output.strip() for g, e in zip(generated, mine)))
    gold = _response_logliks(model, tokenizer, encode, [(e, e.output) for e in mine], batch_size, device, gold_filler)
    loglik_sum = sum(s for s, _ in gold)
    tokens = sum(n for _, n in gold)
    correct, count, loglik_sum, tokens = _all_reduce([correct, len(mine), loglik_sum, tokens], device)
    model.train(was_training)
    token_prob = math.exp(loglik_sum / tokens) if tokens else 0.0
    result = {"loglik": loglik_sum / tokens if tokens else float("-inf"), "token_prob": token_prob}
    if eval_set.metric == "loglik":
        result["score"] = token_prob
    else:
        result[eval_set.metric] = correct / count
        result["score"] = correct / count
    return result


def versatility_set(config, index: int) -> EvalSet | HarnessTask:
    """The config's `data.versatility[index]`: a set given by path (read now) or an lm-eval task (loaded when first
    scored)."""
    entry, limit = config.data.versatility[index], config.data.max_eval_examples
    if entry.lm_eval is None:
        return EvalSet.load(entry.name, entry.path, entry.metric, limit, config.data.columns)
    return HarnessTask.from_config(entry.name, entry.lm_eval, config.model.tokenizer or config.model.path, limit,
                                   key=f"data.versatility[{index}].lm_eval")


def tokenize_eval_sets(config, tokenizer, speciality: EvalSet,
                       versatility: list[EvalSet | HarnessTask]) -> tuple[int, int]:
    """Give each set read from a path its tokens, from the search's cache (`training/tokenized.py`, built on a
    miss); (sets tokenised now, sets given by path)."""
    paths = [config.data.speciality_eval.path, *(entry.path for entry in config.data.versatility)]
    sets = [(s, path) for s, path in zip([speciality, *versatility], paths) if isinstance(s, EvalSet)]
    for eval_set, path in sets:
        eval_set.tokens = eval_tokens(config, tokenizer, path, eval_set.examples)
    return sum(s.tokens.built for s, _ in sets), len(sets)


class Evaluator:
    """Scores a model on the speciality set and every versatility set: Spec, Vers, Uni."""

    def __init__(self, speciality: EvalSet, versatility: list[EvalSet | HarnessTask], tokenizer, template: str,
                 batch_size: int, max_new_tokens: int, spec_weight: float = 0.5, vers_weight: float = 0.5):
        self.speciality, self.versatility = speciality, versatility
        self.tokenizer, self.template = tokenizer, template
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.spec_weight, self.vers_weight = spec_weight, vers_weight

    @classmethod
    def from_config(cls, config, tokenizer) -> "Evaluator":
        limit = config.data.max_eval_examples
        spec_cfg = config.data.speciality_eval
        speciality = EvalSet.load(spec_cfg.name or "speciality", spec_cfg.path, spec_cfg.metric, limit,
                                  config.data.columns)
        versatility = [versatility_set(config, i) for i in range(len(config.data.versatility))]
        tokenize_eval_sets(config, tokenizer, speciality, versatility)
        return cls(speciality, versatility, tokenizer, config.data.prompt_template, config.eval.batch_size,
                   config.eval.max_new_tokens, config.eval.spec_weight, config.eval.vers_weight)

    def evaluate(self, model, rank: int = 0, world_size: int = 1, base: dict | None = None) -> dict[str, float]:
        """Flat metrics: spec, vers, uni, their ratio to `base` (when given), and each set's scores."""
        args = (self.tokenizer, self.template)
        kwargs = dict(batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, rank=rank, world_size=world_size)
        metrics: dict[str, float] = {}
        spec_scores = score_set(model, *args, self.speciality, **kwargs)
        metrics.update({f"spec/{k}": v for k, v in spec_scores.items()})
        vers_values = []
        for eval_set in self.versatility:
            if isinstance(eval_set, HarnessTask):
                scores = eval_set.score(unwrapped(model), self.batch_size, rank, world_size)
            else:
                scores = score_set(model, *args, eval_set, **kwargs)
            metrics.update({f"vers/{eval_set.name}/{k}": v for k, v in scores.items()})
            vers_values.append(scores["score"])
        spec, vers = spec_scores["score"], sum(vers_values) / len(vers_values)
        metrics.update(spec=spec, vers=vers, uni=uni_score(spec, vers, self.spec_weight, self.vers_weight))
        if base:
            metrics["spec_rel"] = spec / base["spec"] if base["spec"] > 0 else None
            metrics["vers_rel"] = vers / base["vers"] if base["vers"] > 0 else None
        return metrics
