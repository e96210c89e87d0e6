"""Tests of deepfn.tree: leaf-wise maps, sizes, casts, norms against torch's clip utilities,
stack/unstack and flatten/unflatten round trips, structure errors, one compiled test."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import random, tree
from tests.utils import assert_trees_close


def _tree(dtype=torch.float32):
    k1, k2, k3 = random.split(random.key(0), 3)
    return {
        "dense": {"weight": random.normal(k1, (3, 4), dtype), "bias": random.normal(k2, (3,), dtype)},
        "norm": {"scale": random.normal(k3, (4,), dtype)},
        "steps": torch.tensor(5),
    }


names = st.text(alphabet="abcxyz_0", min_size=0, max_size=3)
leaf_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
dict_trees = st.recursive(
    leaf_shapes,
    lambda children: st.dictionaries(names, children, min_size=1, max_size=3),
    max_leaves=8,
).filter(lambda t: isinstance(t, dict))   # min_size=1: no empty sub-dict, which flatten drops


def _walk(node, counter, seed):
    """Replace every shape of a drawn shape-tree by a distinct tensor of that shape."""
    if isinstance(node, dict):
        return {k: _walk(v, counter, seed) for k, v in node.items()}
    return random.normal(random.fold_in(random.key(seed), next(counter)), node)


def test_map_over_several_trees_and_leaves_order():
    a, b = _tree(), _tree()
    out = tree.map(lambda x, y: x + y, a, b)
    assert torch.equal(out["dense"]["weight"], 2 * a["dense"]["weight"])
    assert [x.shape for x in tree.leaves(a)] == [(3, 4), (3,), (4,), ()]
    assert tree.leaves({}) == []


def test_map_structure_mismatch_names_both_structures():
    a = {"w": torch.ones(2), "b": torch.ones(1)}
    with pytest.raises(ValueError, match=r"deepfn\.tree\.map: tree 1 has a different structure(?s:.*)tree 0: TreeSpec(?s:.*)tree 1: TreeSpec"):
        tree.map(torch.add, a, {"w": torch.ones(2)})
    with pytest.raises(ValueError, match=r"deepfn\.tree\.map: tree 1 has a different structure"):
        tree.map(torch.add, a, {"w": torch.ones(2), "c": torch.ones(1)})


def test_size_and_zeros_like():
    t = _tree()
    assert tree.size(t) == 12 + 3 + 4 + 1
    z = tree.zeros_like(t)
    assert tree.structure(z) == tree.structure(t)
    for x, y in zip(tree.leaves(z), tree.leaves(t), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape and not x.any()
    assert tree.size({}) == 0


def test_cast_touches_floating_leaves_only():
    t = _tree()
    t["mask"] = torch.tensor([True, False])
    out = tree.cast(t, torch.bfloat16)
    assert out["dense"]["weight"].dtype == torch.bfloat16
    assert out["steps"].dtype == torch.int64 and out["mask"].dtype == torch.bool
    assert t["dense"]["weight"].dtype == torch.float32          # input untouched
    assert torch.equal(out["dense"]["weight"], t["dense"]["weight"].to(torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_global_norm_equals_torch(dtype):
    t = _tree(dtype)
    floats = [x for x in tree.leaves(t) if x.is_floating_point()]
    expected = torch.nn.utils.get_total_norm(floats)
    got = tree.global_norm(t)
    assert got.dtype == dtype and got.shape == ()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    grads = [x.clone() for x in floats]
    params = [torch.nn.Parameter(torch.zeros_like(x)) for x in floats]
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    total = torch.nn.utils.clip_grad_norm_(params, max_norm=1e9)
    torch.testing.assert_close(got, total, rtol=0, atol=0)
    ref = torch.sqrt(sum((x.double() ** 2).sum() for x in floats))
    torch.testing.assert_close(got.double(), ref, rtol=1e-6, atol=0)


def test_global_norm_without_floats_raises():
    with pytest.raises(ValueError, match=r"deepfn\.tree\.global_norm: the tree has no floating-point leaves"):
        tree.global_norm({"n": torch.tensor(3)})


def test_stack_unstack_round_trip():
    trees = [_tree(), tree.map(lambda x: x + 1, _tree()), tree.zeros_like(_tree())]
    stacked = tree.stack(trees)
    assert stacked["dense"]["weight"].shape == (3, 3, 4) and stacked["steps"].shape == (3,)
    back = tree.unstack(stacked)
    assert len(back) == 3
    for a, b in zip(back, trees, strict=True):
        assert tree.all_equal(a, b)


def test_stack_errors():
    with pytest.raises(ValueError, match=r"deepfn\.tree\.stack: needs at least one tree"):
        tree.stack([])
    with pytest.raises(ValueError, match=r"deepfn\.tree\.stack: tree 1 must have the structure of tree 0"):
        tree.stack([{"a": torch.ones(1)}, {"b": torch.ones(1)}])
    with pytest.raises(ValueError, match=r"deepfn\.tree\.stack: leaf 'a\.b' must have one shape in every tree; "
                                         r"got \[\[1\], \[1\], \[2\]\]"):
        tree.stack([{"a": {"b": torch.ones(1)}}] * 2 + [{"a": {"b": torch.ones(2)}}])


def test_cast_to_a_non_floating_dtype_raises():
    with pytest.raises(TypeError, match=r"deepfn\.tree\.cast: dtype must be floating .*got torch\.int64"):
        tree.cast({"a": torch.ones(1)}, torch.int64)


def test_unstack_errors():
    with pytest.raises(ValueError, match=r"deepfn\.tree\.unstack: every leaf needs leading size 2; got shape \[3\]"):
        tree.unstack({"a": torch.ones(2), "b": torch.ones(3)})
    with pytest.raises(ValueError, match=r"deepfn\.tree\.unstack: every leaf needs leading size"):
        tree.unstack({"a": torch.ones(2), "b": torch.tensor(1.0)})


def test_flatten_names_and_unflatten():
    t = _tree()
    flat = tree.flatten(t)
    assert list(flat) == ["dense.weight", "dense.bias", "norm.scale", "steps"]
    assert tree.all_equal(tree.unflatten(flat), t)
    assert list(tree.flatten(t, sep="/")) == ["dense/weight", "dense/bias", "norm/scale", "steps"]
    assert tree.all_equal(tree.unflatten(tree.flatten(t, sep="/"), sep="/"), t)
    assert list(tree.flatten({"layers": [torch.ones(1), (torch.ones(1),)]})) == ["layers.0", "layers.1.0"]


def test_flatten_empty_key_keeps_its_level():
    # regression: the root used to be the empty prefix, which swallowed an empty key
    t = {"": {"b": torch.ones(1)}, "b": torch.zeros(1)}
    flat = tree.flatten(t)
    assert set(flat) == {".b", "b"}
    assert tree.all_equal(tree.unflatten(flat), t)


def test_flatten_unflatten_errors():
    with pytest.raises(ValueError, match=r"deepfn\.tree\.flatten: key 'a\.b' contains the separator '\.'"):
        tree.flatten({"a.b": torch.ones(1)})
    with pytest.raises(TypeError, match=r"deepfn\.tree\.flatten: keys must be str; got int 3"):
        tree.flatten({3: torch.ones(1)})
    with pytest.raises(ValueError, match=r"deepfn\.tree\.flatten: sep must be a non-empty str"):
        tree.flatten({"a": torch.ones(1)}, sep="")
    with pytest.raises(ValueError, match=r"deepfn\.tree\.unflatten: 'a\.b' nests under the leaf 'a'"):
        tree.unflatten({"a": torch.ones(1), "a.b": torch.ones(1)})
    with pytest.raises(ValueError, match=r"deepfn\.tree\.unflatten: 'a' collides with another key"):
        tree.unflatten({"a.b": torch.ones(1), "a": torch.ones(1)})
    with pytest.raises(TypeError, match=r"deepfn\.tree\.unflatten: keys must be str; got int 1"):
        tree.unflatten({1: torch.ones(1)})


@given(shape_tree=dict_trees, sep=st.sampled_from([".", "/", "::"]))
def test_property_flatten_round_trip(shape_tree, sep):
    t = _walk(shape_tree, iter(range(10**6)), 0)
    flat = tree.flatten(t, sep=sep)
    assert len(flat) == len(tree.leaves(t))
    assert tree.size(flat) == tree.size(t)
    assert tree.all_equal(tree.unflatten(flat, sep=sep), t)


@given(shape_tree=dict_trees, n=st.integers(1, 3))
def test_property_stack_unstack_and_map(shape_tree, n):
    trees = [_walk(shape_tree, iter(range(10**6)), seed) for seed in range(n)]
    stacked = tree.stack(trees)
    assert tree.size(stacked) == n * tree.size(trees[0])
    for a, b in zip(tree.unstack(stacked), trees, strict=True):
        assert tree.all_equal(a, b)
    doubled = tree.map(lambda x, y: x + y, trees[0], trees[0])
    assert_trees_close(doubled, tree.map(lambda x: 2 * x, trees[0]), rtol=0, atol=0)
    assert tree.all_equal(tree.unflatten(tree.flatten(tree.zeros_like(trees[0]))), tree.zeros_like(trees[0]))


def test_compiled_tree_ops_equal_eager():
    def fn(t):
        other = tree.map(lambda x: x * 2, tree.cast(t, torch.float64))
        stacked = tree.stack([other, tree.zeros_like(other)])
        first = tree.unstack(stacked)[0]
        flat = tree.flatten(first)
        return tree.unflatten(flat), tree.global_norm(t), tree.size(t)

    t = {"a": torch.arange(3.0), "b": {"c": torch.ones(2, 2), "n": torch.tensor(3)}}
    got = torch.compile(fn, fullgraph=True)(t)
    want = fn(t)
    assert tree.all_equal(got[0], want[0])
    assert torch.equal(got[1], want[1]) and got[2] == want[2]


# Any nesting the fast dict walk meets: dicts, lists, tuples, None, non-tensor leaves.
mixed_trees = st.recursive(
    st.one_of(st.integers(0, 3).map(lambda n: torch.arange(n, dtype=torch.float32)), st.booleans(),
              st.floats(-2, 2), st.none()),
    lambda children: st.one_of(st.dictionaries(names, children, max_size=3), st.lists(children, max_size=3),
                               st.lists(children, max_size=3).map(tuple)),
    max_leaves=10,
)


@given(mixed_trees)
def test_leaves_and_map_agree_with_torch_pytree(t):
    import torch.utils._pytree as pytree
    expected = pytree.tree_leaves(t)
    got = tree.leaves(t)
    assert len(got) == len(expected) and all(a is b for a, b in zip(got, expected, strict=True))
    ident = tree.map(lambda x: x, t)
    assert pytree.tree_structure(ident) == pytree.tree_structure(t)
    assert all(a is b for a, b in zip(pytree.tree_leaves(ident), expected, strict=True))
    same = tree.map(lambda x, y: x is y, t, t)   # leaves paired in order across trees
    assert pytree.tree_structure(same) == pytree.tree_structure(t)
    assert pytree.tree_leaves(same) == [True] * len(expected)


def test_map_tells_apart_structures_the_fast_walk_sees_alike():
    # The same keys holding a tensor, a list of one tensor, or a nested dict: three structures.
    a, b, c = {"x": torch.ones(1)}, {"x": [torch.ones(1)]}, {"x": {"y": torch.ones(1)}}
    for one, other in ((a, b), (a, c), (b, c), ({"x": torch.ones(1), "y": None}, {"x": torch.ones(1)})):
        with pytest.raises(ValueError, match="different structure"):
            tree.map(lambda p, q: p, one, other)
