"""A checkpoint's config is data: ``eval``, ``compare`` and ``FineTunedModel.load`` take the
endpoint, the key variable and reward imports from the user, or from the checkpoint only with
``--trust-saved-config``.

The checkpoint here is a prompt policy's, tampered after it was written: its ``meta.json``
names a second loopback server as ``base_url``, another environment variable as
``api_key_env`` (holding a token) and a reward function in a module whose import writes a
marker file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest

from engine.config.loading import load_config, to_dict
from engine.endpoints.client import Client
from engine.errors import ConfigError
from engine.learning.checkpoint import save_checkpoint
from engine.policies.prompt import PromptPolicy
from engine.testing.sim import SimConfig, SimServer
from engine.training.finetune import FineTunedModel

from ..reliability.support import REPO, run_engine

DATA = str(REPO / "engine/data/datasets/sentiment.jsonl")
TOKEN = "sk-TRUST-CANARY-0b7e55d1"
EVIL = """\
import os, pathlib
pathlib.Path(os.environ["EVIL_MARKER"]).write_text("imported")
def score(example, text):
    return 1.0
"""


@dataclass
class Setup:
    user: SimServer  # the server the user names
    other: SimServer  # the server the tampered checkpoint names
    checkpoint: Path
    marker: Path
    env: dict[str, str]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    """A prompt-policy checkpoint written for ``user`` and then tampered to name ``other``,
    the variable STOLEN_TOKEN and ``evilmod:score``."""
    (tmp_path / "evilmod.py").write_text(EVIL)
    marker = tmp_path / "imported.marker"
    async with SimServer(SimConfig(latency=0.0)) as user, SimServer(SimConfig()) as other:
        cfg = load_config(
            None,
            [
                "policy='prompt'",
                f"endpoint.base_url='{user.base_url}'",
                "prompt.instructions=['Classify the sentiment.']",
            ],
        )
        async with Client(cfg.endpoint) as client:
            arrays, meta = PromptPolicy(client, cfg.prompt, endpoint=cfg.endpoint).state()
        data = to_dict(cfg)
        data["endpoint"].update(base_url=other.base_url, api_key_env="STOLEN_TOKEN")
        data["reward"]["functions"] = ["evilmod:score"]
        path = tmp_path / "model"
        policy_arrays = {f"policy/{k}": v for k, v in arrays.items()}
        save_checkpoint(path, policy_arrays, {"policy": meta, "config": data, "step": 3})
        env = {"PYTHONPATH": str(tmp_path), "EVIL_MARKER": str(marker), "STOLEN_TOKEN": TOKEN}
        yield Setup(user, other, path, marker, env)


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-2000:]
    return lines[0]


EVAL = ["eval", "--data", DATA, "--limit", "4", "--json", "--quiet"]
MINE = ["--set", "reward.functions=['exact_match']"]


async def test_eval_refuses_the_checkpoints_endpoint(setup: Setup) -> None:
    """Without the user's endpoint: one error line saying what to pass; nothing is sent and
    nothing imported."""
    done = await run_engine([*EVAL, "--checkpoint", str(setup.checkpoint)], env=setup.env)
    assert done.returncode == 2
    line = error_line(done.err)
    assert "endpoint.base_url" in line and "--trust-saved-config" in line
    assert setup.other.statistics().requests == 0 and setup.user.statistics().requests == 0
    assert not setup.marker.exists()


async def test_eval_refuses_the_checkpoints_reward_imports(setup: Setup) -> None:
    """With the user's endpoint but the checkpoint's module:function rewards: refused before
    any request, and the module is never imported."""
    here = ["--set", f"endpoint.base_url='{setup.user.base_url}'"]
    done = await run_engine([*EVAL, "--checkpoint", str(setup.checkpoint), *here], env=setup.env)
    assert done.returncode == 2
    line = error_line(done.err)
    assert "evilmod:score" in line and "reward.functions" in line
    assert not setup.marker.exists()
    assert setup.other.statistics().requests == 0 and setup.user.statistics().requests == 0


async def test_eval_runs_on_the_users_endpoint(setup: Setup) -> None:
    """The user's endpoint and rewards: every request goes to the user's server, none to the
    checkpoint's, and the checkpoint's key variable is not read."""
    here = ["--set", f"endpoint.base_url='{setup.user.base_url}'", *MINE]
    done = await run_engine([*EVAL, "--checkpoint", str(setup.checkpoint), *here], env=setup.env)
    assert done.returncode == 0, done.err[-2000:]
    summary = orjson.loads(done.stdout)
    assert summary["n"] == 4 and summary["errors"] == 0
    assert setup.user.statistics().requests == 4
    assert setup.other.statistics().requests == 0 and not setup.marker.exists()
    assert "STOLEN_TOKEN" in done.err  # the note says the saved variable was not used


async def test_trusted_checkpoint_is_printed_and_its_key_stays_with_its_host(
    setup: Setup, tmp_path: Path
) -> None:
    """--trust-saved-config uses the saved endpoint and says so; naming another base_url
    keeps the saved variable's key from it (the server, which wants that key, answers 401)."""
    done = await run_engine(
        [*EVAL, "--checkpoint", str(setup.checkpoint), "--trust-saved-config", *MINE],
        env=setup.env,
    )
    assert done.returncode == 0, done.err[-2000:]
    assert "using from the saved config" in done.err and setup.other.base_url in done.err
    assert setup.other.statistics().requests == 4 and not setup.marker.exists()

    async with SimServer(SimConfig(api_key=TOKEN, latency=0.0)) as keyed:
        here = ["--set", f"endpoint.base_url='{keyed.base_url}'", *MINE]
        done = await run_engine(
            [*EVAL, "--checkpoint", str(setup.checkpoint), "--trust-saved-config", *here],
            env=setup.env,
        )
        assert done.returncode == 0, done.err[-2000:]
        assert "not using the saved endpoint.api_key_env" in done.err
        summary = orjson.loads(done.stdout)
        assert summary["errors"] == 4  # no key went to the host the user named: 401 each
        assert keyed.statistics().requests >= 4
    assert setup.other.statistics().requests == 4  # nothing more went to the saved host


