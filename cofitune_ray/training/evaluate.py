"""Scoring a model: exact match of greedy generation, response log-likelihood, multiple choice.

Cost. The sets read from paths are scored together (`score_sets`): one log-likelihood pass over every
example's gold response and every option of the multiple-choice sets. Rows that share a prompt (a
multiple-choice example's options, its gold among them) are scored together: the prompt runs once, with the
KV cache, and each distinct response runs after it, so the logits cover only positions that predict a
response token (`_score_group_batch`; with a chat template's system turn and a 49k-token vocabulary, the
evaluation of configs/smollm2.yaml's base model took 2.1x less CPU time than one forward per row). Batches
hold at most `eval.batch_size` responses. Exact match costs nothing more for most examples: that pass also
gives the most likely token at each gold position, and greedy decoding emits exactly those while it follows
the gold response. So an example is settled there when greedy decoding would answer it exactly, stop early,
or reach `max_new_tokens` (`greedy_from_gold`); only the examples whose greedy answer leaves the gold
response before its end are generated (batched, with the KV cache). The scores are those of generating
every example (`tests/test_evaluate.py`), unless the model's generation config changes greedy decoding (a
repetition penalty, suppressed tokens, ...): then every example is generated.

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
from cofitune_ray.training.data import DataError, Example, encode_example, read_examples
from cofitune_ray.training.harness import HarnessTask
from cofitune_ray.training.prompt import CHAT
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
             columns: ColumnsConfig | None = None, chat: bool = False) -> "EvalSet":
        """The first `limit` examples of a data file or directory (`training/data.py`), scored by `metric`."""
        examples = read_examples(path, columns, chat)[:limit]
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


def _lockstep(batches: list[list], filler, device: torch.device):
    """(batch, real) pairs: this worker's `batches`, then `[filler]` batches (real=False, to discard)
    until it has run as many batches as the busiest worker."""
    (count,) = _all_reduce([len(batches)], device, op=dist.ReduceOp.MAX)
    for index in range(int(count)):
        yield (batches[index], True) if index < len(batches) else ([filler], False)


def _lockstep_batches(items: list, batch_size: int, filler, device: torch.device):
    """`_lockstep` over `items` in batches of `batch_size`."""
    yield from _lockstep([items[i : i + batch_size] for i in range(0, len(items), batch_size)], filler, device)


def _by_length(lengths: list[int]) -> list[int]:
    """Indices in order of length, so that a batch pads its rows to about the same width."""
    return sorted(range(len(lengths)), key=lengths.__getitem__)


def _given_prompt(row: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """The row, or for a row without a prompt: its first response token as the prompt (given, not scored)."""
    prompt, response = row
    return (prompt, response) if prompt else (response[:1], response[1:])


def _prompt_groups(encoded: list[tuple[list[int], list[int]]]) -> tuple[list[list[int]], list[list[list[int]]]]:
    """The distinct prompts and, per prompt, its distinct responses (every option of a multiple-choice example
    shares one prompt, and its gold response is one of them). A row without a prompt takes its first response
    token as the prompt: that token is given, not scored, as in a plain forward of the whole row."""
    prompts: dict[tuple[int, ...], list[list[int]]] = {}
    for prompt, response in map(_given_prompt, encoded):
        responses = prompts.setdefault(tuple(prompt), [])
        if response not in responses:
            responses.append(response)
    return [list(p) for p in prompts], list(prompts.values())


def _group_batches(prompts: list[list[int]], responses: list[list[list[int]]], batch_size: int) -> list[list[int]]:
    """Prompt indices in batches of at most `batch_size` responses (a prompt with more is a batch of its own),
    ordered by their longest response, then prompt length, so that a batch pads to about the same widths."""
    order = sorted(range(len(prompts)), key=lambda g: (max(map(len, responses[g])), len(prompts[g])))
    batches: list[list[int]] = []
    rows = 0
    for g in order:
        if not batches or rows + len(responses[g]) > batch_size:
            batches.append([])
            rows = 0
        batches[-1].append(g)
        rows += len(responses[g])
    return batches


@torch.no_grad()
def _score_group_batch(model, pad_id: int, prompts: list[list[int]], responses: list[list[list[int]]], device):
    """Per response of each prompt: (summed log-likelihood, token count, the likeliest token at each position).

    Two forwards, whatever the batch: the prompts (left-padded, so that each ends at the last column) with the
    KV cache, keeping only the last position's logits; then every response after its prompt's cached keys and
    values, right-padded. A prompt is run once however many responses share it, and the logits cover only the
    positions that predict a response token."""
    width = max(map(len, prompts))
    prompt_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros_like(prompt_ids)
    for i, ids in enumerate(prompts):
        prompt_ids[i, width - len(ids) :] = torch.tensor(ids)
        prompt_mask[i, width - len(ids) :] = 1
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask,
                position_ids=(prompt_mask.cumsum(-1) - 1).clamp_min(0), use_cache=True, logits_to_keep=1)
    first = F.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each response's first token
    owner = [g for g, group in enumerate(responses) for _ in group]
    rows = [r for group in responses for r in group]
    span = max(1, max(map(len, rows)))
    response_ids = torch.full((len(rows), span), pad_id, dtype=torch.long)
    response_mask = torch.zeros_like(response_ids)
    for i, ids in enumerate(rows):
        response_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        response_mask[i, : len(ids)] = 1
    owner_index = torch.tensor(owner, device=device)
    cache = out.cache
    cache.batch_select_indices(owner_index)
    lengths = prompt_mask.sum(-1)[owner_index]
    logits = model(input_ids=response_ids.to(device),
                   attention_mask=torch.cat([prompt_mask[owner_index], response_mask.to(device)], dim=-1),
                   position_ids=lengths[:, None] + torch.arange(span, device=device), cache=cache,
                   use_cache=False).logits.float()
    # position j of a response is predicted by the prompt's last position (j = 0) or the response's j - 1
    logprobs = torch.cat([first[owner_index][:, None], F.log_softmax(logits[:, :-1], dim=-1)], dim=1)
    targets = response_ids.to(device)
    picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    likeliest = logprobs.argmax(dim=-1)
    results = []
    for i, ids in enumerate(rows):
        n = len(ids)
        results.append((picked[i, :n].sum().item(), n, likeliest[i, :n].tolist()))
    return results


@torch.no_grad()
def _response_logliks(model, tokenizer, encoded: list[tuple[list[int], list[int]]], batch_size, device, filler):
    """Per (prompt ids, response ids) row: summed log-likelihood of the response, its token count, and the
    model's most likely token at each response position (closing EOS included) given the tokens before it.
    Rows are scored per distinct prompt (`_prompt_groups`, `_score_group_batch`)."""
    prompts, responses = _prompt_groups(encoded)
    scored: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple] = {}
    filler_prompts, filler_responses = _prompt_groups([filler])
    for chunk, real in _lockstep(_group_batches(prompts, responses, batch_size), None, device):
        if not real:
            _score_group_batch(model, tokenizer.pad_token_id, filler_prompts, filler_responses, device)
            continue
        results = iter(_score_group_batch(model, tokenizer.pad_token_id, [prompts[g] for g in chunk],
                                          [responses[g] for g in chunk], device))
        for g in chunk:
            for response in responses[g]:
                scored[tuple(prompts[g]), tuple(response)] = next(results)
    return [scored[tuple(prompt), tuple(response)] for prompt, response in map(_given_prompt, encoded)]


#: Generation settings that make greedy decoding differ from the plain most likely token (`GenerationConfig`).
_LOGIT_CHANGES = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None,
                  "suppress_tokens": None, "begin_suppress_tokens": None, "min_length": 0, "min_new_tokens": None,
                  "forced_bos_token_id": None, "forced_eos_token_id": None, "sequence_bias": None}


def _plain_greedy(model) -> bool:
    """Whether the model's generation config leaves greedy decoding as the most likely token at each step."""
    settings = getattr(model, "generation_config", None)
    return settings is None or all(getattr(settings, key, default) in (default, None)
                                   for key, default in _LOGIT_CHANGES.items())


