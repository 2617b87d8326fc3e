"""resolve_saved_config: which saved values a run may use, and what the user must give."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from engine.config.loading import load_config, to_dict
from engine.errors import CheckpointError, ConfigError
from engine.training.saved import resolve_saved_config

ELSEWHERE = "http://10.9.8.7:9/v1"


def saved(*overrides: str) -> dict[str, Any]:
    return to_dict(load_config(None, list(overrides)))


PROMPT = (
    "policy='prompt'",
    "prompt.instructions=['Answer.']",
    f"endpoint.base_url='{ELSEWHERE}'",
    "endpoint.api_key_env='SOME_TOKEN'",
)


def test_unused_authority_stays_inert_data() -> None:
    """A tinylm checkpoint's endpoint and reward imports are never used, so nothing is asked."""
    data = saved(f"endpoint.base_url='{ELSEWHERE}'", "reward.functions=['evil:score']")
    resolved = resolve_saved_config(data, source="ck", stream=io.StringIO())
    assert resolved.config == resolved.saved == load_config(None, base=data)


def test_an_endpoint_section_in_the_users_file_counts_as_given(tmp_path: Path) -> None:
    """A user's [endpoint] replaces the saved one whole: its key variable goes with it."""
    toml = tmp_path / "mine.toml"
    toml.write_text('[endpoint]\nbase_url = "http://127.0.0.1:1/v1"\n')
    out = io.StringIO()
    resolved = resolve_saved_config(saved(*PROMPT), source="ck", path=toml, stream=out)
    assert resolved.config.endpoint.base_url == "http://127.0.0.1:1/v1"
    assert resolved.config.endpoint.api_key_env == "" and out.getvalue() == ""


def test_refusals_name_what_to_pass() -> None:
    """The saved endpoint, judge and reward imports are each refused with a way out."""
    with pytest.raises(ConfigError, match=r"endpoint.base_url.*10\.9\.8\.7.*--trust-saved"):
        resolve_saved_config(saved(*PROMPT), source="ck", stream=io.StringIO())
    judged = saved(*PROMPT, "reward.judge_prompt='Grade it.'", f"judge.base_url='{ELSEWHERE}'")
    mine = ["endpoint.base_url='http://127.0.0.1:1/v1'"]
    with pytest.raises(ConfigError, match=r"judge\.base_url"):
        resolve_saved_config(judged, source="ck", overrides=mine, stream=io.StringIO())
    imports = saved(*PROMPT, "reward.functions=['evil:score']")
    with pytest.raises(ConfigError, match="evil:score"):
        resolve_saved_config(imports, source="ck", overrides=mine, stream=io.StringIO())
    with pytest.raises(CheckpointError, match="not a table"):
        resolve_saved_config(["no"], source="ck")  # type: ignore[arg-type]


def test_trust_adopts_and_prints_but_keeps_the_key_with_its_host() -> None:
    """Trusted: the saved endpoint is used and printed; with another base_url named, the
    saved key variable is not."""
    out = io.StringIO()
    resolved = resolve_saved_config(saved(*PROMPT), source="ck", trust=True, stream=out)
    assert resolved.config.endpoint.base_url == ELSEWHERE
    assert resolved.config.endpoint.api_key_env == "SOME_TOKEN"
    assert ELSEWHERE in out.getvalue() and "SOME_TOKEN" in out.getvalue()
    out = io.StringIO()
    mine = ["endpoint.base_url='http://127.0.0.1:1/v1'"]
    resolved = resolve_saved_config(
        saved(*PROMPT), source="ck", overrides=mine, trust=True, stream=out
    )
    assert resolved.config.endpoint.api_key_env == ""
    assert "not using the saved endpoint.api_key_env 'SOME_TOKEN'" in out.getvalue()
    same = [f"endpoint.base_url='{ELSEWHERE}/'"]  # the saved host itself: its key goes with it
    resolved = resolve_saved_config(
        saved(*PROMPT), source="ck", overrides=same, trust=True, stream=io.StringIO()
    )
    assert resolved.config.endpoint.api_key_env == "SOME_TOKEN"


def test_a_caller_with_its_own_client_needs_no_saved_endpoint() -> None:
    """FineTunedModel.load(client=...): the saved endpoint sends nothing, so it stays data."""
    resolved = resolve_saved_config(
        saved(*PROMPT), source="ck", client_given=True, stream=io.StringIO()
    )
    assert resolved.config.endpoint.base_url == ELSEWHERE
