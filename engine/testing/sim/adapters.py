"""LoRA adapters of the simulated server, loaded and unloaded at runtime as vLLM does.

vLLM serves adapters this way when started with ``vllm serve BASE --enable-lora
--max-lora-rank R`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` in its environment:

- ``POST /v1/load_lora_adapter`` ``{"lora_name": ..., "lora_path": ...}`` answers 200 with the
  plain text ``Success: LoRA adapter 'NAME' added successfully.``; a name already loaded is a
  400 (``InvalidUserInput``) unless ``"load_inplace": true`` replaces it; a path with no
  adapter in it is a 404 (``NotFoundError``, "Loading lora NAME failed: No adapter found for
  PATH"); an adapter that does not load (rank above ``--max-lora-rank``, bad files) is a 400
  (``BadRequestError``).
- ``POST /v1/unload_lora_adapter`` ``{"lora_name": ...}`` answers 200 ``Success: LoRA adapter
  'NAME' removed successfully.``; an unknown name is a 404 (``NotFoundError``).
- ``GET /v1/models`` lists each loaded adapter after the base models, with ``root`` (its path)
  and ``parent`` (the base model).
- A generation request names an adapter as its ``model``; a name neither served nor loaded
  is a 404 with ``param: "model"`` ("The model `NAME` does not exist.").
- Without runtime updating the two routes do not exist: 404 ``{"detail": "Not Found"}``.

Every error body has vLLM's shape: ``{"error": {"message", "type", "param", "code"}}`` with
``code`` the HTTP status.

The simulated server reads what an adapter directory holds and never obeys it: at most
:data:`MAX_CONFIG_BYTES` of ``adapter_config.json`` (a JSON object with a positive integer
``r``), and ``adapter_model.safetensors`` checked against the safetensors layout (an 8-byte
little-endian header length, a JSON header of tensors whose ``data_offsets`` tile the data
exactly) and at most :data:`MAX_WEIGHTS_BYTES`; a pickled ``adapter_model.bin`` is refused.
The adapter's :attr:`SimAdapter.digest` (blake2b of both files) salts the fake model, so each
adapter answers with its own words and log-probabilities.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import orjson

__all__ = (
    "MAX_CONFIG_BYTES",
    "MAX_WEIGHTS_BYTES",
    "AdapterRejected",
    "SimAdapter",
    "read_adapter",
    "write_fake_adapter",
)

MAX_CONFIG_BYTES: Final = 1 << 16
"""The largest ``adapter_config.json`` the simulated server reads."""
MAX_WEIGHTS_BYTES: Final = 1 << 30
"""The largest ``adapter_model.safetensors`` the simulated server reads."""
_MAX_HEADER_BYTES: Final = 1 << 24
_CHUNK: Final = 1 << 20
_DTYPE_SIZES: Final = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class SimAdapter:
    """A LoRA adapter the simulated server has loaded.

    Attributes:
        name: the ``lora_name`` requests use as their ``model``.
        path: the ``lora_path`` it was loaded from, as sent.
        parent: the base model it serves on (the first of ``SimConfig.models``; None if none).
        rank: ``r`` of its ``adapter_config.json``.
        digest: blake2b of its config and weights; salts the fake model's answers.
        int_id: vLLM's ``lora_int_id``: 1, 2, ... in load order (kept by an in-place load).
        created: Unix time of the load, listed by ``/v1/models``.
    """

    name: str
    path: str
    parent: str | None
    rank: int
    digest: bytes
    int_id: int
    created: int

    @property
    def logprob_shift(self) -> int:
        """How far this adapter moves the fake model's log-probabilities (1..2999)."""
        return 1 + int.from_bytes(self.digest[:4], "little") % 2999