def greedy_from_gold(gold_ids: list[int], likeliest: list[int], max_new_tokens: int, eos_id: int) -> list[int] | None:
    """The tokens greedy decoding emits (EOS left out), when the gold response settles them; None when it does not.

    `gold_ids`: the gold response's tokens and EOS; `likeliest`: the most likely token at each of those positions
    given the gold tokens before it. While greedy decoding has emitted the gold tokens, its next token is the
    likeliest one there. So the output is settled when greedy emits the whole gold response and EOS, emits EOS
    early, or reaches `max_new_tokens` before leaving the gold response or as it leaves it; after leaving it
    earlier, the rest is unknown.
    """
    emitted: list[int] = []
    for want, got in zip(gold_ids, likeliest):
        if len(emitted) == max_new_tokens or got == eos_id:
            return emitted
        emitted.append(got)
        if got != want:
            return emitted if len(emitted) == max_new_tokens else None
    return emitted


@torch.no_grad()
def _greedy_outputs(model, tokenizer, prompts: list[list[int]], batch_size, max_new_tokens, device,
                    filler: list[int]) -> list[str]:
    """Greedy completions of the prompts (token ids), batched with left padding."""
    outputs = [None] * len(prompts)
    for chunk, real in _lockstep_batches(_by_length(list(map(len, prompts))), batch_size, None, device):
        rows = [prompts[i] for i in chunk] if real else [filler]
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for i, ids in enumerate(rows):
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
        for i, row in zip(chunk, generated[:, width:].tolist()):
            if tokenizer.eos_token_id in row:
                row = row[: row.index(tokenizer.eos_token_id)]
            outputs[i] = tokenizer.decode(row, skip_special_tokens=True)
    return outputs


