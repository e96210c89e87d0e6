"""The one seam between deepfn and torch's private internals.

Rule: no module of ``deepfn`` or ``scripts`` outside this package names a private torch
attribute. Private means a dotted name rooted at ``torch`` with a segment after ``torch`` that
starts with ``_`` and is not a dunder (``torch._dynamo``, ``torch._C._functorch``,
``torch.utils._pytree``, ``torch._foreach_add_``; ``torch.__version__`` is public), in an
attribute chain, an ``import``/``from ... import``, or a ``getattr(torch, "_...")``.
``tests/test_torch_seam.py`` enforces it by parsing every module.

Also :func:`on_dynamo_import`, which defers deepfn's public ``torch.compiler`` settings to
Dynamo's import so that ``import deepfn`` does not import Dynamo.

Everything here is either a re-export with no public twin in torch 2.14 (``pytree``) or a
*hook*: a small function that uses an internal to go faster, with a public-API fallback that
gives the same results. The version gate (:mod:`deepfn._torch.gate`) turns every hook off on a
torch release other than ``TESTED`` (one warning per process), and turns one hook off when its
private call raises (one warning naming it): never a wrong result, never a crash.

Hooks: ``plain_eager`` / ``transforms_active`` (functorch probes), ``cpu_bf16_in_hardware``
(``torch.cpu``'s instruction-set probes), ``foreach`` /
``foreach_usable`` / ``unscale_and_check_`` (``torch._foreach_*`` and the AMP unscale kernel),
``open_node`` / ``rebuild_node`` (pytree registry), ``register_pointwise_lowering``
(Inductor), ``compiler_settings`` / ``forget_module_sources`` / ``guard_pickler_patched``
(Dynamo, for saved compiles), ``mark_dynamic`` (a step's batch dims symbolic), the bench's
compile counters; ``traceable_all_gather`` (a functional collective that compiled ZeRO-3
graphs gather with); and ``hook_on("guard_filter")``,
which gates deepfn's reading of Dynamo's guard names.
"""

from __future__ import annotations

from .collectives import traceable_all_gather
from .dynamo import (
    compiler_settings,
    forget_module_sources,
    graphs_compiled,
    guard_pickler_class,
    guard_pickler_patched,
    mark_dynamic,
)
from .dynamo_import import on_dynamo_import
from .gate import HOOKS, TESTED, hook_on, release, turn_off
from .inductor import (
    clear_compile_caches,
    clear_kernel_caches,
    fx_graph_cache_hits,
    phase_seconds,
    register_pointwise_lowering,
)
from .kernels import foreach, unscale_and_check_
from .kernels import usable as foreach_usable
from .probes import cpu_bf16_in_hardware, plain_eager, transforms_active
from .trees import open_node, pytree, rebuild_node

__all__ = [
    "TESTED", "HOOKS", "hook_on", "turn_off", "release",
    "plain_eager", "transforms_active", "cpu_bf16_in_hardware",
    "foreach", "foreach_usable", "unscale_and_check_",
    "pytree", "open_node", "rebuild_node",
    "register_pointwise_lowering", "clear_compile_caches", "clear_kernel_caches", "phase_seconds",
    "fx_graph_cache_hits",
    "compiler_settings", "forget_module_sources", "guard_pickler_class", "guard_pickler_patched", "mark_dynamic",
    "graphs_compiled",
    "traceable_all_gather", "on_dynamo_import",
]