class AdapterRejected(Exception):
    """An adapter request vLLM would refuse: the HTTP status, vLLM's error type, the message."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_


def read_adapter(name: str, path: str, max_rank: int) -> tuple[int, bytes]:
    """Validate the adapter directory ``path``; its (rank, digest). Blocking file I/O.

    Raises:
        AdapterRejected: 404 when there is no adapter at ``path``; 400 when it does not load.
    """
    where = Path(path).expanduser()
    if not where.exists() or (where.is_dir() and not (where / "adapter_config.json").exists()):
        raise AdapterRejected(
            404, "NotFoundError", f"Loading lora {name} failed: No adapter found for {path}"
        )
    if not where.is_dir():
        raise _bad(name, f"{path} is not a directory")
    raw_config = _read_limited(where / "adapter_config.json", MAX_CONFIG_BYTES, name)
    rank = _config_rank(raw_config, name)
    if rank > max_rank:
        raise _bad(name, f"LoRA rank {rank} is greater than max_lora_rank {max_rank}.", bare=True)
    weights = where / "adapter_model.safetensors"
    if not weights.is_file():
        if (where / "adapter_model.bin").exists():
            raise _bad(name, "adapter_model.bin is pickled; the simulated server reads only "
                             "adapter_model.safetensors")  # fmt: skip
        raise _bad(name, f"no adapter_model.safetensors in {path}")
    h = hashlib.blake2b(raw_config, digest_size=16)
    h.update(b"\0")
    _hash_safetensors(weights, h, name)
    return rank, h.digest()


def _bad(name: str, why: str, *, bare: bool = False) -> AdapterRejected:
    return AdapterRejected(
        400, "BadRequestError", why if bare else f"Loading lora {name} failed: {why}"
    )


def _read_limited(file: Path, limit: int, name: str) -> bytes:
    with file.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _bad(name, f"{file.name} is larger than {limit} bytes")
    return data


def _config_rank(raw: bytes, name: str) -> int:
    """``r`` of an adapter config, which must be a JSON object of a LoRA adapter."""
    try:
        config: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _bad(name, "adapter_config.json is not valid JSON") from None
    if not isinstance(config, dict):
        raise _bad(name, "adapter_config.json must hold a JSON object")
    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise _bad(name, f"peft_type {peft_type!r} is not LORA")
    rank = config.get("r")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise _bad(name, f"adapter_config.json needs a positive integer 'r', got {rank!r}")
    return rank


def _hash_safetensors(file: Path, h: Any, name: str) -> None:
    """Check ``file`` has the safetensors layout and feed all of it to ``h``."""
    with file.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(0)
        if size > MAX_WEIGHTS_BYTES:
            raise _bad(name, f"{file.name} is larger than {MAX_WEIGHTS_BYTES} bytes")
        head = f.read(8)
        if len(head) < 8:
            raise _bad(name, f"{file.name} is too short to be safetensors")
        (n,) = struct.unpack("<Q", head)
        if n > min(_MAX_HEADER_BYTES, size - 8):
            raise _bad(name, f"{file.name} has a header of {n} bytes, past the file or the limit")
        header = f.read(n)
        _check_header(header, size - 8 - n, file.name, name)
        h.update(head)
        h.update(header)
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def _check_header(header: bytes, data_bytes: int, file: str, name: str) -> None:
    """The tensors of a safetensors header must lie end to end over exactly the data."""
    try:
        table: Any = orjson.loads(header)
    except orjson.JSONDecodeError:
        raise _bad(name, f"{file}: the header is not JSON") from None
    if not isinstance(table, dict):
        raise _bad(name, f"{file}: the header must be a JSON object")
    spans = []
    for key, entry in table.items():
        if key == "__metadata__":
            continue
        spans.append(_tensor_span(key, entry, file, name))
    if not spans:
        raise _bad(name, f"{file} holds no tensors")
    end = 0
    for start, stop in sorted(spans):
        if start != end:
            raise _bad(name, f"{file}: tensor data overlaps or leaves gaps")
        end = stop
    if end != data_bytes:
        raise _bad(name, f"{file}: the tensors cover {end} of {data_bytes} data bytes")


def _tensor_span(key: str, entry: Any, file: str, name: str) -> tuple[int, int]:
    ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPE_SIZES
    shape = entry.get("shape") if ok else None
    offsets = entry.get("data_offsets") if ok else None
    ok = (
        isinstance(shape, list)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    )
    if not ok:
        raise _bad(name, f"{file}: tensor {key!r} needs a dtype, a shape and two data_offsets")
    assert isinstance(entry, dict) and isinstance(shape, list) and isinstance(offsets, list)
    start, stop = offsets
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if not 0 <= start <= stop or stop - start != count * _DTYPE_SIZES[entry["dtype"]]:
        raise _bad(name, f"{file}: tensor {key!r} has data_offsets that do not fit its shape")
    return start, stop


def write_fake_adapter(
    directory: str | Path,
    *,
    rank: int = 8,
    seed: int = 0,
    base_model: str = "sim-model",
    target_modules: tuple[str, ...] = ("q_proj", "v_proj"),
    width: int = 16,
) -> Path:
    """Write a small PEFT-format LoRA adapter (``adapter_config.json`` and
    ``adapter_model.safetensors`` of float32 ``lora_A``/``lora_B`` per target module, drawn
    from ``seed``) that the simulated server loads; returns the directory.

    Written by hand in the safetensors layout, so no extra package is needed.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(target_modules),
    }
    (out / "adapter_config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module in target_modules:
        prefix = f"base_model.model.model.layers.0.self_attn.{module}"
        tensors[f"{prefix}.lora_A.weight"] = rng.standard_normal((rank, width), np.float32)
        tensors[f"{prefix}.lora_B.weight"] = rng.standard_normal((width, rank), np.float32)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for key in sorted(tensors):
        blob = np.ascontiguousarray(tensors[key], dtype="<f4").tobytes()
        header[key] = {
            "dtype": "F32",
            "shape": list(tensors[key].shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = orjson.dumps(header)
    head += b" " * (-len(head) % 8)  # the format pads the header to 8 bytes
    (out / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(head)) + head + b"".join(blobs)
    )
    return out
