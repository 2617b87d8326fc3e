"""``python -m engine run`` with ``[environment]``: the calculator task end to end against the
simulated server, whose fake model calls the tool (scripted), then answers."""

from __future__ import annotations

from pathlib import Path

from engine.config.loading import load_config
from engine.testing.sim import SimConfig, SimReply, SimServer, SimToolCall, ToolScript

from ..reliability.support import REPO, jsonl_records, run_engine

SCRIPT = ToolScript(
    [SimReply(tool_calls=(SimToolCall("calculator", {"expression": "25*3"}),)), "Answer: 75"]
)


async def test_calculator_run_on_the_simulated_server(tmp_path: Path) -> None:
    async with SimServer(SimConfig(model=SCRIPT)) as sim:
        toml = tmp_path / "calc.toml"
        toml.write_text(
            'policy = "prompt"\n'
            '[environment]\nname = "calculator"\nmax_turns = 3\ndeadline = 60.0\n'
            f'[endpoint]\nbase_url = "{sim.base_url}"\nmode = "chat"\n'
            "[data]\nbatch_size = 2\n[grpo]\ngroup_size = 3\nmini_batch_size = 2\n"
            "[trainer]\neval_every = 2\neval_size = 2\n"
        )
        out = tmp_path / "run"
        done = await run_engine(
            ["run", "--config", str(toml), "--out", str(out), "--steps", "2", "--quiet"]
        )
    assert done.returncode == 0, done.err[-3000:]
    metrics = jsonl_records(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1]
    for m in metrics:
        assert m["episodes/done"] == 6 and m["episodes/error"] == 0
        assert m["episodes/turns"] == 12 and m["episodes/tool_calls"] == 6
        assert 0.0 <= m["reward"] <= 1.0
    assert metrics[1]["eval/n"] == 2 and metrics[1]["eval/failures"] == 0
    turns = [e for e in jsonl_records(out / "events.jsonl") if e.get("kind") == "generation"]
    assert turns and all(isinstance(e["episode"], str) and e["turn"] in (0, 1) for e in turns)


def test_the_example_config_selects_the_calculator() -> None:
    config = load_config(REPO / "examples" / "calculator.toml")
    assert config.environment.name == "calculator" and config.endpoint.mode == "completions"