def score_set(model, tokenizer, template: str, eval_set: EvalSet, batch_size: int, max_new_tokens: int,
              rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """This set's score, plus exact match / accuracy and log-likelihood, summed over workers."""
    return score_sets(model, tokenizer, template, [eval_set], batch_size, max_new_tokens, rank, world_size)[0]


def score_sets(model, tokenizer, template: str, eval_sets: list[EvalSet], batch_size: int, max_new_tokens: int,
               rank: int = 0, world_size: int = 1) -> list[dict[str, float]]:
    """Each set's `score_set`, with the examples of every set batched together, shortest first."""
    model = unwrapped(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    mine = [eval_set.examples[rank::world_size] for eval_set in eval_sets]
    encoders = [eval_set.tokens.encode if eval_set.tokens else partial(encode_example, tokenizer, template)
                for eval_set in eval_sets]
    first = eval_sets[0].examples[0]
    filler = encoders[0](first, first.output)
    # one log-likelihood pass: every example's gold response, then every option of the multiple-choice sets
    golds = [encode(e, e.output) for encode, examples in zip(encoders, mine) for e in examples]
    options = [encode(e, c) for eval_set, encode, examples in zip(eval_sets, encoders, mine)
               if eval_set.metric == "choice" for e in examples for c in e.choices]
    scored = _response_logliks(model, tokenizer, golds + options, batch_size, device, filler)
    option_scores = iter(scored[len(golds):])
    gold = iter(zip(golds, scored[: len(golds)]))
    gold_per_set = [[next(gold) for _ in examples] for examples in mine]
    exact = [(e, encoded, result) for eval_set, examples, golds_of_set in zip(eval_sets, mine, gold_per_set)
             if eval_set.metric == "exact_match" for e, (encoded, result) in zip(examples, golds_of_set)]
    matches = iter(_exact_matches(model, tokenizer, exact, batch_size, max_new_tokens, device, filler[0]))
    totals = []
    for eval_set, examples, golds_of_set in zip(eval_sets, mine, gold_per_set):
        correct = 0.0
        if eval_set.metric == "choice":
            for e in examples:
                option_values = [next(option_scores)[0] for _ in e.choices]
                correct += float(max(range(len(option_values)), key=option_values.__getitem__) == e.answer)
        elif eval_set.metric == "exact_match":
            correct = float(sum(next(matches) for _ in examples))
        results = [result for _, result in golds_of_set]
        totals += [correct, len(examples), sum(r[0] for r in results), sum(r[1] for r in results)]
    totals = _all_reduce(totals, device)
    model.train(was_training)
    results = []
    for k, eval_set in enumerate(eval_sets):
        correct, count, loglik_sum, tokens = totals[4 * k : 4 * k + 4]
        token_prob = math.exp(loglik_sum / tokens) if tokens else 0.0
        result = {"loglik": loglik_sum / tokens if tokens else float("-inf"), "token_prob": token_prob}
        if eval_set.metric == "loglik":
            result["score"] = token_prob
        else:
            result[eval_set.metric] = correct / count
            result["score"] = correct / count
        results.append(result)
    return results


def _exact_matches(model, tokenizer, rows: list[tuple], batch_size: int, max_new_tokens: int, device,
                   filler: list[int]) -> list[bool]:
    """Whether greedy decoding answers each example exactly (after stripping spaces). `rows`: (example, its
    (prompt ids, gold response ids), its `_response_logliks` result); the gold forward settles most outputs
    (`greedy_from_gold`), generation the others."""
    settled = [None] * len(rows)
    if _plain_greedy(model):
        for i, (_, (_, gold_ids), (_, _, likeliest)) in enumerate(rows):
            tokens = greedy_from_gold(gold_ids, likeliest, max_new_tokens, tokenizer.eos_token_id)
            if tokens is not None:
                settled[i] = tokenizer.decode(tokens, skip_special_tokens=True)
    open_rows = [i for i, output in enumerate(settled) if output is None]
    # every worker joins the generation, even with nothing open: a sharded model's forwards are collectives
    generated = _greedy_outputs(model, tokenizer, [rows[i][1][0] for i in open_rows], batch_size, max_new_tokens,
                                device, filler)
    for i, output in zip(open_rows, generated):
        settled[i] = output
    return [output.strip() == e.output.strip() for output, (e, _, _) in zip(settled, rows)]


def versatility_set(config, index: int) -> EvalSet | HarnessTask:
    """The config's `data.versatility[index]`: a set given by path (read now) or an lm-eval task (loaded when first
    scored)."""
    entry, limit = config.data.versatility[index], config.data.max_eval_examples
    if entry.lm_eval is None:
        return EvalSet.load(entry.name, entry.path, entry.metric, limit, config.data.columns,
                            config.data.prompt_template == CHAT)
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
                                  config.data.columns, config.data.prompt_template == CHAT)
        versatility = [versatility_set(config, i) for i in range(len(config.data.versatility))]
        tokenize_eval_sets(config, tokenizer, speciality, versatility)
        return cls(speciality, versatility, tokenizer, config.data.prompt_template, config.eval.batch_size,
                   config.eval.max_new_tokens, config.eval.spec_weight, config.eval.vers_weight)

    def evaluate(self, model, rank: int = 0, world_size: int = 1, base: dict | None = None) -> dict[str, float]:
        """Flat metrics: spec, vers, uni, their ratio to `base` (when given), and each set's scores."""
        read = [self.speciality] + [s for s in self.versatility if not isinstance(s, HarnessTask)]
        scored = iter(score_sets(model, self.tokenizer, self.template, read, self.batch_size, self.max_new_tokens,
                                 rank, world_size))
        metrics: dict[str, float] = {}
        spec_scores = next(scored)
        metrics.update({f"spec/{k}": v for k, v in spec_scores.items()})
        vers_values = []
        for eval_set in self.versatility:
            if isinstance(eval_set, HarnessTask):
                scores = eval_set.score(unwrapped(model), self.batch_size, rank, world_size)
            else:
                scores = next(scored)
            metrics.update({f"vers/{eval_set.name}/{k}": v for k, v in scores.items()})
            vers_values.append(scores["score"])
        spec, vers = spec_scores["score"], sum(vers_values) / len(vers_values)
        metrics.update(spec=spec, vers=vers, uni=uni_score(spec, vers, self.spec_weight, self.vers_weight))
        if base:
            metrics["spec_rel"] = spec / base["spec"] if base["spec"] > 0 else None
            metrics["vers_rel"] = vers / base["vers"] if base["vers"] > 0 else None
        return metrics
