"""Mixed precision: an explicit dtype :class:`Policy` and an immutable dynamic loss scale."""

from .float32_params import norm_affine as norm_affine
from .hardware import bf16_in_hardware as bf16_in_hardware
from .loss_scale import DynamicLossScale as DynamicLossScale
from .loss_scale import NoOpLossScale as NoOpLossScale
from .loss_scale import all_finite as all_finite
from .policy import Policy as Policy
from .policy import parse_dtype as parse_dtype

__all__ = ["DynamicLossScale", "NoOpLossScale", "Policy", "all_finite", "bf16_in_hardware", "norm_affine",
           "parse_dtype"]
