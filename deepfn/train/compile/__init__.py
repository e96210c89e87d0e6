"""How a step is compiled: the accelerations behind ``compile=`` and ``compile_cache=`` of
:func:`deepfn.train.make_train_step`, :func:`deepfn.train.make_eval_step` and
:func:`deepfn.train.make_ensemble_train_step`. Each computes what the uncompiled step computes.

- :mod:`~deepfn.train.compile.one_graph`: the step as one graph, saved or not
  (:func:`compiled`), each compiled from a copy with its own code object
  (:mod:`~deepfn.train.compile.own_code`);
- :mod:`~deepfn.train.compile.first_call`: the plain ``torch.compile`` made on the first call,
  with Inductor settings for its inputs;
- :mod:`~deepfn.train.compile.saved`: compiled steps saved to a folder and loaded by later
  processes, named by a :mod:`~deepfn.train.compile.fingerprint` of what they compute, their
  guards' functions pickled whole (:mod:`~deepfn.train.compile.guard_pickling`);
- :mod:`~deepfn.train.compile.guard_filter`: no guards on torch's and deepfn's own globals;
- :mod:`~deepfn.train.compile.dynamic`: ``dynamic_dims=``, batch sizes compiled as symbols;
- :mod:`~deepfn.train.compile.split`: ``compile="split"``, the forward compiled and
  differentiated eagerly.
"""

from .first_call import CompileOnFirstCall, inductor_options
from .one_graph import compiled, no_programs, require_compiled
from .saved import SavedCompile
from .split import split_compiled

__all__ = ["CompileOnFirstCall", "SavedCompile", "compiled", "inductor_options", "no_programs", "require_compiled",
           "split_compiled"]
