"""Adam and AdamW. Twins: ``torch.optim.Adam``, ``torch.optim.AdamW``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .. import tree
from .._torch import foreach
from ..tree import flat as _flat
from ..typing import PyTree, Tensor
from . import _ops
from . import _steps as S
from .base import (
    EmptyState,
    GradientTransformation,
    ScalarOrSchedule,
    chain,
    check_count,
    check_shapes,
    check_specs,
    check_state,
    mark,
    zero_count,
)
from .transforms import (
    Mask,
    ScaleByScheduleState,
    _value,
    add_decayed_weights,
    resolve_mask,
    scale_by_learning_rate,
)

__all__ = ["ScaleByAdamState", "adam", "adamw", "scale_by_adam"]


class ScaleByAdamState(NamedTuple):
    count: Tensor
    mu: PyTree
    nu: PyTree


def _check_betas(name: str, betas: Sequence[Any]) -> tuple[ScalarOrSchedule, float]:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name}: betas must be a pair (beta1, beta2); got {betas!r}")
    b1 = betas[0] if callable(betas[0]) else S.check_number(name, "betas[0]", betas[0], low=0.0, high=1.0,
                                                            high_open=True)
    b2 = S.check_number(name, "betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
    return b1, b2


def _beta1(b1: ScalarOrSchedule, count: Tensor) -> Any:
    """beta1 at update ``count``: the float, or the schedule's value (a float64 0-d tensor)."""
    return b1(count) if callable(b1) else b1


def scale_by_adam(betas: Sequence[Any] = (0.9, 0.999), eps: float = 1e-8) -> GradientTransformation:
    """Adam's direction ``m_hat / (sqrt(v_hat) + eps)`` with ``torch.optim.Adam``'s numbers.

    ``beta1`` may be a schedule of the update count (e.g. ``one_cycle_momentum``): it is
    then read at each update, in the moment and in the bias correction ``1 - b1(n)**k``,
    which is what ``torch.optim.Adam`` computes when ``OneCycleLR(cycle_momentum=True)``
    rewrites its ``betas`` every step.

    With ``k = n + 1`` at update n: ``m = lerp(m, g, 1 - b1)``, ``v = b2 * v + (1 - b2) * g*g``,
    ``bc1 = 1 - b1**k``, ``bc2 = 1 - b2**k`` (float64), and the output is
    ``(m / bc1) / (sqrt(v) / sqrt(bc2) + eps)``, computed as
    ``m / (sqrt(v) + eps * sqrt(bc2)) * (sqrt(bc2) / bc1)`` (one pass fewer; equal to
    torch's order up to rounding).
    """
    name = "deepfn.optim.scale_by_adam"
    b1, b2 = _check_betas(name, betas)
    eps = S.check_number(name, "eps", eps, low=0.0)

    def init(params: PyTree) -> ScaleByAdamState:
        return ScaleByAdamState(zero_count(params), tree.zeros_like(params), tree.zeros_like(params))

    def update(updates: PyTree, state: ScaleByAdamState, params: PyTree = None, *, donate_state: bool = False):
        check_state(name, state, ScaleByAdamState)
        gs, spec = _flat.flatten(updates)
        mu, mu_spec = _flat.flatten(state.mu)
        nu, _ = _flat.flatten(state.nu)
        check_specs(name, "updates", spec, mu_spec, updates, state.mu, "the moments")
        check_shapes(name, "updates", gs, mu, state.mu, "the moments")
        fe = _ops.use_foreach(gs)
        count, mu, nu, out, scale = _adam_step(gs, mu, nu, state.count, _beta1(b1, state.count), b2, eps, fe,
                                               donate_state)
        out = _ops.mul(out, scale, fe, inplace=True)
        new_state = ScaleByAdamState(count, _flat.unflatten(spec, mu), _flat.unflatten(spec, nu))
        return _flat.unflatten(spec, out), new_state

    return GradientTransformation(init, mark(update, fresh=True, donates=True))


