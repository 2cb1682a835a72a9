"""Config loading: defaults, overrides, and errors that name file, line and key."""

import pytest

from cofitune_ray.config import Config, ConfigError, config_from_dict, load_config

MINIMAL = """\
model:
  path: model
data:
  speciality_train: train.jsonl
  speciality_eval: {name: spec, path: eval.jsonl}
  versatility:
    - {name: general, path: general.jsonl}
"""


def _write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_paper_defaults(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL))
    t = config.train
    assert (t.lr, t.epochs, t.schedule, t.warmup_ratio, t.weight_decay, t.betas, t.grad_clip) == (
        4e-5, 3, "cosine", 0.03, 0.1, [0.9, 0.95], 1.0)
    assert config.eval.spec_weight == config.eval.vers_weight == 0.5


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    config = load_config(_write(tmp_path, MINIMAL))
    assert config.data.speciality_train == str(tmp_path / "train.jsonl")
    assert config.data.speciality_eval.path == "eval.jsonl"  # does not exist: left for preflight to report


def test_unknown_key_names_file_line_and_valid_keys(tmp_path):
    path = _write(tmp_path, MINIMAL + "train:\n  lr: 1e-4\n  lrr: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:10: unknown key 'train.lrr'" in str(err.value)
    assert "lr, epochs" in str(err.value)


def test_wrong_type_names_the_key_and_line(tmp_path):
    path = _write(tmp_path, MINIMAL + "train:\n  epochs: three\n")
    with pytest.raises(ConfigError, match=rf"{path}:9: train.epochs: expected a whole number, got 'three'"):
        load_config(path)


def test_impossible_values_are_all_reported(tmp_path):
    path = _write(tmp_path, MINIMAL + "train:\n  lr: -1\n  warmup_ratio: 1.5\nscaling:\n  num_workers: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "train.lr: must be a positive number" in text
    assert "train.warmup_ratio: must be in [0, 1)" in text
    assert "scaling.num_workers: must be at least 1" in text


def test_yaml_scientific_notation_without_dot_is_a_number(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL + "train:\n  lr: 4e-5\n"))
    assert config.train.lr == 4e-5


def test_dotted_overrides(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), ["train.lr=1e-3", "search.beam_width=2", "train.max_steps=null"])
    assert config.train.lr == 1e-3 and config.search.beam_width == 2 and config.train.max_steps is None


def test_override_of_unknown_key_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="command line: unknown key 'train.learning_rate'"):
        load_config(_write(tmp_path, MINIMAL), ["train.learning_rate=1"])


def test_override_with_wrong_type(tmp_path):
    with pytest.raises(ConfigError, match="command line: train.epochs: expected a whole number"):
        load_config(_write(tmp_path, MINIMAL), ["train.epochs=many"])


def test_missing_required_values(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, "seed: 1\n"))
    assert "model.path: the base model directory is required" in str(err.value)
    assert "data.versatility: at least one versatility eval set is required" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip_through_dict(tmp_path):
    config = load_config(_write(tmp_path, MINIMAL), ["train.lr=2e-4"])
    again = config_from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert isinstance(again, Config)


def test_sharding_strategy_and_activation_checkpointing(tmp_path):
    path = _write(tmp_path, MINIMAL)
    config = load_config(path)
    assert config.scaling.strategy == "ddp" and config.train.activation_checkpointing is False
    config = load_config(path, ["scaling.strategy=fsdp", "train.activation_checkpointing=true"])
    assert config.scaling.strategy == "fsdp" and config.train.activation_checkpointing is True
    with pytest.raises(ConfigError, match="scaling.strategy: 'zero3' is not one of ddp, fsdp, auto"):
        load_config(path, ["scaling.strategy=zero3"])
    with pytest.raises(ConfigError, match="train.activation_checkpointing: expected true or false, got 'yes please'"):
        load_config(path, ["train.activation_checkpointing=yes please"])


def test_search_settings_default_to_the_speciality_floor_and_three_learning_rates_around_train_lr(tmp_path):
    from cofitune_ray.config import learning_rates, objective, stop_rules

    config = load_config(_write(tmp_path, MINIMAL + "train:\n  lr: 1e-4\n"))
    assert objective(config).name == "spec_floor" and objective(config).spec_floor == 0.9
    assert learning_rates(config).candidates == (3.16e-5, 1e-4, 3.16e-4) and learning_rates(config).keep == 1
    assert stop_rules(config).prune_after == 0.5
    explicit = load_config(_write(tmp_path, MINIMAL), ["search.lr_candidates=[1e-4]", "search.objective=uni"])
    assert learning_rates(explicit).candidates == (1e-4,) and objective(explicit).name == "uni"


def test_search_settings_are_checked_once_and_named_by_key(tmp_path):
    path = _write(tmp_path, MINIMAL + "search:\n  spec_floor: 1.5\n  lr_candidates: []\n  lr_keep: 0\n"
                                      "  max_depth: 0\n  prune_after: 2\n  objective: best\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    for message in ("search.objective: 'best' is not one of spec_floor, uni",
                    "search.max_depth: must be at least 1 or null",
                    "search.lr_candidates: needs at least one learning rate",
                    "search.prune_after: must be in (0, 1] or null"):
        assert f"{path}: {message}" in text


def test_a_validated_config_travels_to_workers_as_itself(tmp_path):
    """Trials and Ray Train workers get the Config object (pickled by Ray), not text to parse and validate again."""
    import pickle

    from cofitune_ray.tuning.trial import RunContext

    config = load_config(_write(tmp_path, MINIMAL), ["train.lr=2e-4", "search.lr_candidates=[1e-4, 3e-4]"])
    context = pickle.loads(pickle.dumps(RunContext(config, str(tmp_path), {"history": []})))
    assert isinstance(context.config, Config) and context.config == config
    assert context.config.source == config.source and context.config.search.lr_candidates == [1.0e-4, 3.0e-4]
