"""The numpy policies' optimizer: Adam(W) with global gradient-norm clipping.

Pure numpy and deterministic: the same parameters, gradients and learning rates give bit-for-bit
the same result. Parameters are a flat ``dict[str, np.ndarray]`` owned by the policy and are
updated in place; moments are float64 whatever the parameters' float dtype. The learning rate
of each step comes from the learner's schedule (:func:`engine.learning.schedule.lr_at`).

Adam follows Kingma & Ba (2015), Algorithm 1, with bias-corrected moments::

    m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
    v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
    m_hat = m_t / (1 - beta1^t),   v_hat = v_t / (1 - beta2^t)
    theta_t = theta_{t-1} - lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * theta_{t-1})

The ``weight_decay`` term is AdamW's decoupled decay (Loshchilov & Hutter 2019): it is not
passed through the moments, and it is scaled by the scheduled ``lr`` as in ``torch.optim.AdamW``.
It applies to every parameter given to :meth:`Adam.step`. Before the moment updates, the
gradients are clipped to a global L2 norm of ``max_grad_norm`` (``clip_grad_norm``).

Example::

    opt = Adam(config.optim)
    for step in range(total_steps):
        stats = opt.step(params, grads(params), lr=lr_at(step, config.optim, total_steps))
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..config.sections import OptimConfig
from ..errors import CheckpointError

__all__ = ("Adam", "clip_grad_norm")


def _global_norm(arrays: Mapping[str, np.ndarray]) -> float:
    """sqrt of the sum of squares of all entries, summed in sorted-name order (deterministic)."""
    total = 0.0
    for name in sorted(arrays):
        a = np.asarray(arrays[name], dtype=np.float64).ravel()
        total += float(np.dot(a, a))
    return math.sqrt(total)


def clip_grad_norm(
    grads: Mapping[str, np.ndarray], max_norm: float | None
) -> tuple[dict[str, np.ndarray], float]:
    """Scale all gradients together so their global L2 norm is at most ``max_norm``.

    Returns a new dict and the global norm *before* clipping. When the norm exceeds
    ``max_norm`` every gradient is multiplied by ``max_norm / norm`` (new arrays), so the
    clipped global norm equals ``max_norm`` up to rounding; otherwise the dict holds the
    caller's arrays unchanged. The input arrays are never modified. ``max_norm=None`` disables
    clipping. A non-finite norm is returned as is, with the gradients unscaled.

    Raises:
        ValueError: ``max_norm`` is not None and not a positive finite number.
    """
    if max_norm is not None and not (max_norm > 0 and math.isfinite(max_norm)):
        raise ValueError(f"max_norm must be a positive finite number or None; got {max_norm!r}")
    norm = _global_norm(grads)
    if max_norm is None or not math.isfinite(norm) or norm <= max_norm:
        return dict(grads), norm
    coef = max_norm / norm
    return {name: g * coef for name, g in grads.items()}, norm


class Adam:
    """Adam / AdamW (decoupled weight decay), with global gradient-norm clipping.

    Example::

        opt = Adam(OptimConfig(lr=1e-3, weight_decay=0.01, max_grad_norm=1.0))
        stats = opt.step(params, grads, lr=1e-3)   # params updated in place
        stats["grad_norm"], stats["update_norm"]
        arrays, meta = opt.state()                 # m.<name>, v.<name> arrays + {"t": t}
        opt2 = Adam(optim)
        opt2.load_state(arrays, meta)              # continues exactly where opt left off

    The moments are created at the first step (or by :meth:`load_state`) with the names and
    shapes of the parameters; every later step must pass the same names and shapes.

    Attributes:
        optim: the hyperparameters; the learning rate comes with each :meth:`step`.
        t: optimizer steps taken (Kingma & Ba's t).
    """

    def __init__(self, optim: OptimConfig) -> None:
        if not (0.0 <= optim.beta1 < 1.0 and 0.0 <= optim.beta2 < 1.0):
            raise ValueError(
                f"Adam needs 0 <= beta1, beta2 < 1; got beta1={optim.beta1}, beta2={optim.beta2}"
            )
        self.optim = optim
        self.t: int = 0
        self._m: dict[str, np.ndarray] = {}
        """First moments, float64, by parameter name."""
        self._v: dict[str, np.ndarray] = {}
        """Second moments, float64, by parameter name."""
        self._from_checkpoint = False
        """The moments came from :meth:`load_state`: a mismatch is then a CheckpointError."""

    def step(
        self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray], lr: float
    ) -> dict[str, float]:
        """One update of ``params`` in place from ``grads`` at learning rate ``lr``.

        Returns:
            ``grad_norm``: global gradient norm before clipping; ``grad_norm_clipped``: after
            clipping; ``update_norm``: global norm of the parameter change (decay included).

        Raises:
            ValueError: ``grads`` and ``params`` differ in names or shapes, a parameter is not
                a float array, or ``lr`` is negative or not finite.
            CheckpointError: the parameters do not match moments loaded by :meth:`load_state`.
            FloatingPointError: the gradient norm is not finite; nothing is modified.
        """
        if not (lr >= 0.0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a finite number >= 0; got {lr!r}")
        self._check_params(params, grads)
        grads, grad_norm = clip_grad_norm(grads, self.optim.max_grad_norm)
        if not math.isfinite(grad_norm):
            bad = sorted(k for k, g in grads.items() if not np.isfinite(g).all())
            where = f"non-finite entries in {bad}" if bad else "overflow of the sum of squares"
            raise FloatingPointError(f"gradient norm is {grad_norm} ({where}); step skipped")
        if not self._m:
            self._m = {k: np.zeros(p.shape, dtype=np.float64) for k, p in params.items()}
            self._v = {k: np.zeros(p.shape, dtype=np.float64) for k, p in params.items()}

        self.t += 1
        o = self.optim
        beta1, beta2, eps, wd = o.beta1, o.beta2, o.eps, o.weight_decay
        bias1 = 1.0 - beta1**self.t  # bias corrections (Kingma & Ba, Algorithm 1)
        bias2 = 1.0 - beta2**self.t
        update_sq = 0.0
        for name in sorted(params):
            theta, g = params[name], np.asarray(grads[name], dtype=np.float64)
            m, v = self._m[name], self._v[name]
            m *= beta1
            m += (1.0 - beta1) * g  # m_t
            v *= beta2
            v += (1.0 - beta2) * (g * g)  # v_t
            m_hat = m / bias1
            v_hat = v / bias2
            delta = m_hat / (np.sqrt(v_hat) + eps)
            if wd:
                delta += wd * theta  # decoupled weight decay (AdamW)
            delta *= lr
            theta -= delta  # in place; casts to theta's dtype
            update_sq += float(np.dot(delta.ravel(), delta.ravel()))
        return {
            "grad_norm": grad_norm,
            "grad_norm_clipped": min(grad_norm, self.optim.max_grad_norm or math.inf),
            "update_norm": math.sqrt(update_sq),
        }

    def _check_params(
        self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]
    ) -> None:
        if params.keys() != grads.keys():
            missing = sorted(params.keys() - grads.keys())
            extra = sorted(grads.keys() - params.keys())
            raise ValueError(f"grads do not match params: missing {missing}, unexpected {extra}")
        for name, p in params.items():
            if not isinstance(p, np.ndarray) or not np.issubdtype(p.dtype, np.floating):
                raise ValueError(f"param {name!r} must be a float numpy array")
            if np.shape(grads[name]) != p.shape:
                raise ValueError(
                    f"grad {name!r} has shape {np.shape(grads[name])}, param has {p.shape}"
                )
        if self._m:
            shapes = {k: m.shape for k, m in self._m.items()}
            if shapes != {k: p.shape for k, p in params.items()}:
                error = CheckpointError if self._from_checkpoint else ValueError
                origin = "loaded from the checkpoint" if self._from_checkpoint else "in use"
                raise error(
                    f"parameters do not match the optimizer state {origin}: "
                    f"state has {_describe(shapes)}, params have "
                    f"{_describe({k: p.shape for k, p in params.items()})}"
                )

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """A copy of the state for checkpoints: arrays ``m.<name>``, ``v.<name>`` and ``{"t": t}``.

        Arrays are float64 numpy arrays (``np.savez`` ready, no pickle); meta is JSON-able.
        """
        arrays: dict[str, np.ndarray] = {}
        for name in sorted(self._m):
            arrays[f"m.{name}"] = self._m[name].copy()
            arrays[f"v.{name}"] = self._v[name].copy()
        return arrays, {"t": self.t}

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore :meth:`state` (copies the arrays); the next step continues bit-for-bit.

        Raises:
            CheckpointError: malformed names, ``m``/``v`` names or shapes that differ, a bad
                ``t``, or names and shapes that differ from this optimizer's current moments.
        """
        t = meta.get("t")
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise CheckpointError(f"optimizer state: 't' must be an int >= 0; got {t!r}")
        m: dict[str, np.ndarray] = {}
        v: dict[str, np.ndarray] = {}
        for key, a in arrays.items():
            kind, _, name = key.partition(".")
            if kind not in ("m", "v") or not name:
                raise CheckpointError(
                    f"optimizer state: unexpected array {key!r} (expected m.<name> or v.<name>)"
                )
            arr = np.array(a, dtype=np.float64)  # copy: never alias the caller's arrays
            if not np.isfinite(arr).all():
                raise CheckpointError(f"optimizer state: array {key!r} is not finite")
            (m if kind == "m" else v)[name] = arr
        m_shapes = {k: a.shape for k, a in m.items()}
        v_shapes = {k: a.shape for k, a in v.items()}
        if m_shapes != v_shapes:
            raise CheckpointError(
                "optimizer state: first and second moments differ: "
                f"m has {_describe(m_shapes)}, v has {_describe(v_shapes)}"
            )
        if (t == 0) != (not m):
            raise CheckpointError(f"optimizer state: t={t} with {len(m)} moment arrays")
        if self._m:
            current = {k: a.shape for k, a in self._m.items()}
            if current != m_shapes:
                raise CheckpointError(
                    "optimizer state does not match this optimizer's parameters: "
                    f"checkpoint has {_describe(m_shapes)}, optimizer has {_describe(current)}"
                )
        self._m, self._v, self.t = m, v, t
        self._from_checkpoint = bool(m)


def _describe(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return "{" + ", ".join(f"{k}: {shapes[k]}" for k in sorted(shapes)) + "}"
