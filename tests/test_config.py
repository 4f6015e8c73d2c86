"""Configuration: unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

import pytest
from rl_maml.experiments.sinusoid import SinusoidConfig

from rl_maml.config import ConfigError, InnerConfig, apply_overrides, from_dict, load_yaml, to_dict


def test_defaults_and_round_trip():
    cfg = from_dict(SinusoidConfig, {"benchmark": "sinusoid"})
    assert cfg.train.meta_batch_size == 25 and cfg.model.hidden_sizes == (40, 40)
    assert from_dict(SinusoidConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data, message",
    [
        ({"trian": {}}, r"unknown config key 'trian' \(did you mean 'train'\?\)"),
        ({"train": {"meta_batch_sze": 3}}, r"unknown config key 'train\.meta_batch_sze' \(did you mean 'train\.meta_batch_size'\?\)"),
        ({"train": {"meta_batch_size": "25"}}, r"train\.meta_batch_size: expected an integer, got '25'"),
        ({"train": {"meta_batch_size": 2.5}}, r"train\.meta_batch_size: expected an integer"),
        ({"inner": {"first_order": 1}}, r"inner\.first_order: expected true or false, got 1"),
        ({"inner": {"step_size": "adaptive"}}, r"inner\.step_size: expected one of 'fixed'"),
        ({"model": {"hidden_sizes": 40}}, r"model\.hidden_sizes: expected a list"),
        ({"task": {"x_range": [1, 2, 3]}}, r"task\.x_range: expected 2 values"),
        ({"methods": ["maml", "reptile"]}, r"methods\[1\]: expected one of 'maml'"),
        ({"inner": {"inner_lr": -1}}, r"inner\.inner_lr must be a finite number >= 0"),
        ({"train": {"meta_batch_size": 0}}, r"train\.meta_batch_size must be positive"),
        ({"train": 3}, r"train: expected a mapping"),
    ],
)
def test_validation_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(SinusoidConfig, data)


def test_int_is_accepted_for_float_and_optional():
    cfg = from_dict(InnerConfig, {"inner_lr": 1, "adapt": None})
    assert isinstance(cfg.inner_lr, float) and cfg.adapt is None
    assert from_dict(InnerConfig, {"adapt": ["layers.4"]}).adapt == ["layers.4"]


def test_overrides():
    raw = apply_overrides({"train": {"seed": 1}}, ["train.num_iterations=7", "model.hidden_sizes=[8, 8]",
                                                   "inner.first_order=true", "name=x"])
    assert raw == {"train": {"seed": 1, "num_iterations": 7}, "model": {"hidden_sizes": [8, 8]},
                   "inner": {"first_order": True}, "name": "x"}
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["train.num_iterations"])
    with pytest.raises(ConfigError, match="name is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.first=1"])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(listy)


def test_scientific_notation_is_a_number():
    """PyYAML reads 1e-6 as a string (YAML 1.1); configs accept it as the number it means."""
    from rl_maml.config import apply_overrides, from_dict
    from rl_maml.experiments.sinusoid import SinusoidConfig

    cfg = from_dict(SinusoidConfig, apply_overrides({}, ["train.outer_lr=1e-4", "variant.alpha_hyper_lr=2.5E-6"]))
    assert cfg.train.outer_lr == 1e-4 and cfg.variant.alpha_hyper_lr == 2.5e-6
    with pytest.raises(ConfigError, match="expected a number, got 'fast'"):
        from_dict(SinusoidConfig, {"train": {"outer_lr": "fast"}})