def _adam_step(gs: list, mu: list, nu: list, count: Tensor, b1: Any, b2: float, eps: float, fe: bool,
               donate: bool = False):
    """New count and moments, ``mu / (sqrt(nu) + eps * sqrt(bc2))`` (fresh leaves) and its scale ``sqrt(bc2) / bc1``.

    ``b1`` is a float or a float64 0-d tensor (a scheduled beta1). ``donate``: the new moments
    may be written into ``mu`` and ``nu`` (the same kernels in place, so the same numbers).
    """
    count, mu, nu, denom, scale = _adam_moments(gs, mu, nu, count, b1, b2, eps, fe, donate)
    return count, mu, nu, _ops.div_lists(mu, denom, fe, into_y=True), scale


def _adam_moments(gs: list, mu: list, nu: list, count: Tensor, b1: Any, b2: float, eps: float, fe: bool,
                  donate: bool):
    """``_adam_step`` before its division: new count and moments, the denominators
    ``sqrt(nu) + eps * sqrt(bc2)`` (fresh leaves) and the scale ``sqrt(bc2) / bc1`` (float64 0-d)."""
    in_place = donate and fe
    new_mu = _ops.lerp(mu, gs, 1.0 - b1, fe, inplace=in_place)
    new_nu = _ops.addcmul(_ops.mul(nu, b2, fe, inplace=in_place), gs, gs, 1.0 - b2, fe, inplace=True)
    # Donated but not eager (compiled): the new values are copied into the old tensors.
    mu, nu = (_ops.write_back(mu, new_mu), _ops.write_back(nu, new_nu)) if donate and not fe else (new_mu, new_nu)
    count = count + 1
    # Bias corrections in float64, as torch computes them in Python floats.
    k = count.to(torch.float64)
    sqrt_bc2 = torch.sqrt(1.0 - b2 ** k)
    bc1 = 1.0 - b1 ** k
    denom = _ops.add_scalar(_ops.sqrt(nu, fe), eps * sqrt_bc2, fe, inplace=True)
    return count, mu, nu, denom, sqrt_bc2 / bc1


def adam(lr: ScalarOrSchedule = 1e-3, betas: Sequence[Any] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, mask: Mask | None = None) -> GradientTransformation:
    """Adam with L2 decay added to the gradient: ``chain(add_decayed_weights, scale_by_adam, scale_by_learning_rate)``.

    ``g = g + weight_decay * p`` (masked leaves only), then ``p = p - lr(n) * adam(g)``.
    ``betas[0]`` may be a schedule, e.g. ``one_cycle_momentum(total_steps)`` next to
    ``lr=one_cycle(...)`` for ``OneCycleLR(cycle_momentum=True)`` (see :func:`scale_by_adam`).
    Donated eager CPU steps (``make_train_step(donate=True)``) use its in-place form
    ``update.in_place``, in ``torch.optim.Adam``'s order.

    Raises:
        ValueError: negative ``lr``/``eps``/``weight_decay``, betas outside ``[0, 1)``.

    Examples:
        >>> import torch
        >>> opt = adam(lr=0.1)
        >>> p = {"w": torch.zeros(2)}
        >>> u, s = opt.update({"w": torch.ones(2)}, opt.init(p), p)
        >>> [round(v, 4) for v in u["w"].tolist()]
        [-0.1, -0.1]
    """
    name = "deepfn.optim.adam"
    b1, b2 = _check_common(name, lr, betas, eps, weight_decay)
    inner = chain(add_decayed_weights(weight_decay, mask), scale_by_adam(betas, eps), scale_by_learning_rate(lr))

    def update_in_place(updates: PyTree, state: tuple, params: PyTree):
        """``params`` and ``state`` given up: the new values written into their tensors in
        ``torch.optim.Adam``'s order (``g + wd * p`` into a fresh gradient, the moments in
        place, then ``p += -lr * scale * mu / denom``, one ``addcdiv_``): no separate division,
        scaling and sum passes as in ``update`` + ``apply_updates``. Equal to them up to float
        rounding.

        Returns ``(params, state)``, or None (nothing written) off the eager CPU path, as
        :func:`adamw`'s form does.
        """
        if not isinstance(state, tuple) or not state or not isinstance(state[0], EmptyState):
            return None   # the chain's update raises its own error on it
        flat = _fast_path(updates, state, params, weight_decay, mask, ADAM_AT["adam"])
        if flat is None:
            return None
        gs, spec, mu, nu, ps, idx = flat
        adam_s = state[ADAM_AT["adam"]]
        beta1 = _beta1(b1, adam_s.count)
        rate = _host_rate(lr, state, beta1, ps)
        if rate is None:
            return None
        with torch.no_grad():
            if idx:   # L2 decay into fresh gradients: the caller's gradients are not given up
                gs = list(gs)
                decayed = _ops.add([gs[i] for i in idx], [ps[i] for i in idx], True, alpha=weight_decay)
                for i, d in zip(idx, decayed, strict=True):
                    gs[i] = d
            count, mu, nu, denom, scale = _adam_moments(gs, mu, nu, adam_s.count, beta1, b2, eps, True, True)
            foreach("addcdiv_", ps, mu, denom, -rate * float(scale))
        return _flat.unflatten(spec, ps), _after_fast_update(state, "adam", spec, count, mu, nu)

    inner.update.in_place = update_in_place   # the chain's own update (made for this call), marks kept
    return inner


