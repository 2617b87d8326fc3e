"""The embedded policy: a small causal numpy LM, trained by token-level GRPO with exact gradients.

Model (a fixed-window neural LM in the style of Bengio et al. 2003). The next token after
position t is predicted from the ``C = tinylm.context`` tokens before it (left-padded with
``<pad>``)::

    x      = concat(embed[tok[t-C+1]], ..., embed[tok[t]])      # (C*E,)
    h      = tanh(x @ W1 + b1)                                  # (H,)
    logits = h @ W2 + b2                                        # (V_out,)
    p      = softmax(logits / temperature)

The input vocabulary is the task tokenizer's (digits and ``<eos> <sep> <bos> <pad>``); the
output layer covers the completion vocabulary only (digits and ``<eos>``). A sequence is
``<bos> d1 .. dL <sep> c1 .. cK <eos>``: the model conditions on the prompt and on the
completion so far, at most ``L + 1`` completion tokens are generated.

Loss: token-level GRPO (:mod:`engine.policies.objective`, which states the formulas, the
aggregations and how they depart from the papers), one action per completion token. All
log-probabilities are of the *sampling* distribution ``softmax(logits / temperature)``, the
same one :meth:`TinyLM.generate` reports, so ``ratio == 1`` exactly when the parameters have
not moved. The entropy is the exact entropy of the full next-token distribution (not a
one-sample estimate) and is differentiated exactly. The reference policy is a frozen copy of
the initial parameters; ``T_max = prompt_len + 1``, the generation cap, is the ``dr_grpo``
normalizer.

Multi-turn episodes (:class:`~engine.policies.base.TurnPolicy`, ``tinylm.vocab =
"calculator"`` for the calculator tool task, :mod:`engine.policies.toolvocab`): an episode is
trained as ONE sequence with a mask. Every token of ``Sample.token_ids`` is context (it fills
the windows of the tokens after it); only those with ``Sample.loss_mask`` 1, the policy's own,
are actions: the environment's tokens (mask 0, logprobs NaN) take no part in the loss, its
gradient, the metrics or the token counts of the aggregation. Without a mask every completion
token is an action, exactly as before.

Gradients are computed by hand (backpropagation through the two layers and the embedding
gather), in float64, over all tokens of all rollouts in one batched pass; they are checked
against finite differences in ``tests/policies/test_tinylm.py``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import anyio.to_thread
import numpy as np

from ..config.sections import GRPOConfig, TinyLMConfig
from ..data.tasks import TaskTokenizer
from ..errors import CheckpointError
from ..types import Example, Rollout, Sample, Usage
from .arrays import ArrayPolicy
from .base import PolicySnapshot
from .objective import GRPOTerms, grpo_objective, sequence_weights
from .toolvocab import ToolTokenizer

__all__ = ("CALCULATOR_TURN_TOKENS", "TinyLM")

_PARAM_NAMES = ("embed", "W1", "b1", "W2", "b2")
# Config fields that fix the architecture or the meaning of token ids; a checkpoint must match.
_ARCH_FIELDS = ("task", "prompt_len", "vocab_digits", "context", "embed_dim", "hidden")
_STATE_FORMAT = 1
CALCULATOR_TURN_TOKENS = 16
"""A turn's token cap (``max_new_tokens``) with ``tinylm.vocab = "calculator"``."""


def _log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (M, V)."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _loss_mask(r: Rollout) -> np.ndarray:
    """(T,) bool: the trained tokens of a rollout (all of them without a ``loss_mask``).

    Raises:
        ValueError: a mask of another length than ``token_ids``, or one with no token in it.
    """
    s = r.sample
    n = len(s.token_ids) if s.token_ids is not None else 0
    if s.loss_mask is None:
        return np.ones(n, dtype=bool)
    mask = np.asarray(s.loss_mask).astype(bool)
    if mask.shape != (n,):
        raise ValueError(f"rollout {r.group_id}/{r.index}: loss_mask/token_ids lengths")
    if not mask.any():
        raise ValueError(f"rollout {r.group_id}/{r.index}: loss_mask trains no token")
    return mask