async def test_trusted_reward_imports_run(setup: Setup) -> None:
    """With --trust-saved-config the saved reward import is what the user asked for."""
    here = ["--set", f"endpoint.base_url='{setup.user.base_url}'", "--trust-saved-config"]
    done = await run_engine([*EVAL, "--checkpoint", str(setup.checkpoint), *here], env=setup.env)
    assert done.returncode == 0, done.err[-2000:]
    assert "reward.functions = ['evilmod:score']" in done.err and setup.marker.exists()


async def test_compare_refuses_then_uses_the_users_endpoint(setup: Setup) -> None:
    """compare: the checkpoint's endpoint is refused; with --set it runs on the user's."""
    ck = str(setup.checkpoint)
    args = ["compare", "--a", f"{ck}#ref", "--b", ck, "--data", DATA, "--limit", "3"]
    args += ["--samples", "2", "--metrics", "quality", "--resamples", "100", "--quiet"]
    done = await run_engine(args, env=setup.env)
    assert done.returncode == 2
    assert "endpoint.base_url" in error_line(done.err)
    here = ["--set", f"endpoint.base_url='{setup.user.base_url}'", *MINE]
    done = await run_engine([*args, *here], env=setup.env)
    assert done.returncode == 0, done.err[-2000:]
    assert setup.user.statistics().requests > 0
    assert setup.other.statistics().requests == 0 and not setup.marker.exists()


async def test_finetuned_model_load(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """FineTunedModel.load: the saved endpoint and reward imports need the caller's say."""
    monkeypatch.syspath_prepend(str(setup.checkpoint.parent))
    for name, value in setup.env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="trust_saved_config=True"):
        FineTunedModel.load(setup.checkpoint)
    mine = {"base_url": setup.user.base_url}
    with pytest.raises(ConfigError, match="evilmod:score"):
        FineTunedModel.load(setup.checkpoint, endpoint=mine)
    assert not setup.marker.exists()
    async with FineTunedModel.load(
        setup.checkpoint, endpoint=mine, overrides=["reward.functions=['exact_match']"]
    ) as model:
        assert model.config.endpoint.api_key_env == ""
        await model.generate("A fine film.")
    assert setup.user.statistics().requests == 1 and setup.other.statistics().requests == 0
    async with FineTunedModel.load(setup.checkpoint, trust_saved_config=True) as trusted:
        assert trusted.config.endpoint.base_url == setup.other.base_url


async def test_resume_of_a_prompt_run_takes_the_endpoint_from_the_user(tmp_path: Path) -> None:
    """run --resume DIR: DIR's config.json is data too. Edited to name another host, it is
    refused; given the endpoint again, the run continues there and the other host gets
    nothing."""
    async with SimServer(SimConfig(latency=0.0)) as user, SimServer(SimConfig()) as other:
        toml = tmp_path / "mine.toml"
        toml.write_text(
            f'policy = "prompt"\n[endpoint]\nbase_url = "{user.base_url}"\n'
            '[prompt]\ninstructions = ["Classify the sentiment."]\n'
            '[reward]\nfunctions = ["exact_match"]\n'
            "[data]\nbatch_size = 2\n[grpo]\ngroup_size = 2\nmini_batch_size = 1\n"
            "[trainer]\neval_every = 0\n"
        )
        out = tmp_path / "run"
        first = await run_engine(
            ["run", "--config", str(toml), "--out", str(out), "--steps", "2", "--quiet"]
        )
        assert first.returncode == 0, first.err[-2000:]
        saved = orjson.loads((out / "config.json").read_bytes())
        saved["endpoint"].update(base_url=other.base_url, api_key_env="STOLEN_TOKEN")
        (out / "config.json").write_bytes(orjson.dumps(saved))
        resume = ["run", "--resume", str(out), "--steps", "3", "--quiet"]
        refused = await run_engine(resume, env={"STOLEN_TOKEN": TOKEN})
        assert refused.returncode == 2 and "endpoint.base_url" in error_line(refused.err)
        done = await run_engine([*resume, "--config", str(toml)], env={"STOLEN_TOKEN": TOKEN})
        assert done.returncode == 0, done.err[-2000:]
        assert other.statistics().requests == 0
    steps = [orjson.loads(x)["step"] for x in (out / "metrics.jsonl").read_bytes().splitlines()]
    assert steps == [0, 1, 2]
    assert orjson.loads((out / "config.json").read_bytes())["endpoint"]["api_key_env"] == ""