def adamw(lr: ScalarOrSchedule = 1e-3, betas: Sequence[Any] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, mask: Mask | None = None) -> GradientTransformation:
    """AdamW (decoupled decay): ``chain(scale_by_adam, add_decayed_weights, scale_by_learning_rate)``.

    ``p = p - lr(n) * (adam(g) + weight_decay * p)``, which is torch's
    ``p *= 1 - lr * weight_decay`` before the Adam step, reassociated. Note that the decay
    is scaled by the learning rate (torch's convention; Optax's ``adamw`` is the same).

    Raises:
        ValueError: negative ``lr``/``eps``/``weight_decay``, betas outside ``[0, 1)``.
    """
    name = "deepfn.optim.adamw"
    b1, b2 = _check_common(name, lr, betas, eps, weight_decay)
    inner = chain(scale_by_adam(betas, eps), add_decayed_weights(weight_decay, mask), scale_by_learning_rate(lr))

    def update(updates: PyTree, state: tuple, params: PyTree = None, *, donate_state: bool = False,
               _owned: bool = False):
        flat = _fast_path(updates, state, params, weight_decay, mask, ADAM_AT["adamw"])
        if flat is None:
            return inner.update(updates, state, params, donate_state=donate_state, _owned=_owned)
        gs, spec, mu, nu, ps, idx = flat
        adam_s, lr_s = state[0], state[2]
        count, mu, nu, out, scale = _adam_step(gs, mu, nu, adam_s.count, _beta1(b1, adam_s.count), b2, eps, True,
                                               donate_state)
        rate = _value(lr, lr_s.count)
        tensor_rate = isinstance(rate, torch.Tensor)  # a foreach ``alpha`` must be a Python number
        # Mixed dtypes take the per-leaf (new tensors) path: index the decayed leaves after it.
        out = _ops.mul(out, scale if tensor_rate else -rate * scale, True, inplace=True)
        if idx:
            alpha = weight_decay if tensor_rate else -rate * weight_decay
            _ops.add([out[i] for i in idx], [ps[i] for i in idx], True, alpha=alpha, inplace=True)
        if tensor_rate:
            out = _ops.mul(out, -rate, True, inplace=True)
        return _flat.unflatten(spec, out), _after_fast_update(state, "adamw", spec, count, mu, nu)

    def update_in_place(updates: PyTree, state: tuple, params: PyTree):
        """``params`` and ``state`` given up: the new values written into their tensors, in
        ``torch.optim.AdamW``'s order (``p *= 1 - lr * wd``, then ``p += -lr * scale * mu / denom``,
        one ``addcdiv_``). Two passes over the parameters where ``update`` + ``apply_updates``
        take four (division, scale, decay, sum); equal to them up to float rounding.

        Returns ``(params, state)``, or None (nothing written) off the eager CPU path: the
        step sizes are read on the host as Python numbers, as ``torch.optim`` reads its steps.
        Parameters that require grad are written under ``no_grad``, as ``torch.optim`` does.
        """
        flat = _fast_path(updates, state, params, weight_decay, mask, ADAM_AT["adamw"])
        if flat is None:
            return None
        gs, spec, mu, nu, ps, idx = flat
        beta1 = _beta1(b1, state[0].count)
        rate = _host_rate(lr, state, beta1, ps)
        if rate is None:
            return None
        with torch.no_grad():
            count, mu, nu, denom, scale = _adam_moments(gs, mu, nu, state[0].count, beta1, b2, eps, True, True)
            if idx:
                foreach("mul_", [ps[i] for i in idx], 1.0 - rate * weight_decay)
            foreach("addcdiv_", ps, mu, denom, -rate * float(scale))
        return _flat.unflatten(spec, ps), _after_fast_update(state, "adamw", spec, count, mu, nu)

    update = mark(update, fresh=True, reuses=True, donates=True)
    update.in_place = update_in_place
    return GradientTransformation(inner.init, update)


