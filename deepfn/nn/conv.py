"""2-d convolution over ``[b, c, H, W]`` images. Twin: ``torch.nn.Conv2d``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F

from .. import random
from .._checks import check_dim, check_floating, check_params, check_rank, describe, where
from ..typing import Key, Params, State, Tensor
from . import initializers

__all__ = ["Conv2d"]

IntPair = int | tuple[int, int]


def _pair(owner: object, name: str, value: object, minimum: int) -> tuple[int, int]:
    """``value`` as a pair of ints ``>= minimum``; a config error names the field."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair)):
        raise ValueError(
            f"{type(owner).__name__}: {name} must be an int >= {minimum} or a pair of them; got {value!r}"
        )
    return int(pair[0]), int(pair[1])


@dataclass(frozen=True)
class Conv2d:
    """Cross-correlation of ``x [b, c, H, W]`` with ``weight [out, in / groups, kh, kw]``.

    ``kernel_size``, ``stride``, ``padding`` (zeros) and ``dilation`` are an int or an
    ``(h, w)`` pair; ``padding`` may also be ``"valid"`` or ``"same"`` (stride 1 only), as
    in PyTorch. Params: ``weight`` and ``bias [out_channels]`` (if ``bias``), initialised as
    ``torch.nn.Conv2d`` does: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` with
    ``fan_in = in_channels / groups * kh * kw``. ``kernel_init`` / ``bias_init`` replace that:
    a function ``(key, shape, dtype) -> Tensor`` of ``deepfn.nn.initializers`` or a name of
    ``initializers.BY_NAME``; ``None`` keeps PyTorch's. They take part in equality and hashing
    but not in the repr.

    Twin: ``torch.nn.Conv2d`` (``padding_mode="zeros"``).
    """

    in_channels: int
    out_channels: int
    kernel_size: IntPair
    stride: IntPair = 1
    padding: IntPair | str = 0
    bias: bool = True
    dilation: IntPair = 1
    groups: int = 1
    kernel_init: initializers.Initializer | str | None = field(default=None, repr=False)
    bias_init: initializers.Initializer | str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        initializers.check_field(self, "kernel_init", self.kernel_init)
        initializers.check_field(self, "bias_init", self.bias_init)
        for name in ("in_channels", "out_channels", "groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"Conv2d: {name} must be a positive int; got {value!r}")
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(
                f"Conv2d: in_channels ({self.in_channels}) and out_channels ({self.out_channels}) "
                f"must both be divisible by groups ({self.groups})"
            )
        _pair(self, "kernel_size", self.kernel_size, 1)
        _pair(self, "stride", self.stride, 1)
        _pair(self, "dilation", self.dilation, 1)
        if isinstance(self.padding, str):
            if self.padding not in ("valid", "same"):
                raise ValueError(f"Conv2d: padding must be an int, a pair, 'valid' or 'same'; got {self.padding!r}")
            if self.padding == "same" and _pair(self, "stride", self.stride, 1) != (1, 1):
                raise ValueError(f"Conv2d: padding='same' needs stride 1 (as torch); got stride={self.stride!r}")
        else:
            _pair(self, "padding", self.padding, 0)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        kh, kw = _pair(self, "kernel_size", self.kernel_size, 1)
        return (self.out_channels, self.in_channels // self.groups, kh, kw)

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of each param ``init`` makes (what ``apply`` checks)."""
        shapes: dict[str, tuple[int, ...]] = {"weight": self.weight_shape}
        if self.bias:
            shapes["bias"] = (self.out_channels,)
        return shapes

    def init(self, key: Key) -> tuple[Params, State]:
        k_weight, k_bias = random.split(key)
        shape = self.weight_shape
        params = {"weight": initializers.draw(self, "kernel_init", self.kernel_init, initializers.torch_default,
                                              k_weight, shape)}
        if self.bias:
            fan_in = shape[1] * shape[2] * shape[3]
            params["bias"] = initializers.draw(self, "bias_init", self.bias_init,
                                               initializers.torch_default_bias(fan_in), k_bias, (self.out_channels,))
        return params, {}

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the output for an ``H x W`` input (may be <= 0 when too small)."""
        kh, kw = self.weight_shape[2:]
        sh, sw = _pair(self, "stride", self.stride, 1)
        dh, dw = _pair(self, "dilation", self.dilation, 1)
        if self.padding == "same":
            return height, width
        ph, pw = (0, 0) if self.padding == "valid" else _pair(self, "padding", self.padding, 0)
        return ((height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def apply(self, params: Params, state: State, x: Tensor, *, key: Key | None = None,
              train: bool = False) -> tuple[Tensor, State]:
        """Convolve a batch of images.

        Args:
            x: ``[b, c, H, W]`` (or one image ``[c, H, W]``), floating, ``c == in_channels``.

        Returns:
            ``([b, out_channels, H', W'], state)`` in x's dtype, ``state`` unchanged.

        Raises:
            TypeError: ``x`` is not floating point, or a param has another dtype than ``x``.
            ValueError: wrong rank, channel count, or an image smaller than the dilated kernel;
                params with other keys or shapes than ``init``'s, or on another device than ``x``.
        """
        check_floating(self, "x", x)
        check_rank(self, "x", x, (3, 4), layout="[B, C, H, W] (or [C, H, W])")
        check_dim(self, "x", x, axis=-3, size=self.in_channels, hyper="in_channels")
        oh, ow = self.output_size(x.shape[-2], x.shape[-1])
        if oh <= 0 or ow <= 0:
            raise ValueError(
                f"{where(self)}: x is too small for kernel_size={self.kernel_size} with padding="
                f"{self.padding}, dilation={self.dilation} (output would be {oh} x {ow}); got {describe(x)}"
            )
        check_params(self, params, self.param_shapes, like=x)
        padding = self.padding if isinstance(self.padding, str) else _pair(self, "padding", self.padding, 0)
        y = F.conv2d(x, params["weight"], params.get("bias"),
                     stride=_pair(self, "stride", self.stride, 1), padding=padding,
                     dilation=_pair(self, "dilation", self.dilation, 1), groups=self.groups)
        return y, state
