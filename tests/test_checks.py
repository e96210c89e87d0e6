"""The parameter-tree checks: messages, and that they cost nothing under compile and vmap.

The per-block messages are tabled in ``tests/hostile``; here the helper itself and the
properties the tables cannot show: a fullgraph compile and a vmap over stacked params
still pass, a wrong tree raises under ``torch.compile`` too, autocast and half inputs keep
working.
"""

from __future__ import annotations

import pytest
import torch

from deepfn import nn, random, tree
from deepfn._checks import check_keys, check_params, describe
from deepfn.models import MLP
from tests.utils import assert_trees_close


def test_check_params_accepts_the_layout_and_names_each_mismatch():
    expected = {"weight": (3, 4), "inner": {"bias": (3,)}}
    good = {"weight": torch.zeros(3, 4), "inner": {"bias": torch.zeros(3)}}
    check_params("Block.apply", good, expected)
    with pytest.raises(ValueError, match=r"^Block\.apply: params\['inner'\]\['bias'\] must be \[3\]; got float32 \[4\]$"):
        check_params("Block.apply", {**good, "inner": {"bias": torch.zeros(4)}}, expected)
    with pytest.raises(ValueError, match=r"params\['inner'\] is missing 'bias' and has unexpected 'b'; "
                                         r"expected keys \['bias'\] \(from str\.init\), got \['b'\]"):
        check_params("Block.apply", {**good, "inner": {"b": torch.zeros(3)}}, expected)
    with pytest.raises(TypeError, match=r"params\['inner'\] must be a dict with keys \['bias'\]"):
        check_params("Block.apply", {**good, "inner": torch.zeros(3)}, expected)


def test_check_params_with_like_checks_device_and_dtype_but_not_under_autocast():
    params = {"w": torch.zeros(2)}
    check_params("B.apply", params, {"w": (2,)}, like=torch.zeros(1))
    with pytest.raises(TypeError, match=r"params\['w'\] must have the input's dtype float64"):
        check_params("B.apply", params, {"w": (2,)}, like=torch.zeros(1, dtype=torch.float64))
    check_params("B.apply", params, {"w": (2,)}, like=torch.zeros(1, dtype=torch.float64), dtype=False)
    with torch.autocast("cpu", torch.bfloat16):   # autocast casts per op: mixed dtypes are its job
        check_params("B.apply", params, {"w": (2,)}, like=torch.zeros(1, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"params\['w'\] must be on the input's device cpu; got float32 \[2\] on meta"):
        check_params("B.apply", {"w": torch.zeros(2, device="meta")}, {"w": (2,)}, like=torch.zeros(1))


def test_check_keys_names_missing_and_unexpected_children():
    check_keys("C.apply", {"a": {}, "b": {}}, ["a", "b"])
    with pytest.raises(ValueError, match=r"C\.apply: state is missing 'b' and has unexpected 'c'"):
        check_keys("C.apply", {"a": {}, "c": {}}, ["a", "b"], name="state")


def test_dense_under_autocast_takes_float32_params_with_bfloat16_inputs():
    block = nn.Dense(4, 3)
    params, state = block.init(random.key(0))
    with torch.autocast("cpu", torch.bfloat16):
        y, _ = block.apply(params, state, random.normal(random.key(1), (2, 4)).bfloat16())
    assert y.dtype == torch.bfloat16


def test_checked_blocks_compile_whole_and_equal_eager():
    model = MLP(6, (8, 4), 3, batch_norm=True)
    params, state = model.init(random.key(0))
    x = random.normal(random.key(1), (5, 6))
    compiled = torch.compile(lambda p, s, x: model.apply(p, s, x, train=True), fullgraph=True)
    got, expected = compiled(params, state, x), model.apply(params, state, x, train=True)
    assert_trees_close(got, expected)   # Inductor's fused kernels round differently from eager


def test_a_wrong_tree_raises_the_same_error_under_compile():
    block = nn.Dense(4, 3)
    compiled = torch.compile(lambda p, x: block.apply(p, {}, x)[0])
    other, _ = nn.Dense(4, 5).init(random.key(0))
    with pytest.raises(ValueError, match=r"params\['weight'\] must be \[3, 4\]; got float32 \[5, 4\]"):
        compiled(other, random.normal(random.key(1), (2, 4)))


def test_vmap_over_stacked_params_sees_each_members_shapes():
    block = nn.Dense(4, 3)
    stacked = tree.stack([block.init(random.key(i))[0] for i in range(3)])
    x = random.normal(random.key(9), (2, 4))
    y = torch.func.vmap(lambda p: block.apply(p, {}, x)[0])(stacked)
    assert y.shape == (3, 2, 3)
    # Inside vmap a member's weight is [3, 4]: the message shows the shape the block sees.
    with pytest.raises(ValueError, match=r"params\['weight'\] must be \[3, 5\]; got float32 \[3, 4\]"):
        torch.func.vmap(lambda p: nn.Dense(5, 3).apply(p, {}, torch.zeros(2, 5))[0])(stacked)


def test_passing_inits_pair_as_params_names_the_pair_without_printing_tensors():
    layer = nn.Dense(4, 2)
    pair = layer.init(random.key(0))
    with pytest.raises(TypeError) as info:
        layer.apply(pair, {}, torch.ones(3, 4))
    message = str(info.value)
    assert "got tuple of 2: (dict with keys ['weight', 'bias'], dict with keys [])" in message
    assert "init returns a (params, state) pair: pass its first item as params" in message
    assert "tensor(" not in message and "\n" not in message


def test_describe_keeps_short_reprs_and_cuts_long_ones_to_one_line():
    assert describe(3) == "int 3"
    assert describe([1, 2]) == "list [1, 2]"
    assert describe(torch.zeros(2, 3)) == "float32 [2, 3]"
    long_list = describe(list(range(100)))
    assert long_list == "list of 100: (int, int, int, int, ...)"
    long_text = describe("x" * 200)
    assert long_text.startswith("str 'xxx") and long_text.endswith("...") and len(long_text) < 90
    many_keys = describe({i: torch.zeros(1) for i in range(20)})
    assert many_keys.startswith("dict with keys [0, 1, 2") and many_keys.endswith("...]")
