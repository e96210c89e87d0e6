"""Multi-head scaled dot-product attention. Twin: ``torch.nn.MultiheadAttention``.

The block is split into small pure steps so that incremental decoding can cache keys and
values: ``project_q`` / ``project_kv`` map inputs to heads ``[b, h, t, d]``, ``attend``
projects queries, attends over given keys and values and applies ``out_proj``; ``apply``
is ``attend`` over ``project_kv`` of its own inputs.

Two kernels compute the same function. ``F.scaled_dot_product_attention`` (SDPA) is used
on the plain path; inside ``torch.func`` transforms the CPU flash kernel has no batching
rule (``vmap`` runs it once per example, with a performance warning), and its dropout reads
the global RNG, so transformed calls and attention dropout take a matmul + softmax path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import random
from .._checks import (
    check_choice,
    check_dim,
    check_floating,
    check_params,
    check_positive,
    check_probability,
    check_rank,
    check_same_dtype,
    describe,
    require_key,
    where,
)
from .._torch import transforms_active
from ..typing import Key, Params, State, Tensor
from . import initializers
from ._einops import rearrange
from ._linear import linear
from .dropout import dropout as _dropout
from .masks import check_mask

__all__ = ["MultiHeadAttention"]

_HALF = (torch.float16, torch.bfloat16)


def _plain_call() -> bool:
    """True when no ``torch.func`` transform (vmap, grad, ...) is active (Dynamo folds the probe
    to a constant while it traces); False when that cannot be known: the math path."""
    return not transforms_active()


@dataclass(frozen=True)
class MultiHeadAttention:
    """Multi-head attention: ``softmax(q k^T / sqrt(d)) v`` per head, heads merged by ``out_proj``.

    Params (names and layouts of the twin's ``state_dict``): ``in_proj_weight [3e, e]``
    (query, key, value rows stacked; xavier-uniform), ``in_proj_bias [3e]`` (zeros),
    ``out_proj.weight [e, e]`` (``torch.nn.Linear``'s default), ``out_proj.bias [e]`` (zeros).

    Masks are bool, ``True`` = may attend, broadcastable to ``[b, h, t, s]``. A query row
    with no allowed key returns zeros (torch gives NaN there). ``dropout`` zeroes attention
    weights when ``train=True`` (needs ``key``). Softmax runs in float32 for half inputs.

    ``impl`` picks the kernel: ``"auto"`` (SDPA on the plain path, matmul under
    ``torch.func`` transforms or attention dropout), ``"sdpa"`` or ``"math"`` (always the
    matmul path; ``"sdpa"`` still falls back to it for attention dropout).

    Twin: ``torch.nn.MultiheadAttention(d_model, n_heads, dropout, batch_first=True)``,
    whose masks mean the opposite (``True`` = masked): pass ``~mask``.
    """

    d_model: int
    n_heads: int
    dropout: float = 0.0
    impl: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, d_model=self.d_model, n_heads=self.n_heads)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"MultiHeadAttention: d_model must be divisible by n_heads; got d_model={self.d_model}, "
                f"n_heads={self.n_heads} (remainder {self.d_model % self.n_heads})"
            )
        check_probability(self, "dropout", self.dropout)
        check_choice(self, "impl", self.impl, ("auto", "sdpa", "math"))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def param_shapes(self) -> dict[str, object]:
        """The shape of each param ``init`` makes (what every method checks)."""
        e = self.d_model
        return {"in_proj_weight": (3 * e, e), "in_proj_bias": (3 * e,),
                "out_proj": {"weight": (e, e), "bias": (e,)}}

    def init(self, key: Key) -> tuple[Params, State]:
        k_in, k_out = random.split(key)
        e = self.d_model
        params = {
            "in_proj_weight": initializers.xavier_uniform()(k_in, (3 * e, e)),
            "in_proj_bias": initializers.zeros(key, (3 * e,)),
            "out_proj": {"weight": initializers.torch_default(k_out, (e, e)),
                         "bias": initializers.zeros(key, (e,))},
        }
        return params, {}

    # -- projections -------------------------------------------------------------------

    def _check_input(self, name: str, x: Tensor, method: str) -> None:
        check_rank(self, name, x, 3, layout="[B, T, d_model]", method=method)
        check_floating(self, name, x, method=method)
        check_dim(self, name, x, axis=-1, size=self.d_model, hyper="d_model", method=method)

    def project_q(self, params: Params, x: Tensor) -> Tensor:
        """Queries ``[b, h, t, d]`` from ``x [b, t, e]``."""
        self._check_input("x", x, "project_q")
        check_params(self, params, self.param_shapes, like=x, method="project_q")
        return self._project_q(params, x)

    def _project_q(self, params: Params, x: Tensor) -> Tensor:
        e = self.d_model
        q = linear(x, params["in_proj_weight"][:e], params["in_proj_bias"][:e])
        return rearrange(q, "b t (h d) -> b h t d", h=self.n_heads)

    def project_kv(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values, each ``[b, h, s, d]``, from ``x [b, s, e]`` (one matmul)."""
        self._check_input("x", x, "project_kv")
        check_params(self, params, self.param_shapes, like=x, method="project_kv")
        return self._project_kv(params, x)

    def _project_kv(self, params: Params, x: Tensor) -> tuple[Tensor, Tensor]:
        e = self.d_model
        kv = linear(x, params["in_proj_weight"][e:], params["in_proj_bias"][e:])
        k, v = rearrange(kv, "b s (two h d) -> two b h s d", two=2, h=self.n_heads)
        return k, v

    # -- attention ---------------------------------------------------------------------

    def _heads(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, key: Key | None,
               train: bool) -> Tensor:
        """Attention per head: ``q [b, h, t, d]``, ``k, v [b, h, s, d]`` -> ``[b, h, t, d]``."""
        drop = train and self.dropout > 0.0
        scale = self.head_dim ** -0.5
        row_any = None
        if mask is not None:
            # A row with no allowed key is NaN in SDPA and a uniform average with the
            # finfo.min trick; let it see every key (finite values and gradients) and zero
            # its output afterwards, so nothing flows through it.
            row_any = mask.any(dim=-1, keepdim=True)
            mask = mask | ~row_any
        if not drop and (self.impl == "sdpa" or (self.impl == "auto" and _plain_call())):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2))
            if scores.dtype in _HALF:
                scores = scores.float()
            scores = scores * scale
            if mask is not None:
                scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
            weights = torch.softmax(scores, dim=-1)
            if drop:
                weights = _dropout(weights, self.dropout, key, True, owner=self)
            out = torch.matmul(weights.to(v.dtype), v)
        if row_any is not None:
            out = torch.where(row_any, out, out.new_zeros(()))
        return out

    def attend(self, params: Params, query: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
               *, key: Key | None = None, train: bool = False) -> Tensor:
        """Project ``query``, attend over precomputed ``k``/``v``, merge heads, apply ``out_proj``.

        Args:
            params: this block's params.
            query: ``[b, t, e]`` floating.
            k, v: ``[b, h, s, d]`` of query's dtype (from ``project_kv``, possibly a cache).
            mask: bool broadcastable to ``[b, h, t, s]``, ``True`` = may attend.
            key: dropout key, needed when ``train`` and ``dropout > 0``.

        Returns:
            ``[b, t, e]`` of query's dtype.
        """
        self._check_input("query", query, "attend")
        check_params(self, params, self.param_shapes, like=query, method="attend")
        return self._attend(params, query, k, v, mask, key=key, train=train)

    def _attend(self, params: Params, query: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                *, key: Key | None = None, train: bool = False) -> Tensor:
        """``attend`` without the params check (``apply`` has made it)."""
        b, t, _ = query.shape
        want = f"[{b}, {self.n_heads}, S, {self.head_dim}]"
        for name, x in (("k", k), ("v", v)):
            check_rank(self, name, x, 4, layout="[B, n_heads, S, head_dim]", method="attend")
            if x.shape[0] != b or x.shape[1] != self.n_heads or x.shape[3] != self.head_dim:
                raise ValueError(f"{where(self, 'attend')}: {name} must be {want}; got {describe(x)}")
            check_same_dtype(self, name, x, query.dtype, "query", method="attend")
        if v.shape[2] != k.shape[2]:
            raise ValueError(f"{where(self, 'attend')}: v must have k's length {k.shape[2]}; got {describe(v)}")
        if mask is not None:
            check_mask(self, "mask", mask, (b, self.n_heads, t, k.shape[2]), "attend")
        if train and self.dropout > 0.0:
            require_key(self, key)
        out = self._heads(self._project_q(params, query), k, v, mask, key, train)
        out = rearrange(out, "b h t d -> b t (h d)")
        return linear(out, params["out_proj"]["weight"], params["out_proj"]["bias"])

    def apply(self, params: Params, state: State, query: Tensor, key_value: Tensor | None = None,
              mask: Tensor | None = None, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """Attention of ``query`` over ``key_value`` (itself when ``None``: self-attention).

        Args:
            query: ``[b, t, e]`` (or unbatched ``[t, e]``) floating.
            key_value: ``[b, s, e]`` (or ``[s, e]``) of query's dtype, or ``None``.
            mask: bool broadcastable to ``[b, h, t, s]``, ``True`` = may attend.
            key: dropout key, needed when ``train`` and ``dropout > 0``.

        Returns:
            ``([b, t, e], state)``; rows with no allowed key are zeros.

        Raises:
            ValueError: wrong ranks or sizes, a mask that does not broadcast, ``train=True``
                with dropout and no key. TypeError: a non-bool mask, non-float or mixed dtypes.
        """
        check_rank(self, "query", query, (2, 3), layout="[B, T, d_model]")
        unbatched = query.ndim == 2
        kv = query if key_value is None else key_value
        check_rank(self, "key_value", kv, query.ndim, layout="like query: [B, S, d_model]")
        if unbatched:
            query, kv = query[None], kv[None]
        self._check_input("query", query, "apply")
        self._check_input("key_value", kv, "apply")
        check_same_dtype(self, "key_value", kv, query.dtype, "query")
        if kv.shape[0] != query.shape[0]:
            raise ValueError(f"{where(self)}: key_value must have query's batch size {query.shape[0]}; "
                             f"got {describe(kv)}")
        if mask is not None:
            check_mask(self, "mask", mask, (query.shape[0], self.n_heads, query.shape[1], kv.shape[1]))
        check_params(self, params, self.param_shapes, like=query)
        k, v = self._project_kv(params, kv)
        y = self._attend(params, query, k, v, mask, key=key, train=train)
        return (y[0] if unbatched else y), state
