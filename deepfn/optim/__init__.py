"""Optax-style optimizers with ``torch.optim``'s numbers: ``GradientTransformation(init, update)``."""

from . import schedules as schedules
from .adam import ScaleByAdamState as ScaleByAdamState
from .adam import adam as adam
from .adam import adamw as adamw
from .adam import scale_by_adam as scale_by_adam
from .base import EmptyState as EmptyState
from .base import GradientTransformation as GradientTransformation
from .base import Schedule as Schedule
from .base import apply_updates as apply_updates
from .base import chain as chain
from .base import donates as donates
from .base import identity as identity
from .clipping import clip_by_global_norm as clip_by_global_norm
from .schedules import constant as constant
from .schedules import cosine_decay as cosine_decay
from .schedules import join as join
from .schedules import linear_warmup as linear_warmup
from .schedules import noam as noam
from .schedules import one_cycle as one_cycle
from .schedules import one_cycle_momentum as one_cycle_momentum
from .sgd import sgd as sgd
from .transforms import ScaleByScheduleState as ScaleByScheduleState
from .transforms import TraceState as TraceState
from .transforms import add_decayed_weights as add_decayed_weights
from .transforms import scale_by_learning_rate as scale_by_learning_rate
from .transforms import trace as trace

__all__ = [
    "EmptyState", "GradientTransformation", "Schedule", "ScaleByAdamState", "ScaleByScheduleState",
    "TraceState", "adam", "adamw", "add_decayed_weights", "apply_updates", "chain",
    "clip_by_global_norm", "constant", "cosine_decay", "donates", "identity", "join",
    "linear_warmup", "noam", "one_cycle", "one_cycle_momentum", "scale_by_adam",
    "scale_by_learning_rate", "schedules", "sgd", "trace",
]
