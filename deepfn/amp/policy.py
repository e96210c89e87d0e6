"""A mixed-precision policy: three dtypes, passed explicitly (the jmp design).

Twin: the dtype choices of ``torch.autocast`` made explicit. deepfn does not use autocast, a
thread-local mode that a pure function's arguments would not show: params and inputs are cast
to the compute dtype, and blocks compute norm statistics, softmax and the loss in float32.
As under autocast, normalisation params stay float32 under a half policy (``keep_float32``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from .._checks import takes_positional
from ..typing import PyTree
from .float32_params import KeepFloat32, cast_keeping_float32, norm_affine

__all__ = ["Policy", "parse_dtype"]

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "f32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "f16": torch.float16, "half": torch.float16,
    "float64": torch.float64, "f64": torch.float64, "double": torch.float64,
}
_KEYS = {"params": "param_dtype", "param": "param_dtype", "p": "param_dtype",
         "compute": "compute_dtype", "c": "compute_dtype",
         "output": "output_dtype", "o": "output_dtype"}


def parse_dtype(value: str | torch.dtype, owner: str = "deepfn.amp.parse_dtype") -> torch.dtype:
    """``"bf16"`` / ``"bfloat16"`` / ``torch.bfloat16`` -> ``torch.bfloat16`` (floating dtypes only)."""
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise TypeError(f"{owner}: dtype must be floating, one of {sorted(set(_DTYPES))}; got {value}")
        return value
    if isinstance(value, str) and value.strip().lower() in _DTYPES:
        return _DTYPES[value.strip().lower()]
    raise ValueError(f"{owner}: unknown dtype {value!r}; valid dtypes: {sorted(set(_DTYPES))}")


@dataclass(frozen=True)
class Policy:
    """Which dtype parameters are stored in, computed in, and returned in.

    Examples:
        >>> import torch
        >>> p = Policy.from_string("params=float32,compute=bf16,output=float32")
        >>> p.cast_to_compute({"w": torch.ones(2), "ids": torch.arange(2)})["w"].dtype
        torch.bfloat16

    Fields accept a ``torch.dtype`` or a name (``"float32"``, ``"f32"``, ``"bf16"``, ...).

    ``keep_float32(path, node) -> bool`` is a rule over the dict nodes of a params tree: where
    ``param_dtype`` or ``compute_dtype`` is a half dtype, ``cast_to_param`` and
    ``cast_to_compute`` cast the floating leaves of the nodes it picks to float32 instead, as
    autocast leaves a norm layer's weight and bias float32 (deepfn's ``BatchNorm`` and
    ``LayerNorm`` take float32 params with half inputs and return the input's dtype). The
    default, :func:`~deepfn.amp.norm_affine`, picks nodes of exactly a ``weight`` and a ``bias``
    of one shape: the affine of ``BatchNorm`` and ``LayerNorm``, never a ``Dense`` or ``Conv2d``.
    ``None`` casts every floating leaf. The state (batch-norm running statistics) is never cast.

        >>> p.cast_to_compute({"norm": {"weight": torch.ones(2), "bias": torch.zeros(2)}})["norm"]["weight"].dtype
        torch.float32
    """

    param_dtype: torch.dtype = torch.float32
    compute_dtype: torch.dtype = torch.float32
    output_dtype: torch.dtype = torch.float32
    keep_float32: KeepFloat32 | None = norm_affine

    def __post_init__(self) -> None:
        for name in ("param_dtype", "compute_dtype", "output_dtype"):
            object.__setattr__(self, name, parse_dtype(getattr(self, name), f"Policy: {name}"))
        if self.keep_float32 is not None and not callable(self.keep_float32):
            raise TypeError(f"Policy: keep_float32 must be None or a callable (path, node) -> bool; "
                            f"got {type(self.keep_float32).__name__} {self.keep_float32!r}")
        if self.keep_float32 is not None and not takes_positional(self.keep_float32, 2):
            raise TypeError(f"Policy: keep_float32 must take (path, node) and return a bool; got "
                            f"{getattr(self.keep_float32, '__qualname__', self.keep_float32)!r}, which cannot")

    @classmethod
    def from_string(cls, spec: str) -> Policy:
        """Parse ``"params=float32,compute=bfloat16,output=float32"``; unnamed fields stay float32.

        Keys: ``params``/``p``, ``compute``/``c``, ``output``/``o``. Values: dtype names or the
        short forms ``f32``, ``bf16``, ``f16``, ``f64``.
        """
        if not isinstance(spec, str):
            raise TypeError(f"Policy.from_string: spec must be a str; got {type(spec).__name__} {spec!r}")
        fields: dict[str, Any] = {}
        for part in filter(None, (s.strip() for s in spec.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip().lower()
            if not sep or name not in _KEYS:
                raise ValueError(f"Policy.from_string: expected 'key=dtype' with key in "
                                 f"{sorted(_KEYS)}; got {part!r} in {spec!r}")
            fields[_KEYS[name]] = parse_dtype(value, "Policy.from_string")
        return cls(**fields)

    def cast_to_param(self, x: PyTree) -> PyTree:
        """Floating leaves of ``x`` (a tree or a bare tensor) to ``param_dtype``; float32 for
        the nodes ``keep_float32`` picks when ``param_dtype`` is half."""
        return cast_keeping_float32(x, self.param_dtype, self.keep_float32)

    def cast_to_compute(self, x: PyTree) -> PyTree:
        """Floating leaves of ``x`` to ``compute_dtype``; float32 for the nodes ``keep_float32``
        picks when ``compute_dtype`` is half."""
        return cast_keeping_float32(x, self.compute_dtype, self.keep_float32)

    def cast_to_output(self, x: PyTree) -> PyTree:
        """Floating leaves of ``x`` to ``output_dtype`` (every one: outputs are not params)."""
        return cast_keeping_float32(x, self.output_dtype, None)

    def with_output_dtype(self, dtype: torch.dtype | str) -> Policy:
        return replace(self, output_dtype=dtype)
