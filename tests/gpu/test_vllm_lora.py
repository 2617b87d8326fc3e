"""The runtime LoRA protocol against a real vLLM on an NVIDIA GPU (the simulated server's tests
in tests/testing/test_sim_adapters.py and tests/policies/test_served.py, for real).

Skipped, with the reason, unless ``vllm`` is installed, ``nvidia-smi -L`` lists a GPU, torch
and peft are importable (to write real PEFT adapters) and a small transformers model directory
is found: ``$GRPO_ENGINE_GPU_MODEL``, else the first converted model under
``$GRPO_ENGINE_CACHE/models`` (default ``~/.cache/grpo-engine/models``, where the hf policy
caches its Gemma 3 270M conversion). The test starts ``vllm serve MODEL --enable-lora
--max-lora-rank 8`` with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` itself, once per module.
Not under tests/integration: CI has no GPU, and .ci/run requires those tests not to skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.config.sections import EndpointConfig
from engine.endpoints.adapters import AdapterClient
from engine.endpoints.client import Client
from engine.errors import RequestRejected
from engine.policies.served import ServedAdapters

BASE = "base"
RANK = 8
START_TIMEOUT = float(os.environ.get("GRPO_ENGINE_VLLM_START_TIMEOUT", "900"))


def _gpu_listed() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def _model_dir() -> Path | None:
    explicit = os.environ.get("GRPO_ENGINE_GPU_MODEL")
    if explicit:
        return Path(explicit)
    base = os.environ.get("GRPO_ENGINE_CACHE")
    root = (Path(base) if base else Path.home() / ".cache" / "grpo-engine") / "models"
    if not root.is_dir():
        return None
    found = sorted(p.parent for p in root.glob("*/config.json"))
    return found[0] if found else None


def _why_skip() -> str | None:
    if importlib.util.find_spec("vllm") is None or shutil.which("vllm") is None:
        return "vllm is not installed"
    if not _gpu_listed():
        return "nvidia-smi lists no NVIDIA GPU"
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("peft") is None:
        return "torch and peft are needed to write PEFT adapters"
    if _model_dir() is None:
        return "no model: set GRPO_ENGINE_GPU_MODEL to a small transformers model directory"
    return None


_REASON = _why_skip()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vllm serve exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(2)
    pytest.fail(f"vllm serve not healthy after {START_TIMEOUT:g} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A vLLM server with runtime LoRA loading, serving the model as ``base``."""
    model = _model_dir()
    assert model is not None
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "serve.log"
    cmd = [
        "vllm", "serve", str(model), "--served-model-name", BASE, "--enable-lora",
        "--max-lora-rank", str(RANK), "--max-loras", "4", "--host", "127.0.0.1",
        "--port", str(port), "--max-model-len", "1024", "--gpu-memory-utilization", "0.3",
        "--enforce-eager",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def write_adapter() -> Callable[[int, Path], None]:
    """Writes a rank-8 PEFT adapter of the model (q/k/v/o) drawn from seed ``version``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_model_dir(), dtype=torch.float32)
    config = LoraConfig(
        r=RANK,
        lora_alpha=2 * RANK,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
    )
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing: not ours
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)

    def write(version: int, directory: Path) -> None:
        generator = torch.Generator().manual_seed(version)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            peft_model.save_pretrained(directory, safe_serialization=True)

    return write


async def _greedy(client: Client, model: str) -> tuple[str, tuple[float, ...]]:
    out = await client.complete(
        "The capital of France is", temperature=0, logprobs=True, extra_body={"model": model}
    )
    choice = out.choices[0]
    return choice.text, tuple(choice.logprobs or ())


async def test_vllm_load_list_answer_unload(
    vllm_url: str, write_adapter: Callable[[int, Path], None], tmp_path: Path
) -> None:
    """Two adapters load, are listed with their parent, answer differently from each other and
    from the base model; vLLM's 400/404 refusals are the errors the simulated server gives."""
    import anyio.to_thread

    for v in (1, 2):
        await anyio.to_thread.run_sync(write_adapter, v, tmp_path / f"a{v}")
    endpoint = EndpointConfig(base_url=vllm_url, mode="completions", model=BASE, max_tokens=8)
    async with AdapterClient(endpoint, timeout=300) as api, Client(endpoint) as client:
        await api.check_runtime_api()
        await api.load("a1", tmp_path / "a1")
        await api.load("a2", tmp_path / "a2")
        listed = {m.id: m for m in await api.models()}
        assert listed["a1"].parent == BASE and listed["a1"].root == str(tmp_path / "a1")
        answers = [await _greedy(client, m) for m in (BASE, "a1", "a2")]
        assert len({lp for _, lp in answers}) == 3, answers
        with pytest.raises(RequestRejected) as dup:
            await api.load("a1", tmp_path / "a1")
        with pytest.raises(RequestRejected) as missing:
            await api.load("a3", tmp_path / "nowhere")
        await api.unload("a1")
        with pytest.raises(RequestRejected) as unknown:
            await api.unload("a1")
        with pytest.raises(RequestRejected) as unknown_model:
            await _greedy(client, "a1")
        await api.unload("a2")
    assert (dup.value.status, missing.value.status, unknown.value.status) == (400, 404, 404)
    assert unknown_model.value.status == 404


async def test_vllm_served_adapters_follow_the_window(
    vllm_url: str, write_adapter: Callable[[int, Path], None], tmp_path: Path
) -> None:
    """ServedAdapters with max_staleness 1 on vLLM: after update k, versions k-1 and k."""
    endpoint = EndpointConfig(base_url=vllm_url, mode="completions", model=BASE, max_tokens=8)
    async with AdapterClient(endpoint, timeout=300) as api, Client(endpoint) as client:
        served = ServedAdapters(
            api,
            base_model=BASE,
            run_name="gpu-run",
            max_staleness=1,
            write=write_adapter,
            directory=tmp_path / "adapters",
        )
        await served.start()
        seen: list[Any] = []
        for version in (1, 2, 3):
            await served.publish(version)
            names = sorted(m.id for m in await api.models() if m.id.startswith("gpu-run-"))
            seen.append(names)
            await _greedy(client, served.model_for(version))
        await served.close()
        assert [m.id for m in await api.models()] == [BASE]
    assert seen == [["gpu-run-v1"], ["gpu-run-v1", "gpu-run-v2"], ["gpu-run-v2", "gpu-run-v3"]]
