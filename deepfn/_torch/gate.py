"""The version gate: every hook into torch's internals is on for the tested torch release only.

On torch ``TESTED``.x every hook is on until its private call fails; on any other release every
hook is off from the start, with one warning per process, and each caller takes its public-API
path (slower, the same numbers). A hook whose private call raises on the tested release (a
patch release that moved a name or changed a signature) is turned off with one warning naming
it, and its fallback is used from then on. The state only ever turns hooks off, and only
decides how a result is computed, never what it is.
"""

from __future__ import annotations

import warnings

import torch

#: The torch release (major.minor) whose internals deepfn's hooks were written and tested against.
TESTED = "2.14"

#: Every hook, by name: what each one accelerates (the fallback is in the module that owns it).
HOOKS = {
    "functorch_probe": "plain-eager probe (torch._C._functorch): eager fast paths",
    "foreach": "torch._foreach_* kernels: one kernel per op over all leaves",
    "amp_unscale": "torch._amp_foreach_non_finite_check_and_unscale_: one pass unscale + check",
    "pytree_nodes": "torch.utils._pytree's node registry: deepfn's fast flatten",
    "inductor_lowering": "an Inductor lowering for deepfn's custom ops (torch._inductor)",
    "guard_filter": "dropping Dynamo's guards on torch's and deepfn's globals",
    "guard_pickler": "saving nested functions whole in Dynamo's guard state (torch._dynamo)",
    "compiler_settings": "reading Dynamo's and Inductor's settings for saved compiles",
    "compile_stats": "Dynamo's and Inductor's counters and caches (bench only)",
    "cpu_isa": "torch.cpu's instruction-set probes: whether bf16 matrix products run in hardware",
    "compile_count": "Dynamo's count of compiled graphs: a compiled step's compile events in fit's history",
    "mark_dynamic": "torch._dynamo.mark_dynamic: a compiled step's chosen batch dims stay symbolic, one compile "
                    "for every size",
    "traceable_gather": "torch.ops._c10d_functional's all-gather traced into compiled ZeRO-3 graphs, one unit "
                        "at a time",
}


def release(version: str) -> str:
    """``"2.14"`` for ``"2.14.1+cu130"``: the major.minor part of a torch version string."""
    return ".".join(version.split("+")[0].split(".")[:2])


class Gate:
    """Which hooks are on in this process (one instance, :data:`GATE`; tests make their own)."""

    def __init__(self, torch_version: str) -> None:
        self.torch_version = torch_version
        self.tested = release(torch_version) == TESTED
        self.off: dict[str, str] = {}        # hook -> why it was turned off
        self.warned_release = False

    def on(self, hook: str) -> bool:
        """Whether ``hook`` may call torch's internals now."""
        if not self.tested:
            self.warn_release()
            return False
        return hook not in self.off

    def warn_release(self) -> None:
        if not self.warned_release:
            self.warned_release = True
            warnings.warn(
                f"deepfn: torch {self.torch_version} is not the tested release {TESTED}.x; deepfn's "
                f"accelerations that use torch internals are off ({', '.join(HOOKS)}) and the public "
                f"API is used instead: same results, slower", RuntimeWarning, stacklevel=3)

    def turn_off(self, hook: str, error: BaseException | str) -> None:
        """Turn ``hook`` off for the rest of the process, with one warning naming it and why."""
        if hook in self.off:
            return
        if hook not in HOOKS:
            raise ValueError(f"deepfn._torch: unknown hook {hook!r}; expected one of {list(HOOKS)}")
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.off[hook] = reason
        warnings.warn(f"deepfn: the {hook!r} acceleration ({HOOKS[hook]}) failed on torch "
                      f"{self.torch_version} ({reason}); it is off and the public API is used "
                      f"instead: same results, slower", RuntimeWarning, stacklevel=3)


GATE = Gate(torch.__version__)


def hook_on(hook: str) -> bool:
    """Whether ``hook`` may call torch's internals now (False, with one warning, on another release)."""
    return GATE.on(hook)


def turn_off(hook: str, error: BaseException | str) -> None:
    """Turn ``hook`` off for the rest of the process (one warning naming it and ``error``)."""
    GATE.turn_off(hook, error)
