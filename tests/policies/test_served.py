"""ServedAdapters against the simulated server: versioned adapters follow the learner's window."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from engine.config.sections import EndpointConfig, GRPOConfig, OptimConfig, RunConfig
from engine.endpoints.adapters import AdapterClient
from engine.endpoints.client import Client
from engine.errors import ConfigError, RequestRejected
from engine.learning.learner import Learner, ScoredBatch, snapshot_version_for
from engine.policies.base import PolicySnapshot
from engine.policies.served import AdapterWriter, ServedAdapters
from engine.testing.sim import SimConfig, SimServer, write_fake_adapter

BASE = "base-model"


def write(version: int, directory: Path) -> None:
    """A distinct small adapter per version."""
    write_fake_adapter(directory, seed=version, base_model=BASE)


class StubPolicy:
    """Just enough of a policy for the learner's versions and snapshots."""

    name = "stub"

    def configure_optimizer(self, optim: OptimConfig) -> None:
        pass

    def snapshot(self, version: int) -> PolicySnapshot:
        return PolicySnapshot(version, {"w": np.zeros(1)})


@asynccontextmanager
async def served_on_sim(
    tmp_path: Path, max_staleness: int, writer: AdapterWriter = write, **sim: Any
) -> AsyncIterator[tuple[SimServer, ServedAdapters]]:
    """A strict simulated server serving BASE, and a run's ServedAdapters on it."""
    server = SimServer(SimConfig(models=(BASE,), strict_models=True, **sim))
    async with server, AdapterClient(EndpointConfig(base_url=server.base_url)) as api:
        served = ServedAdapters(
            api,
            base_model=BASE,
            run_name="run",
            max_staleness=max_staleness,
            write=writer,
            directory=tmp_path / "adapters",
        )
        yield server, served


@pytest.mark.parametrize("max_staleness", [0, 1, 3])
async def test_loaded_adapters_follow_the_learners_snapshots(
    tmp_path: Path, max_staleness: int
) -> None:
    """After update k the server holds exactly versions max(1, k - s)..k; batch k's model is
    version max(0, k - s)'s, it answers, and the learner keeps the same snapshots."""
    config = RunConfig(grpo=GRPOConfig(max_staleness=max_staleness))
    learner = Learner(StubPolicy(), config, total_steps=8)  # type: ignore[arg-type]
    async with served_on_sim(tmp_path, max_staleness) as (sim, served):
        await served.start()
        endpoint = EndpointConfig(base_url=sim.base_url, mode="completions", model=BASE)
        async with Client(endpoint) as client:
            previous: set[str] = set()
            for k in range(7):
                v = snapshot_version_for(k, max_staleness)
                await learner.snapshot_at(v)  # the learner serves this snapshot...
                model = served.model_for(v)  # ...and the server its adapter
                assert model == (BASE if v == 0 else f"run-v{v}")
                out = await client.complete("hi", temperature=0, model=model)
                assert out.model == model
                await learner.update(ScoredBatch(step=k, groups=[]))
                await served.publish(learner.version, step=k)
                now = set(sim.adapters)
                oldest = max(1, learner.version - max_staleness)
                assert now == {f"run-v{u}" for u in range(oldest, learner.version + 1)}
                gone = previous - now
                assert gone == ({f"run-v{oldest - 1}"} if oldest > 1 else set())
                previous = now
                for u in range(learner.version + 1):
                    try:
                        await learner.snapshot_at(u)
                        kept = True
                    except RuntimeError:
                        kept = False
                    assert kept == (u in served.served()), (k, u)
    assert not (tmp_path / "adapters" / "v1").exists()  # unloaded: its directory is removed


async def test_a_window_of_one_by_hand(tmp_path: Path) -> None:
    """max_staleness 1, written out: which names are loaded and unloaded after each update."""
    async with served_on_sim(tmp_path, 1) as (sim, served):
        await served.start()
        seen = []
        for version in (1, 2, 3, 4):
            await served.publish(version)
            seen.append(sorted(sim.adapters))
        stats = served.statistics()
    assert seen == [["run-v1"], ["run-v1", "run-v2"], ["run-v2", "run-v3"], ["run-v3", "run-v4"]]
    assert (stats.loads, stats.unloads, stats.served) == (4, 2, (3, 4))


async def test_versions_answer_differently(tmp_path: Path) -> None:
    """Base, v1 and v2 give three different greedy answers; a pruned version is refused."""
    async with served_on_sim(tmp_path, 1) as (sim, served):
        await served.start()
        await served.publish(1)
        await served.publish(2)
        endpoint = EndpointConfig(base_url=sim.base_url, mode="completions", logprobs=True)
        async with Client(endpoint) as client:
            texts = set()
            for v in (0, 1, 2):
                out = await client.complete("hi", temperature=0, model=served.model_for(v))
                texts.add((out.choices[0].text, tuple(out.choices[0].logprobs or ())))
            await served.publish(3)
            with pytest.raises(RuntimeError, match="version 1 is not served"):
                served.model_for(1)
    assert len(texts) == 3


async def test_start_refuses_a_server_without_the_base_model(tmp_path: Path) -> None:
    """A server that does not list the base model is one ConfigError naming both."""
    sim = SimServer(SimConfig(models=("other",)))
    async with sim, AdapterClient(EndpointConfig(base_url=sim.base_url)) as api:
        served = ServedAdapters(
            api, base_model=BASE, run_name="r", max_staleness=1, write=write, directory=tmp_path
        )
        with pytest.raises(ConfigError, match="does not serve the base model 'base-model'"):
            await served.start()
    assert sim.statistics().by_endpoint["/v1/load_lora_adapter"] == 0


async def test_start_refuses_a_server_without_runtime_loading(tmp_path: Path) -> None:
    """A vLLM started without runtime LoRA updating is refused before any step, saying how."""
    async with served_on_sim(tmp_path, 1, runtime_lora=False) as (_, served):
        with pytest.raises(RequestRejected, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING"):
            await served.start()


async def test_resume_loads_the_window_and_close_unloads(tmp_path: Path) -> None:
    """start(version) of a resumed run loads its window; close unloads all and cleans up."""
    async with served_on_sim(tmp_path, 2) as (sim, served):
        await served.start(version=5)
        assert sorted(sim.adapters) == ["run-v3", "run-v4", "run-v5"]
        await served.close()
        assert sim.adapters == {}
    assert list((tmp_path / "adapters").iterdir()) == []


async def test_a_writer_that_writes_nothing_is_a_clear_error(tmp_path: Path) -> None:
    """The writer must leave a PEFT adapter; otherwise the error names the missing file."""
    async with served_on_sim(tmp_path, 1, lambda version, path: None) as (sim, served):
        with pytest.raises(RuntimeError, match=r"no adapter_config\.json or adapter_model"):
            await served.publish(1)
        assert sim.adapters == {}


def test_names_are_checked() -> None:
    """A run name that could not be an adapter name is refused at construction."""
    with pytest.raises(ValueError, match="run_name"):
        ServedAdapters(
            None,  # type: ignore[arg-type]
            base_model=BASE,
            run_name="a b",
            max_staleness=1,
            write=write,
            directory=".",
        )
