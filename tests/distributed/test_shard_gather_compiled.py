"""Compiled ZeRO-3 one unit at a time, in one process with a gloo group of one rank (the gather
is a real collective traced into the graphs): gradients against ``torch.func.grad``, and the
memory property measured from the profiler's allocations (each matched with its free by
address): the compiled forward keeps no unit's whole parameters for backward, and its peak is
about one unit, where gathering everything at once (``per_unit=False``) keeps the whole model.
The multiprocess tests (``test_shard_multiprocess``) check the same path with 2 and 4 ranks.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from deepfn import losses, models, random
from deepfn._torch import gate
from deepfn.distributed import shard_gather_compiled as sgc
from deepfn.distributed.shard_units import plan_units
from deepfn.testing import allocated
from deepfn.train.compile import compiled
from deepfn.tree import flat as _flat

DEEP_MLP = models.MLP(128, [128] * 8, 4)   # 9 units of ~64 KiB; activations of 2 rows are ~1 KiB


@pytest.fixture(scope="module")
def group_of_one():
    """A gloo process group of one rank, for this module only."""
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _case(per_unit: bool) -> dict:
    params, state = DEEP_MLP.init(random.key(0))
    x, y = random.normal(random.key(1), (2, 128)), torch.arange(2) % 4

    def objective(p, x, y):
        logits, _ = DEEP_MLP.apply(p, state, x, train=True)
        return losses.cross_entropy(logits, y), logits

    leaves, spec = _flat.flatten(params)
    chunks = [v.reshape(-1) for v in leaves]   # a world of one: each chunk is the flat leaf
    plan = plan_units(_flat.unflatten(spec, chunks))
    run = compiled(sgc.objective_on_chunks(objective, plan, [tuple(v.shape) for v in leaves],
                                           [v.dtype for v in leaves], per_unit=per_unit), None, "test")
    grads, (value, _) = sgc.grad_of_chunks(run, chunks, x, y)   # compiles
    inputs = [c.detach().requires_grad_() for c in chunks]
    box = {}

    def forward():
        with torch.enable_grad():
            box["value"] = run(inputs, x, y)[0]   # kept alive: what the forward saved for backward stays

    def backward():
        box["grads"] = torch.autograd.grad(box.pop("value"), inputs)

    forward_peak, forward_kept = allocated(lambda: (box.clear(), forward()), repeats=3)
    forward()
    backward_peak, _ = allocated(backward)
    want, want_value = torch.func.grad_and_value(lambda p: objective(p, x, y)[0])(params)
    return dict(grads=grads, value=value, want=_flat.flatten(want)[0], want_value=want_value,
                forward_peak=forward_peak, forward_kept=forward_kept, backward_peak=backward_peak,
                model=sum(v.numel() * v.element_size() for v in leaves),
                largest=max(sum(leaves[i].numel() * leaves[i].element_size() for i in u) for u in plan.units))


@pytest.fixture(scope="module")
def cases(group_of_one) -> dict[bool, dict]:
    return {per_unit: _case(per_unit) for per_unit in (True, False)}


@pytest.mark.parametrize("per_unit", [True, False])
def test_compiled_gradients_of_the_chunks_equal_torch_func_grad(cases, per_unit):
    got = cases[per_unit]
    torch.testing.assert_close(got["value"], got["want_value"])
    for g, w in zip(got["grads"], got["want"], strict=True):
        torch.testing.assert_close(g, w.reshape(-1), rtol=1e-5, atol=1e-6)


def _forward_holds_about_one_unit(got: dict) -> None:
    # Gathering a unit takes up to three buffers of its size at once (its chunks concatenated, the
    # collective's output, a leaf copied out of its columns), freed by the next unit's (the
    # profiler sometimes sees one of them overlap the next unit's first); what the forward keeps
    # for backward is its activations (~1 KiB a layer here), no whole parameter.
    assert got["largest"] < got["model"] / 8
    assert got["forward_peak"] <= 4.5 * got["largest"], (got["forward_peak"], got["largest"])
    assert got["forward_kept"] <= got["largest"] / 4, (got["forward_kept"], got["largest"])


def test_the_compiled_forward_holds_about_one_unit_and_keeps_none_for_backward(cases):
    _forward_holds_about_one_unit(cases[True])


def test_the_memory_check_fails_when_per_unit_gathering_is_off(cases):
    with pytest.raises(AssertionError):
        _forward_holds_about_one_unit(cases[False])
    # Every whole parameter kept for backward but the first layer's weight (the input needs no gradient).
    assert cases[False]["forward_kept"] >= cases[False]["model"] - cases[False]["largest"]


def test_the_compiled_backward_regathers_one_unit_at_a_time(cases):
    # In a world of one the gradient chunks are the whole model's gradients (the backward's
    # outputs); above them the re-gathered unit's buffers, its whole gradient and its
    # reduce-scattered copy: a few units, never the whole parameters a second time.
    got = cases[True]
    assert got["backward_peak"] <= got["model"] + 5 * got["largest"], (got["backward_peak"], got["model"])


def test_gradients_of_chunks_reject_a_chunk_that_is_not_floating():
    with pytest.raises(TypeError, match="must be a floating tensor; leaf 1 is torch.int64"):
        sgc.grad_of_chunks(lambda chunks: (chunks[0].sum(), None), [torch.ones(2), torch.ones(2, dtype=torch.long)])


def test_a_unit_read_twice_gets_both_gradients_and_an_unread_one_zeros():
    plan = plan_units({"a": {"w": torch.ones(3)}, "b": {"w": torch.ones(2)}}, units=1)

    def objective(p, x):
        return (p["a"]["w"] * x).sum() + (p["a"]["w"] ** 2).sum(), None

    run = sgc.objective_on_chunks(objective, plan, [(3,), (2,)], [torch.float32] * 2)
    grads, (value, _) = sgc.grad_of_chunks(run, [torch.arange(3.0), torch.ones(2)], torch.tensor(2.0))
    assert value == 2 * 3 + 5
    assert grads[0].tolist() == [2.0, 4.0, 6.0] and grads[1].tolist() == [0.0, 0.0]


def test_without_the_traceable_gather_a_group_falls_back_to_gathering_everything(group_of_one, monkeypatch):
    monkeypatch.setattr(gate, "GATE", gate.Gate("2.99.0"))
    with pytest.warns(RuntimeWarning, match="not the tested release"):
        assert not sgc.compiled_gather_available()
    plan = plan_units({"a": {"w": torch.ones(3)}})
    with pytest.raises(RuntimeError, match="no traceable all-gather in this torch"):
        sgc.objective_on_chunks(lambda p: (p["a"]["w"].sum(), None), plan, [(3,)], [torch.float32])
