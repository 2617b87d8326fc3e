"""The simulated server's runtime LoRA routes answer as vLLM's do, and adapters change answers."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from engine.testing.sim import SimConfig, read_adapter, write_fake_adapter
from engine.testing.sim.adapters import AdapterRejected

from .sim_http import COMPLETION, post, serving

LOGPROBS = {**COMPLETION, "logprobs": 1, "temperature": 0, "max_tokens": 32}


async def _load(s: aiohttp.ClientSession, base: str, **body: Any) -> tuple[int, str]:
    async with s.post(f"{base}/load_lora_adapter", json=body) as resp:
        return resp.status, await resp.text()


async def _unload(s: aiohttp.ClientSession, base: str, name: str) -> tuple[int, str]:
    async with s.post(f"{base}/unload_lora_adapter", json={"lora_name": name}) as resp:
        return resp.status, await resp.text()


async def _ids(s: aiohttp.ClientSession, base: str) -> list[dict[str, Any]]:
    async with s.get(f"{base}/models") as resp:
        return (await resp.json())["data"]


async def test_load_list_unload_round_trip(tmp_path: Path) -> None:
    """A loaded adapter is listed with its root and parent; unloading removes it."""
    path = str(write_fake_adapter(tmp_path / "a", seed=1))
    async with serving(SimConfig(models=("base",))) as (sim, s):
        status, text = await _load(s, sim.base_url, lora_name="run-v1", lora_path=path)
        assert (status, text) == (200, "Success: LoRA adapter 'run-v1' added successfully.")
        cards = await _ids(s, sim.base_url)
        assert [c["id"] for c in cards] == ["base", "run-v1"]
        assert cards[1]["root"] == path and cards[1]["parent"] == "base"
        assert sim.adapters["run-v1"].rank == 8
        status, text = await _unload(s, sim.base_url, "run-v1")
        assert (status, text) == (200, "Success: LoRA adapter 'run-v1' removed successfully.")
        assert [c["id"] for c in await _ids(s, sim.base_url)] == ["base"]


async def test_load_errors_have_vllm_statuses_and_shape(tmp_path: Path) -> None:
    """Duplicate name 400, missing adapter 404, a file 400, high rank 400, unknown unload 404."""
    good = str(write_fake_adapter(tmp_path / "a"))
    big = str(write_fake_adapter(tmp_path / "big", rank=32))
    (tmp_path / "file").write_text("x")
    async with serving(SimConfig(max_lora_rank=16)) as (sim, s):
        assert (await _load(s, sim.base_url, lora_name="x", lora_path=good))[0] == 200
        cases = {
            "duplicate": ({"lora_name": "x", "lora_path": good}, 400, "InvalidUserInput"),
            "missing": ({"lora_name": "y", "lora_path": str(tmp_path / "no")}, 404,
                        "NotFoundError"),
            "file": ({"lora_name": "y", "lora_path": str(tmp_path / "file")}, 400,
                     "BadRequestError"),
            "rank": ({"lora_name": "y", "lora_path": big}, 400, "BadRequestError"),
            "empty": ({"lora_name": "", "lora_path": good}, 400, "InvalidUserInput"),
        }  # fmt: skip
        for case, (body, status, type_) in cases.items():
            got, _, err = await post(s, f"{sim.base_url}/load_lora_adapter", body)
            assert (got, err["error"]["type"], err["error"]["code"]) == (status, type_, status), (
                case
            )
        _, _, err = await post(s, f"{sim.base_url}/load_lora_adapter", cases["missing"][0])
        assert "No adapter found for" in err["error"]["message"]
        _, _, err = await post(s, f"{sim.base_url}/load_lora_adapter", cases["rank"][0])
        assert err["error"]["message"] == "LoRA rank 32 is greater than max_lora_rank 16."
        got, _, err = await post(s, f"{sim.base_url}/unload_lora_adapter", {"lora_name": "zz"})
        assert got == 404
        assert err["error"] == {
            "message": "The lora adapter 'zz' cannot be found.",
            "type": "NotFoundError",
            "param": None,
            "code": 404,
        }
        assert list(sim.adapters) == ["x"]


async def test_load_inplace_replaces_and_keeps_the_id(tmp_path: Path) -> None:
    """``load_inplace`` swaps the adapter's weights under the same name and lora_int_id."""
    a, b = write_fake_adapter(tmp_path / "a", seed=1), write_fake_adapter(tmp_path / "b", seed=2)
    async with serving() as (sim, s):
        await _load(s, sim.base_url, lora_name="x", lora_path=str(a))
        before = sim.adapters["x"]
        status, _ = await _load(s, sim.base_url, lora_name="x", lora_path=str(b), load_inplace=True)
        after = sim.adapters["x"]
    assert status == 200
    assert after.int_id == before.int_id and after.digest != before.digest


