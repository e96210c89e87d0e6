"""ZeRO-3's gather one unit at a time, in one process (a world of one): the units chosen, the
gradients against ``torch.func.grad``, and the peak bytes of gathered parameters counted by
the gatherer's own bookkeeping (weak references to every gathered tensor): about one unit,
never the whole model. The multiprocess tests (``test_shard_multiprocess``) check the same
path's parameters against one process with 2 and 4 ranks."""

from __future__ import annotations

import pytest
import torch

from deepfn import losses, models, random
from deepfn._torch import pytree
from deepfn.amp import Policy
from deepfn.distributed import shard_collectives
from deepfn.distributed.shard_gather import GatherCount, _whole_leaves, grad_per_unit
from deepfn.distributed.shard_units import LazyParams, plan_units
from deepfn.tree import flat as _flat

DEEP_MLP = models.MLP(32, [64] * 8, 10)
SMALL_GPT = models.GPT(vocab_size=50, max_len=8, d_model=32, n_layers=4, n_heads=2)


def _case(model, inputs, labels):
    params, state = model.init(random.key(0))

    def objective(p, x, y):
        logits, _ = model.apply(p, state, x, train=True)
        return losses.cross_entropy(logits.float(), y), logits
    return params, objective, inputs, labels


def _mlp():
    return _case(DEEP_MLP, random.normal(random.key(1), (8, 32)), torch.arange(8) % 10)


def _gpt():
    ids = random.randint(random.key(1), (2, 8), 0, 50)
    return _case(SMALL_GPT, ids, ids.roll(-1, 1))


def _run(params, objective, *args, dtypes=None):
    leaves, spec = _flat.flatten(params)
    chunks = [x.reshape(-1) for x in leaves]   # a world of one: each chunk is the flat leaf
    plan = plan_units(_flat.unflatten(spec, chunks))
    count = GatherCount()
    grads, (value, _) = grad_per_unit(objective, chunks, [tuple(x.shape) for x in leaves], plan,
                                      dtypes or [x.dtype for x in leaves], *args, count=count)
    return leaves, plan, grads, value, count


def _unit_bytes(leaves, unit) -> int:
    return sum(leaves[i].numel() * leaves[i].element_size() for i in unit)


def _gpt_remat():
    ids = random.randint(random.key(1), (2, 8), 0, 50)
    model = models.GPT(vocab_size=50, max_len=8, d_model=32, n_layers=4, n_heads=2, remat=True)
    return _case(model, ids, ids.roll(-1, 1))


@pytest.mark.parametrize("make", [_mlp, _gpt, _gpt_remat], ids=["mlp_8_layers", "gpt_4_layers", "gpt_remat"])
def test_gradients_equal_torch_func_grad_and_the_peak_is_one_unit(make):
    params, objective, x, y = make()
    want, want_value = torch.func.grad_and_value(lambda p: objective(p, x, y)[0])(params)
    leaves, plan, grads, value, count = _run(params, objective, x, y)
    assert value == want_value
    for g, w in zip(grads, _flat.flatten(want)[0], strict=True):
        torch.testing.assert_close(g, w.reshape(-1), rtol=1e-6, atol=1e-7)
    model_bytes = sum(x.numel() * x.element_size() for x in leaves)
    largest = max(_unit_bytes(leaves, u) for u in plan.units)
    assert len(plan.units) >= 9 and largest < model_bytes / 4
    # The bound is 1/N of the model (the chunks) plus one block gathered: the gathered
    # tensors alive at once never exceed the largest unit (a tied embedding read twice included);
    # under remat, a remat'd layer's arguments are gathered whole at its boundary.
    block = largest
    if "remat" in make.__name__:
        block = sum(x.numel() * x.element_size() for x in _flat.flatten(params["layers"]["0"])[0])
    assert 0 < count.peak_bytes <= block < model_bytes / 4
    assert count.live_bytes == 0   # everything gathered is freed once the gradient is out


def test_each_unit_is_gathered_once_in_forward_and_at_most_once_in_backward():
    params, objective, x, y = _mlp()
    _, plan, _, _, count = _run(params, objective, x, y)
    # The first layer's weight is not needed in backward (the input needs no gradient).
    assert len(plan.units) < count.gathers < 2 * len(plan.units)