# Where each chain keeps Adam's state: adam = (decay, Adam, schedule), adamw = (Adam, decay, schedule).
ADAM_AT = {"adam": 1, "adamw": 0}


# The chain's passes after Adam's division (scale, decay, learning rate, the sum into the params)
# are fused on the eager foreach paths, with the chain's state; elsewhere (compile, vmap) Inductor
# or the per-leaf path does not gain from it, so the chain runs as written.
def _fast_path(updates: PyTree, state: tuple, params: PyTree, weight_decay: float, mask: Mask | None, at: int):
    """``(grads, spec, mu, nu, params, decayed indices)`` as flat lists when the eager foreach
    path applies to this update of a chain holding Adam's state at index ``at``, else None."""
    gs, spec = _flat.flatten(updates)
    if (params is None or not _ops.use_foreach(gs) or not isinstance(state, tuple) or len(state) != 3
            or not isinstance(state[at], ScaleByAdamState) or not isinstance(state[2], ScaleByScheduleState)):
        return None
    adam_s, lr_s = state[at], state[2]
    check_count("deepfn.optim.scale_by_adam", adam_s.count)
    check_count("deepfn.optim.scale_by_learning_rate", lr_s.count)
    mu, mu_spec = _flat.flatten(adam_s.mu)
    check_specs("deepfn.optim.scale_by_adam", "updates", spec, mu_spec, updates, adam_s.mu, "the moments")
    check_shapes("deepfn.optim.scale_by_adam", "updates", gs, mu, adam_s.mu, "the moments")
    ps, p_spec = _flat.flatten(params)
    where = "deepfn.optim.add_decayed_weights"
    check_specs(where, "updates", spec, p_spec, updates, params)
    flags = resolve_mask(where, mask, params, ps, p_spec) if weight_decay else [False] * len(ps)
    return gs, spec, mu, _flat.flatten(adam_s.nu)[0], ps, [i for i, f in enumerate(flags) if f]


def _host_rate(lr: ScalarOrSchedule, state: tuple, beta1: Any, ps: list) -> float | None:
    """This update's learning rate as a Python number, read on the host as ``torch.optim`` reads
    its steps; None (no in-place update) when a count, a scheduled value or a param is not on the CPU."""
    rate = _value(lr, state[2].count)
    host = (*(s.count for s in state if isinstance(s, (ScaleByAdamState, ScaleByScheduleState))),
            *(v for v in (beta1, rate) if isinstance(v, torch.Tensor)), *ps)
    if any(not isinstance(t, torch.Tensor) or t.device.type != "cpu" for t in host):
        return None
    return float(rate)


def _after_fast_update(state: tuple, which: str, spec: Any, count: Tensor, mu: list, nu: list) -> tuple:
    """The chain's state after one fused update: Adam's moments, the decay's, the schedule's count."""
    new = list(state)
    new[ADAM_AT[which]] = ScaleByAdamState(count, _flat.unflatten(spec, mu), _flat.unflatten(spec, nu))
    new[2] = ScaleByScheduleState(state[2].count + 1)
    return tuple(new)


def _check_common(name: str, lr, betas, eps, weight_decay) -> tuple[ScalarOrSchedule, float]:
    if not callable(lr):
        S.check_number(name, "lr", lr, low=0.0)
    betas = _check_betas(name, betas)
    S.check_number(name, "eps", eps, low=0.0)
    S.check_number(name, "weight_decay", weight_decay, low=0.0)
    return betas
