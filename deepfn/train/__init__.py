"""Training: the :class:`TrainState` pytree, compiled pure steps, per-example gradients,
vmapped ensembles, distillation, rematerialisation (``remat``) and the ``fit`` loop. How steps
are compiled and saved lives in :mod:`deepfn.train.compile`."""

from .distill import distillation_loss as distillation_loss
from .distill import teacher_logits as teacher_logits
from .ensemble import ensemble_init as ensemble_init
from .ensemble import ensemble_train_state as ensemble_train_state
from .ensemble import make_ensemble_train_step as make_ensemble_train_step
from .eval_step import make_eval_step as make_eval_step
from .fit import History as History
from .fit import evaluate as evaluate
from .fit import fit as fit
from .history import plot_history as plot_history
from .history import read_history as read_history
from .per_example import clip_per_example as clip_per_example
from .per_example import dp_sgd_grads as dp_sgd_grads
from .per_example import per_example_grads as per_example_grads
from .remat import remat as remat
from .state import TrainState as TrainState
from .step import build_train_step as build_train_step
from .step import make_train_step as make_train_step

__all__ = [
    "History", "TrainState", "build_train_step", "clip_per_example", "distillation_loss",
    "dp_sgd_grads", "ensemble_init", "ensemble_train_state", "evaluate", "fit",
    "make_ensemble_train_step", "make_eval_step", "make_train_step", "per_example_grads",
    "plot_history", "read_history", "remat", "teacher_logits",
]