def test_a_bf16_compute_dtype_gathers_half_tensors_and_returns_float32_gradients():
    params, objective, x, y = _mlp()
    leaves, _, grads, _, count = _run(params, objective, x.bfloat16(), y,
                                      dtypes=[torch.bfloat16] * len(_flat.flatten(params)[0]))
    policy = Policy.from_string("params=float32,compute=bfloat16,output=float32")
    want = torch.func.grad(lambda p: objective(policy.cast_to_compute(p), x.bfloat16(), y)[0])(params)
    for g, w in zip(grads, _flat.flatten(want)[0], strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w.reshape(-1))
    assert count.peak_bytes <= max(x.numel() for x in leaves) * 2 * 2   # bf16: 2 bytes a number


def test_units_are_the_layers_of_a_gpt_and_its_embeddings():
    params, *_ = _gpt()
    plan = plan_units(params)
    assert sorted(i for u in plan.units for i in u) == list(range(len(_flat.flatten(params)[0])))
    assert set(plan.root) == set(params)
    assert set(plan.root["layers"]) == {"0", "1", "2", "3"}   # opened: one unit per layer


def test_a_function_that_walks_the_lazy_tree_sees_plain_dicts_of_gathered_tensors():
    plan = plan_units({"a": {"w": torch.ones(2)}, "b": {"w": torch.ones(3)}}, units=1)
    lazy = LazyParams(plan.root, lambda uid: [torch.full((2 + uid,), float(uid))])
    leaves, spec = pytree.tree_flatten(lazy)   # what deepfn.remat does with its arguments
    assert [x.tolist() for x in leaves] == [[0.0, 0.0], [1.0, 1.0, 1.0]]
    assert type(pytree.tree_unflatten(leaves, spec)) is dict


def test_a_tree_that_is_not_plain_dicts_has_no_plan():
    assert plan_units({"a": [torch.ones(2)]}) is None
    assert plan_units({}) is None


def test_lazy_params_gathers_only_what_is_read():
    read: list[int] = []
    plan = plan_units({"a": {"w": torch.ones(2)}, "b": {"w": torch.ones(3)}}, units=1)
    lazy = LazyParams(plan.root, lambda uid: read.append(uid) or [torch.zeros(2 + uid)])
    assert sorted(lazy) == ["a", "b"] and "a" in lazy and len(lazy) == 2 and read == []
    assert lazy["b"]["w"].shape == (3,) and read == [1]
    assert lazy.get("c") is None and read == [1]


def test_a_chunk_that_is_not_floating_is_rejected():
    params, objective, x, y = _mlp()
    leaves, spec = _flat.flatten(params)
    chunks = [t.reshape(-1) for t in leaves]
    chunks[0] = chunks[0].long()
    plan = plan_units(_flat.unflatten(spec, chunks))
    with pytest.raises(TypeError, match="floating tensor; leaf 0"):
        grad_per_unit(objective, chunks, [tuple(t.shape) for t in leaves], plan, [t.dtype for t in leaves], x, y)


def test_a_unit_s_large_unpadded_gradients_are_reduce_scattered_whole():
    weight, bias = torch.zeros(8, 4), torch.zeros(8)
    assert _whole_leaves([weight, bias], [16, 4], 2) == [0]          # the bias is under 1/4 of the bytes
    assert _whole_leaves([weight, torch.zeros(6, 4)], [16, 12], 2) == [0, 1]
    assert _whole_leaves([torch.zeros(5, 5)], [13], 2) == []         # 25 numbers pad to 26: packed
    assert _whole_leaves([weight, bias], [32, 8], 1) == []           # a world of one: nothing to scatter


def test_a_gradient_that_does_not_fill_its_chunks_is_refused(monkeypatch):
    monkeypatch.setattr(shard_collectives, "world_size", lambda: 2)
    with pytest.raises(ValueError, match=r"caller: a gradient reduce-scattered whole must have a multiple of 2 "
                                         r"elements \(one chunk per rank\); got shape \[5\]"):
        shard_collectives.reduce_scatter_mean_whole(torch.zeros(5), "caller")


def test_a_whole_gradient_in_a_world_of_one_is_its_own_chunk():
    g = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(shard_collectives.reduce_scatter_mean_whole(g, "caller"), g.reshape(-1))
