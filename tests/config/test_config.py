"""Config loading: TOML, overrides, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.schema import RunConfig, config_reference, field_docs, load_config, to_dict
from engine.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


def test_defaults_without_file() -> None:
    """No file and no overrides gives the documented defaults."""
    cfg = load_config()
    assert cfg == RunConfig()
    assert cfg.grpo.group_size >= 2


def test_toml_sections_and_overrides(tmp_path: Path) -> None:
    """Sections set nested fields; --set overrides win and parse TOML values."""
    p = write(tmp_path, 'steps = 7\n[grpo]\nbeta = 0.1\n[endpoint]\nstop = ["\\n"]\n')
    cfg = load_config(
        p, ["grpo.beta=0.04", "endpoint.model=gpt-4o-mini", "optim.schedule='cosine'"]
    )
    assert cfg.steps == 7
    assert cfg.grpo.beta == 0.04
    assert cfg.endpoint.model == "gpt-4o-mini"
    assert cfg.endpoint.stop == ("\n",)
    assert cfg.optim.schedule == "cosine"


def test_int_accepted_for_float(tmp_path: Path) -> None:
    """An integer where a float is expected is accepted and converted."""
    cfg = load_config(write(tmp_path, "[optim]\nlr = 1\n"))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("stepz = 3\n", "stepz", "unknown key"),
        ("[grpo]\nbeta = 'high'\n", "grpo.beta", "expected a number"),
        ("[grpo]\ngroup_size = 1\n", "grpo.group_size", ">= 2"),
        ("[grpo]\nloss_type = 'ppo'\n", "grpo.loss_type", "expected one of"),
        ("[grpo]\nepsilon = 0\n", "grpo.epsilon", "> 0"),
        ("[data]\nshuffle = 1\n", "data.shuffle", "true or false"),
        ("grpo = 3\n", "grpo", "expected a table"),
        ("[grpo]\nunknown = 1\n", "grpo.unknown", "unknown key"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    """Unknown keys, wrong types and out-of-range values name the file and the key."""
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert str(p) in msg
    assert repr(key) in msg
    assert fragment in msg
    assert info.value.key == key


def test_bad_override_names_set() -> None:
    """A bad --set override names --set and the key."""
    with pytest.raises(ConfigError, match=r"--set.*'grpo.epochs'.*>= 1"):
        load_config(None, ["grpo.epochs=0"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["grpo.epochs"])


def test_toml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    """A TOML syntax error names the file and the line."""
    p = write(tmp_path, "steps = 3\n[grpo\n")
    with pytest.raises(ConfigError, match=rf"{p}.*line 2"):
        load_config(p)


def test_missing_file() -> None:
    """A missing config file is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        load_config("nope.toml")


def test_cross_field_check(tmp_path: Path) -> None:
    """Weights must match functions."""
    p = write(tmp_path, "[reward]\nfunctions = ['a', 'b']\nweights = [1.0]\n")
    with pytest.raises(ConfigError, match=r"reward\.weights"):
        load_config(p)


def test_round_trip_through_dict(tmp_path: Path) -> None:
    """to_dict output loads back to an equal config."""
    cfg = load_config(None, ["grpo.epsilon_high=0.28", "endpoint.stop=['a']"])
    import tomllib  # noqa: F401  (the dict is TOML-shaped: no None values)

    assert load_config(None, base=to_dict(cfg)) == cfg


def test_every_field_documented() -> None:
    """Every config field carries a docstring, and the reference lists every section."""
    import dataclasses

    def walk(cls: type) -> None:
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
            if dataclasses.is_dataclass(f.type) or (
                isinstance(f.type, str) and f.type.endswith("Config")
            ):
                pass

    from engine.config import schema as c

    for cls in (
        c.RunConfig,
        c.GRPOConfig,
        c.OptimConfig,
        c.TinyLMConfig,
        c.EndpointConfig,
        c.LimitsConfig,
        c.RetryConfig,
        c.RewardConfig,
        c.DataConfig,
        c.TrainerConfig,
        c.PromptPolicyConfig,
    ):
        walk(cls)
    ref = config_reference()
    for section in ("[grpo]", "[optim]", "[endpoint]", "[limits]", "[judge]"):
        assert section in ref


def test_configs_are_frozen() -> None:
    """Config objects cannot be changed after loading."""
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.steps = 3  # type: ignore[misc]
