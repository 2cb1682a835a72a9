"""Evaluation on a tiny model taught two answers: exact match, multiple choice, log-likelihood, Uni."""

import pytest
import torch

from cofitune_ray.training import evaluate
from cofitune_ray.training.data import Example, collate, encode_example, tokenize_for_training
from cofitune_ray.training.evaluate import EvalSet, Evaluator, greedy_from_gold, score_set, score_sets, uni_score
from cofitune_ray.training.model import load_model, load_tokenizer
from tiny import make_model, make_tokenizer

TAUGHT = [Example("rev", "abc", "cba"), Example("rev", "xyz", "zyx")]


@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """A tiny model trained until it answers the two TAUGHT examples."""
    directory = tmp_path_factory.mktemp("model")
    make_model(directory, layers=2, hidden=64, intermediate=96)
    make_tokenizer(directory)
    model, tokenizer = load_model(str(directory)), load_tokenizer(str(directory))
    rows = tokenize_for_training(TAUGHT, tokenizer, "compact", 32).dataset
    batch = collate(list(rows), tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    torch.manual_seed(0)
    for _ in range(150):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, tokenizer


def test_exact_match_of_greedy_generation(taught):
    model, tokenizer = taught
    wrong = Example("rev", "abc", "abc")
    scores = score_set(model, tokenizer, "compact", EvalSet("s", TAUGHT + [wrong], "exact_match"), 2, 8)
    assert scores["exact_match"] == pytest.approx(2 / 3) and scores["score"] == scores["exact_match"]
    assert scores["loglik"] < 0


def test_sharded_scores_add_up_to_the_whole(taught):
    model, tokenizer = taught
    eval_set = EvalSet("s", TAUGHT + [Example("rev", "abc", "abc")], "exact_match")
    parts = [score_set(model, tokenizer, "compact", eval_set, 2, 8, rank=r, world_size=2) for r in range(2)]
    # without a process group each rank sees only its share: 2 of 3 and 1 of 3 examples
    assert parts[0]["exact_match"] == pytest.approx(1 / 2) and parts[1]["exact_match"] == pytest.approx(1.0)


def test_multiple_choice_by_option_loglik(taught):
    model, tokenizer = taught
    items = [Example("rev", "abc", "cba", choices=("abc", "cba", "bca"), answer=1),
             Example("rev", "xyz", "zyx", choices=("zyx", "xyz"), answer=1)]  # wrong gold on purpose
    scores = score_set(model, tokenizer, "compact", EvalSet("mc", items, "choice"), 4, 8)
    assert scores["choice"] == pytest.approx(0.5)


def test_loglik_metric_is_a_token_probability(taught):
    model, tokenizer = taught
    scores = score_set(model, tokenizer, "compact", EvalSet("l", TAUGHT, "loglik"), 2, 8)
    assert 0.5 < scores["score"] <= 1.0
    assert scores["score"] == pytest.approx(torch.tensor(scores["loglik"]).exp().item())


def test_evaluator_spec_vers_uni_and_relative(taught):
    model, tokenizer = taught
    evaluator = Evaluator(EvalSet("spec", TAUGHT, "exact_match"),
                          [EvalSet("a", TAUGHT, "exact_match"),
                           EvalSet("b", [Example("rev", "abc", "x")], "exact_match")],
                          tokenizer, "compact", 4, 8, spec_weight=1.0, vers_weight=3.0)
    metrics = evaluator.evaluate(model, base={"spec": 0.5, "vers": 0.25})
    assert metrics["spec"] == 1.0 and metrics["vers"] == 0.5
    assert metrics["uni"] == pytest.approx((1.0 * 1.0 + 3.0 * 0.5) / 4)
    assert metrics["spec_rel"] == 2.0 and metrics["vers_rel"] == 2.0
    assert metrics["vers/a/exact_match"] == 1.0 and metrics["vers/b/exact_match"] == 0.0


def test_uni_is_a_weighted_mean():
    assert uni_score(0.2, 0.8) == pytest.approx(0.5)
    assert uni_score(0.2, 0.8, 3, 1) == pytest.approx(0.35)


EOS = 2


def test_greedy_from_gold_settles_what_the_gold_forward_decides():
    gold = [5, 6, 7, EOS]
    assert greedy_from_gold(gold, [5, 6, 7, EOS], 8, EOS) == [5, 6, 7]  # the gold answer, then EOS
    assert greedy_from_gold(gold, [5, EOS, 9, 9], 8, EOS) == [5]  # EOS early
    assert greedy_from_gold(gold, [5, 6, 7, 8], 8, EOS) is None  # no EOS after the answer: goes on, unknown
    assert greedy_from_gold(gold, [5, 6, 7, 8], 4, EOS) == [5, 6, 7, 8]  # ... unless max_new_tokens ends it there
    assert greedy_from_gold(gold, [5, 9, 7, EOS], 8, EOS) is None  # left the gold answer: the rest is unknown
    assert greedy_from_gold(gold, [5, 9, 7, EOS], 2, EOS) == [5, 9]  # ... as max_new_tokens ends it
    assert greedy_from_gold(gold, [5, 6, 7, EOS], 2, EOS) == [5, 6]  # cut by max_new_tokens


def generated_matches(model, tokenizer, examples, max_new_tokens):
    """Exact match the plain way: generate every example."""
    prompts = [encode_example(tokenizer, "compact", e)[0] for e in examples]
    outputs = evaluate._greedy_outputs(model, tokenizer, prompts, 2, max_new_tokens, torch.device("cpu"), prompts[0])
    return [o.strip() == e.output.strip() for o, e in zip(outputs, examples)]


@pytest.mark.parametrize("max_new_tokens", [8, 3, 2])
def test_exact_match_equals_generating_every_example(taught, max_new_tokens):
    model, tokenizer = taught
    examples = TAUGHT + [Example("rev", "abc", "abc"), Example("rev", "xyz", "zy"), Example("rev", "abc", "cbaa"),
                         Example("rev", "ab", "ba"), Example("copy", "xyz", "xyz"), Example("rev", "xyz", " zyx ")]
    expected = generated_matches(model, tokenizer, examples, max_new_tokens)
    scores = score_set(model, tokenizer, "compact", EvalSet("s", examples, "exact_match"), 3, max_new_tokens)
    assert scores["exact_match"] == pytest.approx(sum(expected) / len(examples))
    assert any(expected) and not all(expected)


def test_sets_scored_together_as_each_alone(taught):
    model, tokenizer = taught
    sets = [EvalSet("s", TAUGHT + [Example("rev", "abc", "abc")], "exact_match"),
            EvalSet("mc", [Example("rev", "abc", "cba", choices=("abc", "cba"), answer=1)], "choice"),
            EvalSet("l", TAUGHT, "loglik")]
    together = score_sets(model, tokenizer, "compact", sets, 2, 8)
    for eval_set, scores in zip(sets, together):
        alone = score_set(model, tokenizer, "compact", eval_set, 2, 8)
        assert scores == pytest.approx(alone), eval_set.name


def test_a_generation_config_that_changes_greedy_generates_every_example(taught, monkeypatch):
    model, tokenizer = taught
    eval_set = EvalSet("s", TAUGHT + [Example("rev", "abc", "abc")], "exact_match")
    generated = []
    real = evaluate._greedy_outputs
    monkeypatch.setattr(evaluate, "_greedy_outputs", lambda m, t, prompts, *a: generated.append(len(prompts))
                        or real(m, t, prompts, *a))
    assert score_set(model, tokenizer, "compact", eval_set, 2, 8)["exact_match"] == pytest.approx(2 / 3)
    assert generated == [1]  # the gold forward settled the two right answers; the wrong one left the gold answer
    model.generation_config.repetition_penalty = 1.3
    try:
        score_set(model, tokenizer, "compact", eval_set, 2, 8)
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert generated == [1, 3]


def plain_loglik(model, prompt, response):
    """A plain forward of the whole row: the response's summed log-likelihood and the likeliest token at each of
    its positions (a row without a prompt: its first token is given, not scored)."""
    ids = prompt + response
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    start = max(len(prompt), 1)
    positions = range(start - 1, len(ids) - 1)
    return (sum(logprobs[p, ids[p + 1]].item() for p in positions), len(positions),
            [logprobs[p].argmax().item() for p in positions])


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_rows_scored_per_shared_prompt_equal_a_plain_forward_of_each_row(taught, batch_size):
    """Prompts of different lengths (left-padded), options sharing a prompt, a repeated row, responses of
    different lengths, a row without a prompt: every row as a plain forward of the whole row scores it."""
    model, tokenizer = taught
    a, b = encode_example(tokenizer, "compact", TAUGHT[0])[0], encode_example(tokenizer, "compact", TAUGHT[1])[0]
    long = encode_example(tokenizer, "compact", Example("rev", "abcabcabc", ""))[0]
    rows = [(a, [5, 6, 7, EOS]), (a, [8, EOS]), (a, [5, 6, 7, EOS]), (b, [9, EOS]), (long, [4, 5, 6, 7, 8, 9, EOS]),
            (long, [EOS]), ([], [5, 6, EOS]), (b, [])]
    scored = evaluate._response_logliks(model.eval(), tokenizer, rows, batch_size, torch.device("cpu"), rows[0])
    for (prompt, response), (total, count, likeliest) in zip(rows, scored):
        want_total, want_count, want_likeliest = plain_loglik(model, prompt, response)
        assert count == want_count and likeliest == want_likeliest
        assert total == pytest.approx(want_total, abs=1e-4)


def test_a_prompt_shared_by_options_runs_once(taught, monkeypatch):
    model, tokenizer = taught
    items = [Example("rev", "abc", "cba", choices=("abc", "cba", "bca"), answer=1),
             Example("rev", "xyz", "zyx", choices=("zyx", "xyz"), answer=0)]
    forwards = []
    real = evaluate._score_group_batch
    monkeypatch.setattr(evaluate, "_score_group_batch", lambda m, pad, prompts, responses, device:
                        forwards.append((len(prompts), sum(map(len, responses)))) or real(m, pad, prompts, responses,
                                                                                          device))
    assert score_set(model.eval(), tokenizer, "compact", EvalSet("mc", items, "choice"), 16, 8)["choice"] == 1.0
    assert forwards == [(2, 5)]  # two prompts; five distinct responses (each gold is one of its options)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_every_family_scores_a_shared_prompt_as_a_plain_forward(family, tmp_path):
    make_model(tmp_path, family=family, layers=2)
    model, tokenizer = load_model(str(tmp_path)).eval(), make_tokenizer(tmp_path)
    rows = [([1, 5, 6], [7, 8, EOS]), ([1, 5, 6], [9, EOS]), ([1, 5, 6, 7, 8, 9], [10, EOS])]
    scored = evaluate._response_logliks(model, tokenizer, rows, 4, torch.device("cpu"), rows[0])
    for (prompt, response), (total, count, likeliest) in zip(rows, scored):
        want_total, want_count, want_likeliest = plain_loglik(model, prompt, response)
        assert (count, likeliest) == (want_count, want_likeliest)
        assert total == pytest.approx(want_total, abs=1e-4)
