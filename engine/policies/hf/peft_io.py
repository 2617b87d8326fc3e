"""The hf policy's LoRA adapter as a PEFT directory: ``adapter_config.json`` and
``adapter_model.safetensors``, the two files ``peft.PeftModel.from_pretrained(base, dir)`` and
vLLM's ``--lora-modules name=dir`` (or ``POST /v1/load_lora_adapter``) read.

Writing goes through peft's own ``save_pretrained`` on the live model (the trained adapter
only, not the policy's generation slot), so the files are exactly peft's. Reading does not
trust them: the config is parsed as JSON data and checked against the policy's ``[hf]``
section (a LoRA adapter of the same rank, alpha and target modules), and every tensor's name
and shape against the adapter its config describes and against the policy's parameters, so an
adapter whose config names other modules or another rank than its weights is a
:class:`~engine.errors.CheckpointError` naming the file and what differs. Which base model the
adapter belongs to is not in these files (peft records only a name); the engine's ``meta.json``
beside them holds its fingerprint, checked by :meth:`HFPolicy.load_state
<engine.policies.hf.policy.HFPolicy.load_state>`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ...config.sections import HFConfig
from ...errors import CheckpointError

__all__ = ("ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "read_adapter", "write_adapter")

ADAPTER_CONFIG = "adapter_config.json"
"""peft's adapter config file name."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
"""peft's adapter weights file name."""

_LORA_KEYS = ("lora_A", "lora_B")


def write_adapter(model: Any, directory: Path, *, adapter: str, base_model: str) -> None:
    """peft's ``save_pretrained`` of ``model``'s adapter ``adapter`` into ``directory`` (the
    caller holds the policy's lock); ``base_model_name_or_path`` names ``base_model``."""
    config = model.peft_config[adapter]
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = base_model
    # the adapter never holds embedding weights; "auto" would look base_model up on the Hub
    model.save_pretrained(str(directory), selected_adapters=[adapter], save_embedding_layers=False)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no PEFT adapter config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable adapter config: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: the adapter config is not a JSON object")
    return data


def _check_config(data: Mapping[str, Any], hf: HFConfig, path: Path) -> tuple[int, set[str]]:
    """The adapter config's rank and target modules, checked against ``hf``."""
    if data.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: peft_type {data.get('peft_type')!r}, not 'LORA'")
    r, alpha, targets = data.get("r"), data.get("lora_alpha"), data.get("target_modules")
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise CheckpointError(f"{path}: bad LoRA rank r={r!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha):
        raise CheckpointError(f"{path}: bad lora_alpha {alpha!r}")
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise CheckpointError(f"{path}: target_modules must be a list of module names")
    for key in ("rank_pattern", "alpha_pattern"):
        if data.get(key):
            raise CheckpointError(f"{path}: per-module {key} is not supported")
    if data.get("use_dora") or data.get("use_rslora"):
        raise CheckpointError(f"{path}: DoRA / rsLoRA adapters are not supported")
    want = (hf.lora_rank, float(hf.lora_alpha), sorted(hf.target_modules))
    got = (r, float(alpha), sorted(targets))
    if got != want:
        raise CheckpointError(
            f"{path}: adapter r={got[0]} alpha={got[1]} target_modules={got[2]}, "
            f"but [hf] says r={want[0]} alpha={want[1]} target_modules={want[2]}"
        )
    return r, set(targets)


def _tensor(f: Any, key: str) -> np.ndarray:
    return f.get_tensor(key).to(torch.float32).numpy()


def _check_tensor(key: str, a: np.ndarray, r: int, targets: set[str], path: Path) -> str:
    """The policy parameter name of the safetensors entry ``key`` (peft's name with the
    adapter name ``default`` put back), checked against the config's rank and modules."""
    parts = key.split(".")
    if len(parts) < 4 or parts[-1] != "weight" or parts[-2] not in _LORA_KEYS:
        raise CheckpointError(f"{path}: {key!r} is not a LoRA weight")
    module = parts[-3]
    if module not in targets:
        raise CheckpointError(
            f"{path}: weight {key!r} adapts module {module!r}, which the adapter config's "
            f"target_modules {sorted(targets)} do not name"
        )
    rank = a.shape[0] if parts[-2] == "lora_A" else (a.shape[1] if a.ndim == 2 else -1)
    if a.ndim != 2 or rank != r:
        raise CheckpointError(
            f"{path}: weight {key!r} of shape {a.shape} is of rank {rank}, the adapter config "
            f"says r={r}"
        )
    if not np.all(np.isfinite(a)):
        raise CheckpointError(f"{path}: weight {key!r} holds non-finite values")
    return ".".join([*parts[:-1], "default", "weight"])


def read_adapter(
    directory: str | Path, hf: HFConfig, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
    """The adapter in the PEFT directory ``directory`` as ``params/<name>`` float32 arrays
    for :meth:`~engine.policies.hf.policy.HFPolicy.load_state`, where ``shapes`` are the
    policy's trained parameters.

    Raises:
        CheckpointError: a missing or malformed file, an adapter config that is not the
            ``[hf]`` section's LoRA, or weights that do not match it or the policy.
    """
    d = Path(directory)
    r, targets = _check_config(_read_config(d / ADAPTER_CONFIG), hf, d / ADAPTER_CONFIG)
    path = d / ADAPTER_WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: no PEFT adapter weights")
    out: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                a = _tensor(f, key)
                name = _check_tensor(key, a, r, targets, path)
                if name not in shapes:
                    raise CheckpointError(f"{path}: weight {key!r} is of no module of this model")
                if a.shape != tuple(shapes[name]):
                    raise CheckpointError(
                        f"{path}: weight {key!r} has shape {a.shape}, the model's is "
                        f"{tuple(shapes[name])}"
                    )
                out[f"params/{name}"] = a
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:  # a bad file
        raise CheckpointError(f"{path}: unreadable safetensors file: {exc}") from None
    missing = sorted(set(shapes) - {k[len("params/") :] for k in out})
    if missing:
        raise CheckpointError(
            f"{path}: lacks {len(missing)} weight(s) of the adapter, e.g. {missing[0]!r}"
        )
    return out
