"""``python -m engine serve-sim``: options, the base URL line, statistics at exit."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp
import orjson

from engine.cli.serve_sim import _build_parser, _config_from_args, main
from engine.testing.sim import SimConfig
from tests.testing.sim_http import CHAT, post


def test_cli_rejects_bad_fault() -> None:
    """main() returns 2 for an unknown fault kind without serving."""
    assert main(["--fault", "gremlins=0.5"]) == 2


async def test_cli_serves_and_exits_on_sigterm() -> None:
    """python -m engine serve-sim prints its base URL first, serves, and exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-m",
        "engine",
        "serve-sim",
        "--port",
        "0",
        "--ignore-n",
        "--fault",
        "short_n=0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)  # type: ignore[union-attr]
        base_url = line.decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
        async with aiohttp.ClientSession() as s:
            _, _, out = await post(s, f"{base_url}/chat/completions", {**CHAT, "n": 3})
        assert len(out["choices"]) == 1
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 0, err
        assert orjson.loads(err.splitlines()[-1])["requests"] == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_cli_lora_options_reach_the_config() -> None:
    """--strict-models, --no-runtime-lora and --max-lora-rank set the simulator's LoRA config;
    the defaults match SimConfig's."""
    default = _config_from_args(_build_parser().parse_args([]))
    assert (default.strict_models, default.runtime_lora, default.max_lora_rank) == (
        SimConfig().strict_models,
        SimConfig().runtime_lora,
        SimConfig().max_lora_rank,
    )
    args = _build_parser().parse_args(
        ["--strict-models", "--no-runtime-lora", "--max-lora-rank", "64"]
    )
    config = _config_from_args(args)
    assert (config.strict_models, config.runtime_lora, config.max_lora_rank) == (True, False, 64)
