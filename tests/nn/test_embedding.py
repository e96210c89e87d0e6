"""Embedding against torch.nn.Embedding: values, gradients, padding_idx, transforms, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import interop, nn, random, tree
from tests.utils import TOL, assert_apply_pure, assert_trees_close


@pytest.mark.parametrize("padding_idx", [None, 0, -1])
def test_matches_torch_values_and_grads(padding_idx, dtype, getkey):
    block = nn.Embedding(10, 4, padding_idx=padding_idx)
    torch.manual_seed(0)
    twin = torch.nn.Embedding(10, 4, padding_idx=padding_idx, dtype=dtype)
    params, state = interop.from_torch(block, twin)
    ids = torch.tensor([[0, 3, 9, 3], [9, 9, 1, 0]])
    y, _ = block.apply(params, state, ids)
    assert_trees_close(y, twin(ids).detach(), **TOL[dtype])

    cot = random.normal(getkey(), (2, 4, 4), dtype)
    grads = torch.func.grad(lambda p: (block.apply(p, state, ids)[0] * cot).sum())(params)
    (twin(ids) * cot).sum().backward()
    assert_trees_close(grads, {"weight": twin.weight.grad}, **TOL[dtype])
    if padding_idx is not None:
        assert not grads["weight"][padding_idx].any()          # the padding row learns nothing


def test_init_is_standard_normal_with_zero_padding_row(getkey):
    params, state = nn.Embedding(1000, 64, padding_idx=3).init(getkey())
    w = params["weight"]
    assert state == {} and w.shape == (1000, 64) and w.dtype == torch.float32
    assert not w[3].any()
    rest = torch.cat([w[:3], w[4:]])
    assert abs(rest.mean().item()) < 0.02 and abs(rest.std().item() - 1.0) < 0.02


def test_names_shapes_and_round_trip(getkey):
    block = nn.Embedding(7, 3)
    params, state = block.init(getkey())
    twin = torch.nn.Embedding(7, 3)
    assert {k: v.shape for k, v in tree.flatten(params).items()} == {k: v.shape for k, v in twin.state_dict().items()}
    interop.to_torch(block, params, state, twin)
    assert_trees_close(interop.from_torch(block, twin)[0], params, rtol=0, atol=0)


@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_accepts_every_integer_dtype(id_dtype, getkey):
    block = nn.Embedding(5, 2)
    params, state = block.init(getkey())
    y, _ = block.apply(params, state, torch.tensor([4, 0, 2], dtype=id_dtype))
    assert torch.equal(y, params["weight"][torch.tensor([4, 0, 2])])


@pytest.mark.parametrize("bad", [5, -1, 17])
def test_out_of_range_ids_raise_naming_the_range_and_the_id(getkey, bad):
    block = nn.Embedding(5, 2)
    params, state = block.init(getkey())
    with pytest.raises(ValueError, match=rf"Embedding\(.*ids must lie in \[0, 5\) \(num_embeddings\); got id {bad} "):
        block.apply(params, state, torch.tensor([1, bad, 2]))


def test_out_of_range_ids_under_vmap_are_left_to_torch_lookup(getkey):
    """Values of wrapped tensors cannot be read: the range check is skipped, torch's lookup raises."""
    block = nn.Embedding(5, 2)
    params, state = block.init(getkey())
    with pytest.raises(IndexError, match="index out of range"):
        torch.func.vmap(lambda s: block.apply(params, state, s)[0])(torch.tensor([[5]]))


def test_params_of_another_table_raise(getkey):
    block = nn.Embedding(5, 2)
    params, state = nn.Embedding(6, 2).init(getkey())
    with pytest.raises(ValueError, match=r"Embedding\(.*params\['weight'\] must be \[5, 2\]; got float32 \[6, 2\]"):
        block.apply(params, state, torch.tensor([1]))


def test_params_on_another_device_raise(getkey):
    block = nn.Embedding(5, 2)
    params = {"weight": torch.empty(5, 2, device="meta")}
    with pytest.raises(ValueError, match=r"params\['weight'\] must be on the input's device cpu; got .* on meta"):
        block.apply(params, {}, torch.tensor([1]))


def test_vmap_over_sequences_equals_batched_call(getkey):
    block = nn.Embedding(6, 3)
    params, state = block.init(getkey())
    ids = random.randint(getkey(), (4, 5), 0, 6)
    per_seq = torch.func.vmap(lambda s: block.apply(params, state, s)[0])(ids)
    assert_trees_close(per_seq, block.apply(params, state, ids)[0])


def test_compile_fullgraph_equals_eager(getkey):
    block = nn.Embedding(6, 3)
    params, state = block.init(getkey())
    ids = torch.tensor([[1, 5], [0, 0]])
    compiled = torch.compile(lambda p, i: block.apply(p, {}, i)[0], fullgraph=True)
    assert_trees_close(compiled(params, ids), block.apply(params, state, ids)[0])


def test_apply_is_pure(getkey):
    block = nn.Embedding(6, 3, padding_idx=0)
    params, state = block.init(getkey())
    assert_apply_pure(block, params, state, torch.tensor([0, 1, 2]))


@given(shape=st.lists(st.integers(0, 3), max_size=3), n=st.integers(1, 6), dim=st.integers(1, 5))
def test_output_shape(shape, n, dim):
    block = nn.Embedding(n, dim)
    params, state = block.init(random.key(0))
    y, _ = block.apply(params, state, torch.zeros(shape, dtype=torch.int64))
    assert y.shape == (*shape, dim) and y.dtype == torch.float32


def test_rejects_float_ids():
    block = nn.Embedding(5, 2)
    with pytest.raises(TypeError, match=r"Embedding\(num_embeddings=5, embedding_dim=2, padding_idx=None\)\.apply: ids must be an integer tensor \(int64 ids\); got float32 \[3\]"):
        block.apply(block.init(random.key(0))[0], {}, torch.zeros(3))


def test_rejects_bool_ids():
    block = nn.Embedding(5, 2)
    with pytest.raises(TypeError, match=r"Embedding\(.*\)\.apply: ids must be an integer tensor.*got bool \[3\]"):
        block.apply(block.init(random.key(0))[0], {}, torch.zeros(3, dtype=torch.bool))


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_embeddings=0, embedding_dim=2), "num_embeddings must be a positive int"),
    (dict(num_embeddings=5, embedding_dim=-2), "embedding_dim must be a positive int"),
    (dict(num_embeddings=5, embedding_dim=2, padding_idx=5), r"padding_idx must be None or an int in \[-5, 5\)"),
])
def test_rejects_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.Embedding(**kwargs)
