"""Generators and inputs from a run's files: checkpoints, TOML configs, held-out splits.

:func:`load_generator` reads the specs ``python -m engine compare --a/--b`` take: a
checkpoint directory of a tinylm, prompt or hf policy (a run's checkpoint, or a model saved by
:meth:`~engine.training.finetune.FineTunedModel.save`), a run directory (its latest checkpoint),
either with ``#ref`` for the run's frozen initial policy, or a TOML config (a fixed prompt on
its endpoint, :func:`endpoint_generator`). Policies and clients come from the run's one
assembly point (:mod:`engine.training.assembly`); :func:`heldout_examples` gives the inputs
the trainer held out.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from ...config.loading import load_config
from ...config.sections import RunConfig
from ...data import datasets
from ...data.jsonl import read_jsonl
from ...data.sampler import as_source, split_source
from ...data.tasks import make_examples
from ...endpoints.client import Client
from ...errors import CheckpointError, ConfigError
from ...learning.checkpoint import latest_checkpoint, load_checkpoint, restoring
from ...policies.prompt import Candidate, PromptFormat, render_completion, render_messages
from ...training.assembly import build_components, make_client
from ...training.saved import resolve_saved_config
from ...types import Example
from .generation import EndpointGenerator, PolicyGenerator, Prompt

__all__ = ("POLICY_KINDS", "endpoint_generator", "heldout_examples", "load_generator")

POLICY_KINDS: Mapping[str, bool] = {"tinylm": False, "prompt": True, "hf": False}
"""Policies whose checkpoints :func:`load_generator` restores, and whether each samples on an
endpoint (and so needs a client)."""

_REFERENCE = "#ref"


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """A trainer checkpoint, read.

    Attributes:
        path: its directory.
        state: the policy's arrays, without their ``policy/`` prefix.
        meta: the policy's metadata (``meta["policy"]`` names the policy kind).
        step: the optimizer step it was written at.
        config: the run's config.
    """

    path: Path
    state: dict[str, np.ndarray]
    meta: Mapping[str, Any]
    step: int
    config: RunConfig


async def load_generator(
    spec: str | Path,
    *,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    trust_saved_config: bool = False,
) -> PolicyGenerator | EndpointGenerator:
    """A Generator from a spec string, as ``python -m engine compare --a/--b`` take it.

    * ``RUN_DIR`` or ``RUN_DIR/checkpoints/step-N``: the policy at that checkpoint (a run
      directory means its latest loadable checkpoint): tinylm, a prompt policy (sampling
      its candidates, on a client for the checkpoint config's endpoint), or an hf model
      (its ``hf.model`` loaded in-process, the checkpoint's adapter restored);
    * ``...#ref``: the same checkpoint's frozen reference, i.e. the run's initial policy;
    * ``FILE.toml``: a run config; a fixed prompt on its ``[endpoint]`` (see
      :func:`endpoint_generator`).

    A checkpoint's config is data: its endpoint (``provider``, ``base_url``, ``api_key_env``)
    and its ``module:function`` reward functions are used only when the user's ``config``
    file or ``overrides`` give them, or with ``trust_saved_config`` (printed on stderr first);
    see :func:`engine.training.saved.resolve_saved_config`. ``config`` and ``overrides`` apply
    over the checkpoint's config, not to a TOML spec (that is the user's own config).

    Generators on an endpoint hold a client: close them with ``await gen.aclose()``.

    Raises:
        ConfigError: the spec is none of these, the config is invalid, or the checkpoint
            names an endpoint or reward imports the user did not give (without trust).
        CheckpointError: the checkpoint is unreadable, or of a policy kind not known here.
    """
    text = str(spec)
    reference = text.endswith(_REFERENCE)
    path = Path(text[: -len(_REFERENCE)] if reference else text)
    if path.suffix == ".toml":
        if reference:
            raise ConfigError(f"{text}: '{_REFERENCE}' applies to checkpoints, not configs")
        config = await anyio.to_thread.run_sync(load_config, path)
        return endpoint_generator(config, name=text)
    read = functools.partial(
        _read_checkpoint, path, config=config, overrides=overrides, trust=trust_saved_config
    )
    checkpoint = await anyio.to_thread.run_sync(read)
    kind = checkpoint.meta.get("policy")
    if not isinstance(kind, str) or kind not in POLICY_KINDS:
        raise CheckpointError(f"{checkpoint.path}: checkpoint of unknown policy {kind!r}")
    client = make_client(checkpoint.config) if POLICY_KINDS[kind] else None
    try:
        return await anyio.to_thread.run_sync(
            _restored_generator, text, checkpoint, reference, client
        )
    except BaseException:
        if client is not None:
            await client.aclose()
        raise


def _checkpoint_dir(path: Path) -> Path:
    """``path`` when it is a checkpoint, else the latest loadable one of a run directory."""
    if (path / "meta.json").is_file():
        return path
    if (path / "checkpoints").is_dir():
        found = latest_checkpoint(path / "checkpoints")
        if found is None:
            raise CheckpointError(f"{path}: run directory has no loadable checkpoint")
        return found
    raise ConfigError(
        f"{path}: not a checkpoint directory (meta.json), a run directory (checkpoints/) "
        "or a .toml config"
    )


def _read_checkpoint(
    path: Path, *, config: str | Path | None, overrides: Sequence[str], trust: bool
) -> _Checkpoint:
    """Blocking: the checkpoint at ``path`` (or a run directory's latest one), its config
    under the user's ``config`` file and ``overrides``."""
    found = _checkpoint_dir(path)
    arrays, meta = load_checkpoint(found)
    config_data = meta.get("config")
    policy_meta = meta.get("policy")
    if not isinstance(config_data, Mapping) or not isinstance(policy_meta, Mapping):
        raise CheckpointError(f"{found}: checkpoint has no config or policy metadata")
    state = {k[len("policy/") :]: v for k, v in arrays.items() if k.startswith("policy/")}
    with restoring(found):
        step = int(meta.get("step", 0))
    return _Checkpoint(
        path=found,
        state=state,
        meta=policy_meta,
        step=step,
        config=resolve_saved_config(
            config_data, source=str(found), path=config, overrides=overrides, trust=trust
        ).config,
    )


def _reference_state(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state with the frozen reference (``ref/*``, the initial policy) as the parameters."""
    ref = {f"params/{k[len('ref/') :]}": v for k, v in state.items() if k.startswith("ref/")}
    return {**state, **ref}


def _restored_generator(
    spec: str, checkpoint: _Checkpoint, reference: bool, client: Client | None
) -> PolicyGenerator:
    """Blocking: the checkpoint's policy, built by the assembly and restored from its state.

    With ``reference`` the policy is the run's initial one, at step 0: its frozen ``ref/*``
    arrays, or where a checkpoint has none (the hf policy, whose reference is the base model
    with its adapter disabled) the policy as the assembly builds it for the run's seed, which
    is the run's initial one. An endpoint policy samples on ``client``, which the generator
    then owns.
    """
    config = checkpoint.config
    policy, _, _ = build_components(config, client=client)
    with restoring(checkpoint.path):  # a malformed meta.json: one CheckpointError
        if not reference:
            policy.load_state(checkpoint.state, checkpoint.meta)
        elif checkpoint.meta.get("policy") != "hf" or any(
            k.startswith("ref/") for k in checkpoint.state
        ):
            policy.load_state(_reference_state(checkpoint.state), checkpoint.meta)
    step = 0 if reference else checkpoint.step
    return PolicyGenerator(
        policy,
        policy.snapshot(step),
        name=f"{spec} (step {step})",
        run_config=config,
        on_close=client.aclose if client is not None else None,
    )


def endpoint_generator(config: RunConfig, *, name: str = "endpoint") -> EndpointGenerator:
    """A fixed prompt on ``config.endpoint``: the prompt policy's base prompt, never trained.

    The prompt is what :mod:`engine.policies.prompt` renders for its base candidate (the
    first ``prompt.instructions`` entry, zero-shot) in the endpoint's mode; with no
    instruction, the input text alone.
    """
    instruction = config.prompt.instructions[0] if config.prompt.instructions else ""
    return EndpointGenerator(
        make_client(config),
        instruction,
        name=name,
        run_config=config,
        render=_base_prompt(config, instruction) if instruction else None,
    )


def _base_prompt(config: RunConfig, instruction: str) -> Callable[[Example], Prompt]:
    """How the prompt policy renders ``instruction`` zero-shot in the endpoint's mode."""
    base = Candidate(0, instruction)
    if config.endpoint.mode == "chat":
        return lambda example: render_messages(base, example)
    fmt = PromptFormat()
    return lambda example: render_completion(base, example, fmt)


def heldout_examples(config: RunConfig, limit: int | None = None) -> list[Example]:
    """The held-out examples of a run config, as the trainer splits them (blocking: reads files).

    ``data.eval`` when set; else the ``eval_fraction`` split of ``data.train`` or of the
    built-in examples (tinylm: the task's; prompt policy: the ``sentiment`` dataset). Unlike
    the trainer's evaluation (``trainer.eval_size``), all of them are returned unless
    ``limit`` is given.
    """
    if config.data.eval:
        examples: Iterable[Example] = read_jsonl(config.data.eval)
    else:
        _, held = split_source(_training_source(config), config.data.eval_fraction, config.seed)
        examples = held()
    out = list(itertools.islice(examples, limit) if limit is not None else examples)
    if not out:
        raise ConfigError("the held-out split is empty", key="data.eval_fraction")
    return out


def _training_source(config: RunConfig) -> Callable[[], Iterable[Example]]:
    """The examples the trainer splits: ``data.train``, else the built-in ones.

    The built-in ones are the task's for tinylm and the ``sentiment`` dataset for the prompt
    policy, as :func:`engine.training.assembly.build_components` picks them.
    """
    if config.data.train:
        path = config.data.train
        return lambda: read_jsonl(path)
    if config.policy == "tinylm":
        return as_source(make_examples(config.tinylm, config.data.num_examples, config.seed))
    return as_source(datasets.load("sentiment"))
