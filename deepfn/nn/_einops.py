"""einops' ``rearrange``, registered so that each call is one op in a ``torch.compile`` graph.

deepfn's reshapes import ``rearrange`` from here, never from einops, so that the registration
below has run. Axis letters are :mod:`deepfn.typing`'s alphabet (``b`` batch, ``t``/``s``
query/key length, ``h`` heads, ``d`` head dim, ``c`` channels, ``e`` embedding, ``k`` beam).

Why register: with einops 0.8 on torch >= 2.8 neither library does (einops'
``allow_ops_in_compiled_graph`` returns early there), so Dynamo traces einops' pattern parser
in Python on every call, its ``lru_cache`` unused, far more tracing than the views it yields.
:func:`torch.compiler.allow_in_graph` (public) makes a call one node of Dynamo's graph;
AOTAutograd then runs einops on fake tensors, where its cache works, and records the plain
``reshape``/``permute`` einops emits, so compiled code is unchanged. einops' own function is
registered, not a wrapper: AOTAutograd's on-disk cache accepts ``einops.einops.rearrange`` in a
graph and bypasses graphs holding other Python functions, and a bypass re-runs AOTAutograd
at every warm start. Figures: ``docs/benchmarks.md`` ("einops reshapes").

This is a process-wide setting, the one einops itself makes on torch 2.0-2.7: importing deepfn
makes every ``einops.rearrange`` call one graph op, users' calls included (same results). It is
made when Dynamo is first imported (:func:`deepfn._torch.on_dynamo_import`), before any trace.
``einops.reduce`` is not registered (the cache rejects it); deepfn pools with ``Tensor.mean``.
"""

from __future__ import annotations

import torch
from einops import rearrange

from .._torch import on_dynamo_import

__all__ = ["rearrange"]

# When Dynamo is imported (by a compile), not now: importing it costs seconds.
on_dynamo_import(lambda: torch.compiler.allow_in_graph(rearrange))