async def test_two_adapters_answer_differently_and_the_base_is_unchanged(tmp_path: Path) -> None:
    """Text and logprobs depend on the adapter named; the base model answers as before."""
    async with serving() as (sim, s):
        _, _, base_before = await post(s, f"{sim.base_url}/completions", LOGPROBS)
        for i in (1, 2):
            path = str(write_fake_adapter(tmp_path / f"a{i}", seed=i))
            await _load(s, sim.base_url, lora_name=f"a{i}", lora_path=path)
        answers = {}
        for model in ("sim-model", "a1", "a2"):
            _, _, body = await post(s, f"{sim.base_url}/completions", {**LOGPROBS, "model": model})
            choice = body["choices"][0]
            answers[model] = (choice["text"], tuple(choice["logprobs"]["token_logprobs"]))
            assert body["model"] == model
        _, _, again = await post(s, f"{sim.base_url}/completions", {**LOGPROBS, "model": "a1"})
    assert answers["sim-model"][0] == base_before["choices"][0]["text"]
    assert len(set(answers.values())) == 3
    assert again["choices"][0]["text"] == answers["a1"][0]  # deterministic per adapter


async def test_same_files_same_answers(tmp_path: Path) -> None:
    """Two directories with the same files answer alike: the content decides, not the name."""
    a = write_fake_adapter(tmp_path / "a", seed=5)
    b = write_fake_adapter(tmp_path / "b", seed=5)
    assert read_adapter("a", str(a), 16) == read_adapter("b", str(b), 16)


async def test_unknown_model_is_404_only_when_strict(tmp_path: Path) -> None:
    """With strict_models an unknown name is vLLM's 404 (param model); without, served as today."""
    async with serving(SimConfig(strict_models=True)) as (sim, s):
        status, _, err = await post(s, f"{sim.base_url}/completions", {**COMPLETION, "model": "v9"})
        ok, _, _ = await post(s, f"{sim.base_url}/completions", COMPLETION)
    assert (status, ok) == (404, 200)
    assert err["error"] == {
        "message": "The model `v9` does not exist.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }
    async with serving() as (sim, s):
        status, _, _ = await post(s, f"{sim.base_url}/completions", {**COMPLETION, "model": "v9"})
    assert status == 200


async def test_without_runtime_lora_the_routes_are_missing(tmp_path: Path) -> None:
    """runtime_lora=False answers the routes as FastAPI answers a route that is not there."""
    path = str(write_fake_adapter(tmp_path / "a"))
    async with serving(SimConfig(runtime_lora=False, api_key="k")) as (sim, s):
        auth = {"Authorization": "Bearer k"}
        status, _, body = await post(
            s, f"{sim.base_url}/load_lora_adapter", {"lora_name": "a", "lora_path": path}, auth
        )
        unauthorized, _, _ = await post(
            s, f"{sim.base_url}/unload_lora_adapter", {"lora_name": "a"}
        )
    assert (status, body, unauthorized) == (404, {"detail": "Not Found"}, 401)


def _safetensors(tmp: Path, header: Any, data: bytes) -> Path:
    d = write_fake_adapter(tmp)
    raw = orjson.dumps(header)
    (d / "adapter_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return d


@pytest.mark.parametrize(
    "header, data",
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8),
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
        ({"w": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
        ({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8),
        ({"__metadata__": {}}, b""),
        ([1, 2], b""),
    ],
    ids=["shape-short", "data-short", "dtype", "shape-type", "no-tensors", "not-object"],
)
def test_weights_are_validated_not_trusted(tmp_path: Path, header: Any, data: bytes) -> None:
    """A weights file that is not well-formed safetensors is a 400, read without obeying it."""
    d = _safetensors(tmp_path / "a", header, data)
    with pytest.raises(AdapterRejected) as info:
        read_adapter("a", str(d), 16)
    assert info.value.status == 400


def test_pickle_and_bad_config_are_refused(tmp_path: Path) -> None:
    """adapter_model.bin is never unpickled; a config without a positive ``r`` is refused."""
    d = write_fake_adapter(tmp_path / "a")
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    with pytest.raises(AdapterRejected, match="pickled"):
        read_adapter("a", str(d), 16)
    d = write_fake_adapter(tmp_path / "b")
    (d / "adapter_config.json").write_text('{"r": 0}')
    with pytest.raises(AdapterRejected, match="positive integer 'r'"):
        read_adapter("b", str(d), 16)
    (d / "adapter_config.json").write_bytes(b" " * (1 << 17))
    with pytest.raises(AdapterRejected, match="larger than"):
        read_adapter("b", str(d), 16)


def test_the_fake_adapter_is_real_safetensors(tmp_path: Path) -> None:
    """write_fake_adapter's file is read back by the safetensors library, tensor for tensor."""
    st = pytest.importorskip("safetensors.numpy")
    d = write_fake_adapter(tmp_path / "a", rank=4, width=8)
    tensors = st.load_file(str(d / "adapter_model.safetensors"))
    assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape == (4, 8)
    assert len(tensors) == 4


def test_a_real_peft_adapter_loads(tmp_path: Path) -> None:
    """An adapter saved by peft (a tiny random Llama) passes the simulated server's checks."""
    pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    with warnings.catch_warnings():
        # peft 0.21 reads transformers 5's deprecated is_gradient_checkpointing: not ours
        warnings.simplefilter("ignore", FutureWarning)
        peft.get_peft_model(model, lora).save_pretrained(tmp_path / "a")
    rank, digest = read_adapter("a", str(tmp_path / "a"), 16)
    assert rank == 4 and len(digest) == 16
