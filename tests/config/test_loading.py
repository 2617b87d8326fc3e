"""engine.config.loading: TOML, overrides, and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config.loading import load_config, to_dict
from engine.config.sections import RunConfig
from engine.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.toml"
    p.write_text(text)
    return p


def test_defaults_without_file() -> None:
    """No file and no overrides gives the documented defaults."""
    config = load_config()
    assert config == RunConfig()
    assert config.grpo.group_size >= 2


def test_toml_sections_and_overrides(tmp_path: Path) -> None:
    """Sections set nested fields; --set overrides win and parse TOML values."""
    p = write(tmp_path, 'steps = 7\n[grpo]\nbeta = 0.1\n[endpoint]\nstop = ["\\n"]\n')
    config = load_config(
        p, ["grpo.beta=0.04", "endpoint.model=gpt-4o-mini", "optim.schedule='cosine'"]
    )
    assert config.steps == 7
    assert config.grpo.beta == 0.04
    assert config.endpoint.model == "gpt-4o-mini"
    assert config.endpoint.stop == ("\n",)
    assert config.optim.schedule == "cosine"


def test_int_accepted_for_float(tmp_path: Path) -> None:
    """An integer where a float is expected is accepted and converted."""
    config = load_config(write(tmp_path, "[optim]\nlr = 1\n"))
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)


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


def test_warmup_must_be_shorter_than_a_decaying_schedule() -> None:
    """A decaying schedule needs warm-up shorter than the run; a constant one does not."""
    with pytest.raises(ConfigError, match=r"optim\.warmup_steps"):
        load_config(None, ["steps=5", "optim.warmup_steps=5", "optim.schedule='cosine'"])
    assert load_config(None, ["steps=5", "optim.warmup_steps=5"]).optim.warmup_steps == 5


def test_overrides_apply_in_order_over_the_file(tmp_path: Path) -> None:
    """Later overrides win over earlier ones and over the file; a whole table can be set."""
    p = write(tmp_path, "steps = 7\n")
    config = load_config(p, ["steps=8", "steps=9", "judge={model = 'j'}"])
    assert config.steps == 9
    assert config.judge is not None and config.judge.model == "j"


def test_round_trip_through_dict() -> None:
    """to_dict output is TOML-shaped (no None values) and loads back to an equal config."""
    config = load_config(None, ["grpo.epsilon_high=0.28", "endpoint.stop=['a']"])
    data = to_dict(config)
    assert "judge" not in data  # None is left out: TOML cannot write it
    assert data["endpoint"]["stop"] == ["a"]
    assert load_config(None, base=data) == config


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["endpoint.mode='chat'", "endpoint.model='m'"], r"endpoint\.mode"),
        (["endpoint.mode='completions'"], r"endpoint\.model"),
        (["endpoint.mode='completions'", "endpoint.model='m'", "hf.full_finetune=true"],
         r"hf\.generation"),
        (["endpoint.mode='completions'", "endpoint.model='m'", "hf.tis_cap=0"], r"hf\.tis_cap"),
    ],
)  # fmt: skip
def test_hf_server_generation_is_checked(extra: list[str], key: str) -> None:
    """Server generation needs LoRA, completions mode, the base model's name, a positive cap."""
    with pytest.raises(ConfigError, match=key):
        load_config(None, ["policy='hf'", "hf.generation='server'", *extra])


def test_hf_server_keys_parse() -> None:
    pytest.importorskip("torch")  # policy = 'hf' asks for the extra
    cfg = load_config(
        None,
        [
            "policy='hf'",
            "hf.generation='server'",
            "hf.tis_cap=3.0",
            "hf.server_token_ids=false",
            "endpoint.mode='completions'",
            "endpoint.model='m'",
        ],
    )
    assert (cfg.hf.generation, cfg.hf.tis_cap, cfg.hf.server_token_ids) == ("server", 3.0, False)