def _forward(
    params: Mapping[str, np.ndarray], windows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits for a batch of context windows.

    Args:
        params: the model arrays.
        windows: (M, C) int token ids, oldest first.

    Returns:
        x (M, C*E), h (M, H), logits (M, V_out), kept for the backward pass.
    """
    m = windows.shape[0]
    x = params["embed"][windows].reshape(m, -1)  # (M, C*E)
    h = np.tanh(x @ params["W1"] + params["b1"])  # (M, H)
    logits = h @ params["W2"] + params["b2"]  # (M, V_out)
    return x, h, logits


@dataclass(frozen=True, slots=True)
class _Forward:
    """The forward pass over M tokens that the backward pass reuses.

    Attributes:
        x: (M, C*E) the concatenated window embeddings.
        h: (M, H) the hidden activations.
        logp_all: (M, V) log-probabilities of every output token.
        p_all: (M, V) their probabilities.
        new_lp: (M,) log-probability of each sampled token.
        ref_lp: (M,) the same under the reference parameters.
        entropy: (M,) entropy of each next-token distribution.
    """

    x: np.ndarray
    h: np.ndarray
    logp_all: np.ndarray
    p_all: np.ndarray
    new_lp: np.ndarray
    ref_lp: np.ndarray
    entropy: np.ndarray


class TinyLM(ArrayPolicy):
    """A small causal LM over the built-in task's tokens, trained by token-level GRPO.

    Example::

        policy = TinyLM(TinyLMConfig(), seed=0)
        snap = policy.snapshot(version=0)
        samples = await policy.generate(snap, example, n=8, rng=np.random.default_rng(0))
        policy.configure_optimizer(OptimConfig())
        metrics = policy.update(rollouts, advantages, grpo=GRPOConfig(), lr=0.01)

    See the module docstring for the model and the exact loss. The window must reach back to
    the first prompt digit while the last answer digit is predicted, so the tasks are solvable
    only with ``context >= 2 * prompt_len`` (the defaults: 8 and 4). Every matrix here is
    small, so a multi-threaded BLAS only adds thread hand-offs (:mod:`engine._blas`).

    Attributes:
        tinylm: the model's configuration.
        tokenizer: the task tokenizer (input and output vocabularies).
        max_new_tokens: the generation cap, ``prompt_len`` answer digits plus ``<eos>`` (a
            turn's, :data:`CALCULATOR_TURN_TOKENS`, with the calculator vocabulary); the
            ``dr_grpo`` normalizer.
        params: the live parameters ``embed`` (V_in, E), ``W1`` (C*E, H), ``b1`` (H,),
            ``W2`` (H, V_out) and ``b2`` (V_out,).
    """

    name = "tinylm"
    embedded = True

    def __init__(self, tinylm: TinyLMConfig, *, seed: int) -> None:
        self.tinylm = tinylm
        calculator = tinylm.vocab == "calculator"
        self.tokenizer: TaskTokenizer | ToolTokenizer = (
            ToolTokenizer() if calculator else TaskTokenizer(tinylm.vocab_digits)
        )
        self.max_new_tokens = CALCULATOR_TURN_TOKENS if calculator else tinylm.prompt_len + 1
        rng = np.random.default_rng(seed)
        v_in, v_out = self.tokenizer.vocab_size, self.tokenizer.num_outputs
        c, e, hid, s = tinylm.context, tinylm.embed_dim, tinylm.hidden, tinylm.init_scale
        self.params: dict[str, np.ndarray] = {
            "embed": rng.normal(0.0, s, size=(v_in, e)),
            "W1": rng.normal(0.0, s, size=(c * e, hid)),
            "b1": np.zeros(hid),
            "W2": np.zeros((hid, v_out)),
            "b2": np.zeros(v_out),
        }
        self._ref = self._frozen(self.params)
        """The KL reference: the initial parameters."""

    # ------------------------------------------------------------------ parameters and state

    @staticmethod
    def _frozen(params: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        out = {}
        for k, v in params.items():
            a = np.array(v, dtype=np.float64, copy=True)
            a.setflags(write=False)
            out[k] = a
        return MappingProxyType(out)

    def parameters(self) -> dict[str, np.ndarray]:
        """The live float64 arrays (``embed``, ``W1``, ``b1``, ``W2``, ``b2``), updated in place."""
        return self.params

    def snapshot(self, version: int) -> PolicySnapshot:
        """Read-only copies of the current parameters, labelled ``version``."""
        return PolicySnapshot(version=version, params=self._frozen(self.params))

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``params/<name>`` and ``ref/<name>``; meta with the config and the vocabulary."""
        arrays = {f"params/{k}": v.copy() for k, v in self.params.items()}
        arrays.update({f"ref/{k}": np.array(v) for k, v in self._ref.items()})
        meta = {
            "policy": self.name,
            "format": _STATE_FORMAT,
            "config": dataclasses.asdict(self.tinylm),
            "vocab": self.tokenizer.vocab(),
        }
        return arrays, meta

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore parameters and reference from :meth:`state` output, in place.

        Raises:
            CheckpointError: another policy or format, a different architecture or task
                (``task``, ``prompt_len``, ``vocab_digits``, ``context``, ``embed_dim``,
                ``hidden``), another vocabulary, or missing / misshapen / non-finite arrays.
        """
        if meta.get("policy") != self.name:
            raise CheckpointError(f"checkpoint is for policy {meta.get('policy')!r}, not tinylm")
        if meta.get("format") != _STATE_FORMAT:
            raise CheckpointError(f"unsupported tinylm state format {meta.get('format')!r}")
        saved = meta.get("config")
        if not isinstance(saved, Mapping):
            raise CheckpointError("checkpoint meta has no tinylm config")
        for f in _ARCH_FIELDS:
            mine = getattr(self.tinylm, f)
            if saved.get(f) != mine:
                raise CheckpointError(
                    f"checkpoint has tinylm.{f}={saved.get(f)!r}, this policy has {mine!r}"
                )
        if list(meta.get("vocab", [])) != self.tokenizer.vocab():
            raise CheckpointError("checkpoint vocabulary differs from this policy's")
        new: dict[str, np.ndarray] = {}
        for prefix in ("params", "ref"):
            for k, v in self.params.items():
                key = f"{prefix}/{k}"
                if key not in arrays:
                    raise CheckpointError(f"checkpoint lacks array {key!r}")
                a = np.asarray(arrays[key], dtype=np.float64)
                if a.shape != v.shape:
                    raise CheckpointError(f"array {key!r} has shape {a.shape}, expected {v.shape}")
                if not np.all(np.isfinite(a)):
                    raise CheckpointError(f"array {key!r} holds non-finite values")
                new[key] = a
        for k, v in self.params.items():
            v[...] = new[f"params/{k}"]  # in place: the optimizer keeps its references
        self._ref = self._frozen({k: new[f"ref/{k}"] for k in self.params})

    # ------------------------------------------------------------------------ generation

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        """Sample ``n`` completions of ``example`` from ``snapshot`` at ``tinylm.temperature``.

        The numpy work runs in a worker thread. ``logprobs`` are those of the sampled tokens
        under ``softmax(logits / temperature)`` (also when ``greedy``, which takes the argmax).
        A prompt the task tokenizer cannot encode gives ``n`` samples carrying ``error``.
        """
        try:
            prompt_ids = self.tokenizer.encode_prompt(example.text)
        except ValueError as exc:
            return [Sample(text="", prompt=example.text, error=str(exc)) for _ in range(n)]
        start = time.perf_counter()
        tokens, logprobs, lengths, stopped = await anyio.to_thread.run_sync(
            self._generate_sync, snapshot.params, prompt_ids, n, rng, greedy
        )
        latency = time.perf_counter() - start
        out: list[Sample] = []
        for i in range(n):
            ids = tokens[i, : lengths[i]].copy()
            out.append(
                Sample(
                    text=self.tokenizer.decode(ids),
                    prompt=example.text,
                    token_ids=ids,
                    logprobs=logprobs[i, : lengths[i]].copy(),
                    prompt_ids=prompt_ids.copy(),
                    finish_reason="stop" if stopped[i] else "length",
                    usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=int(lengths[i])),
                    latency=latency,
                )
            )
        return out

    def _generate_sync(
        self,
        params: Mapping[str, np.ndarray],
        prompt_ids: np.ndarray,
        n: int,
        rng: np.random.Generator,
        greedy: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vectorized sampling of n sequences; returns tokens, logprobs (n, T), lengths, stopped."""
        c, p = self.tinylm.context, len(prompt_ids)
        t_max = p - 2 + 1  # as many answer digits as prompt digits, plus <eos>
        if isinstance(self.tokenizer, ToolTokenizer):  # text prompts: a turn's cap
            t_max = self.max_new_tokens
        eos, pad = self.tokenizer.eos, self.tokenizer.pad
        rows = np.full((n, c + p + t_max), pad, dtype=np.int64)  # (n, C + P + T)
        rows[:, c : c + p] = prompt_ids
        tokens = np.full((n, t_max), pad, dtype=np.int64)  # (n, T)
        logprobs = np.zeros((n, t_max))  # (n, T)
        lengths = np.zeros(n, dtype=np.int64)
        alive = np.ones(n, dtype=bool)
        for t in range(t_max):
            idx = np.flatnonzero(alive)
            if idx.size == 0:
                break
            windows = rows[idx, p + t : p + t + c]  # (m, C): the C tokens before position t
            _, _, logits = _forward(params, windows)
            logp = _log_softmax(logits / self.tinylm.temperature)  # (m, V_out)
            if greedy:
                tok = logp.argmax(axis=-1)
            else:
                cdf = np.cumsum(np.exp(logp), axis=-1)  # (m, V_out)
                u = rng.random(idx.size)[:, None] * cdf[:, -1:]
                tok = np.minimum((cdf <= u).sum(axis=-1), logp.shape[1] - 1)
            rows[idx, c + p + t] = tok
            tokens[idx, t] = tok
            logprobs[idx, t] = logp[np.arange(idx.size), tok]
            lengths[idx] += 1
            alive[idx[tok == eos]] = False
        stopped = ~alive
        return tokens, logprobs, lengths, stopped

    # ------------------------------------------------------------------ turns (TurnPolicy)

    def prompt_ids(self, example: Example) -> np.ndarray:
        """``<bos> prompt <sep>`` in the policy's vocabulary (:meth:`TurnPolicy.prompt_ids`).

        Raises:
            ValueError: the task vocabulary cannot encode the prompt.
        """
        return self.tokenizer.encode_prompt(example.text)

    def encode(self, text: str) -> np.ndarray:
        """Environment text as ids: with ``tinylm.vocab = "calculator"`` any text (unknown
        characters are ``<unk>``); the task vocabulary encodes digits only.

        Raises:
            ValueError: the task vocabulary cannot encode ``text``.
        """
        if isinstance(self.tokenizer, ToolTokenizer):
            return self.tokenizer.encode(text)
        return self.tokenizer.encode_completion(text)[:-1]  # digits, no <eos>

    async def generate_turn(
        self,
        snapshot: PolicySnapshot,
        context_ids: np.ndarray,
        rng: np.random.Generator,
        *,
        stop: Sequence[str],
        max_tokens: int,
        greedy: bool = False,
    ) -> Sample:
        """The next turn after ``context_ids`` (:meth:`TurnPolicy.generate_turn`): sampled at
        ``tinylm.temperature`` from the last ``tinylm.context`` tokens, as in training, until
        ``<eos>``, a stop string in the turn's text, or ``max_tokens``; in a worker thread."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        context = np.asarray(context_ids, dtype=np.int64)
        start = time.perf_counter()
        tokens, logprobs, finish = await anyio.to_thread.run_sync(
            self._turn_sync, snapshot.params, context, rng, tuple(stop), max_tokens, greedy
        )
        text = self.tokenizer.decode(tokens)
        return Sample(
            text=text,
            token_ids=tokens,
            logprobs=logprobs,
            prompt_ids=context.copy(),
            finish_reason=finish,
            usage=Usage(prompt_tokens=len(context), completion_tokens=len(tokens)),
            latency=time.perf_counter() - start,
        )

    def _turn_sync(
        self,
        params: Mapping[str, np.ndarray],
        context: np.ndarray,
        rng: np.random.Generator,
        stop: tuple[str, ...],
        max_tokens: int,
        greedy: bool,
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """One sequence's turn; tokens (T,), logprobs (T,) and the finish reason."""
        c = self.tinylm.context
        row = [self.tokenizer.pad] * c + [int(t) for t in context]
        tokens: list[int] = []
        logprobs: list[float] = []
        decode: Callable[[Sequence[int]], str] = self.tokenizer.decode
        for _ in range(max_tokens):
            window = np.array([row[-c:]], dtype=np.int64)  # (1, C)
            logp = _log_softmax(_forward(params, window)[2] / self.tinylm.temperature)[0]
            if greedy:
                tok = int(logp.argmax())
            else:
                cdf = np.cumsum(np.exp(logp))
                tok = min(int((cdf <= rng.random() * cdf[-1]).sum()), logp.size - 1)
            row.append(tok)
            tokens.append(tok)
            logprobs.append(float(logp[tok]))
            if tok == self.tokenizer.eos:
                return np.array(tokens, dtype=np.int64), np.array(logprobs), "stop"
            if stop and any(s in decode(tokens) for s in stop):
                return np.array(tokens, dtype=np.int64), np.array(logprobs), "stop"
        return np.array(tokens, dtype=np.int64), np.array(logprobs), "length"

    # ---------------------------------------------------------------------------- loss

    def _token_batch(
        self, rollouts: Sequence[Rollout]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flatten the trained completion tokens of ``rollouts`` (M in total): all of them, or
        where a sample has a ``loss_mask``, the masked-in ones (the others stay in the
        windows as context).

        Returns windows (M, C), actions (M,), old logprobs (M,), the rollout index of each
        token (M,) and the trained token count of each rollout (N,).
        """
        c, pad = self.tinylm.context, self.tokenizer.pad
        n = len(rollouts)
        prompts, comps, olds = [], [], []
        for r in rollouts:
            s = r.sample
            if s.token_ids is None or s.logprobs is None or s.prompt_ids is None:
                raise ValueError(f"rollout {r.group_id}/{r.index} lacks token ids or logprobs")
            if len(s.logprobs) != len(s.token_ids):
                raise ValueError(f"rollout {r.group_id}/{r.index}: logprobs/token_ids lengths")
            prompts.append(np.asarray(s.prompt_ids, dtype=np.int64))
            comps.append(np.asarray(s.token_ids, dtype=np.int64))
            olds.append(np.asarray(s.logprobs, dtype=np.float64))
        p_len = np.array([len(p) for p in prompts], dtype=np.int64)  # (N,)
        t_len = np.array([len(x) for x in comps], dtype=np.int64)  # (N,)
        rows = np.full((n, c + int(p_len.max()) + int(t_len.max())), pad, dtype=np.int64)
        for i in range(n):
            rows[i, c : c + p_len[i]] = prompts[i]
            rows[i, c + p_len[i] : c + p_len[i] + t_len[i]] = comps[i]
        seq = np.repeat(np.arange(n), t_len)  # (M,) rollout of each token
        pos = np.arange(int(t_len.sum())) - np.repeat(np.cumsum(t_len) - t_len, t_len)  # (M,)
        start = p_len[seq] + pos  # window of completion token t starts at P + t (after C pads)
        windows = rows[seq[:, None], start[:, None] + np.arange(c)]  # (M, C)
        actions = np.concatenate(comps)  # (M,)
        old_lp = np.concatenate(olds)  # (M,)
        if all(r.sample.loss_mask is None for r in rollouts):
            return windows, actions, old_lp, seq, t_len
        # Multi-turn episodes: every token is context (in the windows), only the policy's own
        # tokens are actions; the environment's (mask 0) leave the batch here.
        keep = np.concatenate([_loss_mask(r) for r in rollouts])  # (M,)
        counts = np.array([int(_loss_mask(r).sum()) for r in rollouts], dtype=np.int64)  # (N,)
        return windows[keep], actions[keep], old_lp[keep], seq[keep], counts

    def loss_and_grad(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, grpo: GRPOConfig
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Token-level GRPO loss (:mod:`engine.policies.objective`) and its exact gradient.

        Args:
            rollouts: N rollouts with ``token_ids``, ``prompt_ids`` and behaviour ``logprobs``.
            advantages: (N,) one advantage per rollout, applied to each of its tokens.
            grpo: epsilon, epsilon_high, beta, entropy_coef and loss_type are used.

        Returns:
            metrics: those of :meth:`GRPOTerms.metrics` (``loss``, ``policy_loss``, ``kl``,
            ``entropy``, ``clip_ratio`` and its ``/low`` and ``/high`` parts, ``approx_kl``,
            ``ratio_mean``, ``tokens``); grads: same keys and shapes as the parameters.
        """
        n = len(rollouts)
        adv_seq = np.asarray(advantages, dtype=np.float64).reshape(-1)  # (N,)
        if adv_seq.shape != (n,):
            raise ValueError(f"{adv_seq.shape[0]} advantages for {n} rollouts")
        if n == 0:
            raise ValueError("loss_and_grad needs at least one rollout")
        windows, actions, old_lp, seq, t_len = self._token_batch(rollouts)
        fwd = self._loss_forward(windows, actions)
        weights = sequence_weights(t_len, grpo.loss_type, max_tokens=self.max_new_tokens)
        terms = grpo_objective(
            fwd.new_lp, old_lp, fwd.ref_lp, adv_seq[seq], weights[seq], grpo, entropy=fwd.entropy
        )
        grads = self._backward(fwd, windows, actions, terms)
        metrics = terms.metrics()
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite GRPO metrics: {metrics}")
        return metrics, grads

    def _loss_forward(self, windows: np.ndarray, actions: np.ndarray) -> _Forward:
        """The new policy's activations and log-probabilities of ``actions``, and the frozen
        reference's."""
        rows = np.arange(actions.size)
        tau = self.tinylm.temperature
        x, h, logits = _forward(self.params, windows)  # (M, C*E), (M, H), (M, V)
        logp_all = _log_softmax(logits / tau)  # (M, V)
        p_all = np.exp(logp_all)  # (M, V)
        ref_lp = _log_softmax(_forward(self._ref, windows)[2] / tau)[rows, actions]  # (M,)
        return _Forward(
            x=x,
            h=h,
            logp_all=logp_all,
            p_all=p_all,
            new_lp=logp_all[rows, actions],
            ref_lp=ref_lp,
            entropy=-(p_all * logp_all).sum(axis=-1),
        )

    def _backward(
        self, fwd: _Forward, windows: np.ndarray, actions: np.ndarray, terms: GRPOTerms
    ) -> dict[str, np.ndarray]:
        """The gradient of the loss for each parameter, from ``d loss / d logp`` and
        ``d loss / d H`` of each token, through z = logits / tau, the two layers and the
        embedding gather. ``d logp[a] / dz = onehot(a) - p``; ``d H / dz = -p * (logp + H)``."""
        params, m = self.params, actions.size
        g_lp = terms.dloss_t_dlogp  # (M,) before the aggregation weights
        dz = -g_lp[:, None] * fwd.p_all  # (M, V)
        dz[np.arange(m), actions] += g_lp
        dz += terms.entropy_coef * fwd.p_all * (fwd.logp_all + fwd.entropy[:, None])
        dlogits = dz * (terms.weights / self.tinylm.temperature)[:, None]  # (M, V)
        grads = {
            "W2": fwd.h.T @ dlogits,  # (H, V)
            "b2": dlogits.sum(axis=0),  # (V,)
        }
        dpre = (dlogits @ params["W2"].T) * (1.0 - fwd.h * fwd.h)  # (M, H)
        grads["W1"] = fwd.x.T @ dpre  # (C*E, H)
        grads["b1"] = dpre.sum(axis=0)  # (H,)
        dx = (dpre @ params["W1"].T).reshape(m * self.tinylm.context, -1)  # (M*C, E)
        d_embed = np.zeros_like(params["embed"])  # (V_in, E)
        np.add.at(d_embed, windows.reshape(-1), dx)
        grads["embed"] = d_embed
        return {k: grads[k] for k in _PARAM_NAMES}
