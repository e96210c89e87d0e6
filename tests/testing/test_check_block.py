"""check_block: passes on deepfn's layers, fails (readably) on blocks that break one property."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from hypothesis import given, settings

from deepfn import nn, random
from deepfn.testing import CHECKS, check_block
from deepfn.testing import strategies as dst

EAGER = ["pure", "deterministic", "eval_state", "batch_independent", "vmap"]


def x34() -> torch.Tensor:
    return random.normal(random.key(7), (4, 3))


# -- deepfn's own layers pass ------------------------------------------------------------

def test_dense_passes_every_check():
    check_block(nn.Dense(3, 2), x34())


def test_layer_norm_passes_every_check():
    check_block(nn.LayerNorm(3), x34(), key=random.key(3))


def test_dropout_in_training_passes_every_training_check():
    check_block(nn.Dropout(0.5), x34(), key=random.key(1), train=True)


def test_dropout_in_evaluation_passes():
    check_block(nn.Dropout(0.5), x34(), checks=EAGER)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_batch_norm_passes(train):
    check_block(nn.BatchNorm(3), x34(), train=train)


def test_multi_head_attention_with_padding_mask_passes():
    x = random.normal(random.key(2), (2, 3, 4))
    mask = nn.padding_mask(torch.tensor([[5, 6, 0], [7, 0, 0]]), 0)
    check_block(nn.MultiHeadAttention(4, 2), x, None, mask)


def test_multi_head_attention_with_broadcast_causal_mask_passes():
    x = random.normal(random.key(2), (2, 3, 4))
    check_block(nn.MultiHeadAttention(4, 2), x, None, nn.causal_mask(3), checks=EAGER)


@settings(max_examples=10)
@given(x=dst.arrays((3, 4)), k=dst.keys())
def test_dense_passes_on_drawn_inputs_and_keys(x, k):
    check_block(nn.Dense(4, 2), x, key=k, checks=EAGER)


# -- blocks written to break exactly one property ------------------------------------------

@dataclass(frozen=True)
class Stateless:
    def init(self, key):
        return {"w": random.uniform(key, (3,), low=0.5, high=1.5)}, {}


class ScalesInput(Stateless):
    def apply(self, params, state, x, *, key=None, train=False):
        return x.mul_(2.0) * params["w"], state


class TouchesInput(Stateless):
    def apply(self, params, state, x, *, key=None, train=False):
        x.add_(0.0)            # same values, but an in-place write
        return x * params["w"], state


class DecaysParams(Stateless):
    def apply(self, params, state, x, *, key=None, train=False):
        params["w"].mul_(0.5)
        return x * params["w"], state


class GlobalRng(Stateless):
    def apply(self, params, state, x, *, key=None, train=False):
        return x * params["w"] + 0.0 * torch.rand(x.shape), state


class RowsMix(Stateless):
    def apply(self, params, state, x, *, key=None, train=False):
        return (x - x.mean(0)) * params["w"], state


@dataclass(frozen=True)
class Counter:
    def init(self, key):
        return {}, {"count": torch.zeros((), dtype=torch.int64)}

    def apply(self, params, state, x, *, key=None, train=False):
        return x * 2.0, {"count": state["count"] + 1}


@dataclass(frozen=True)
class CountsInPlace(Counter):
    def apply(self, params, state, x, *, key=None, train=False):
        if train:
            state["count"].add_(1)
        return x * 2.0, state


@dataclass(frozen=True)
class TreeOut(Stateless):
    """Returns a pytree; with ``mix`` one leaf mixes the rows."""
    mix: bool = False

    def apply(self, params, state, x, *, key=None, train=False):
        y = x * params["w"]
        z = y - y.mean(0) if self.mix else y.sum(-1)
        return {"y": y, "pair": (y * 2.0, z)}, state


class ItemBranch(Stateless):
    def apply(self, params, state, x, *, key=None, train=False):
        scale = 2.0 if params["w"].sum().item() > 0 else 1.0
        return x * scale, state


class GraphBreak(Stateless):
    def apply(self, params, state, x, *, key=None, train=False):
        torch._dynamo.graph_break()
        return x * params["w"], state


@dataclass(frozen=True)
class CallCounter:
    calls: list = field(default_factory=list)

    def init(self, key):
        return {}, {}

    def apply(self, params, state, x, *, key=None, train=False):
        self.calls.append(None)
        return x * len(self.calls), state


def fails(check, block, *inputs, **kwargs) -> str:
    with pytest.raises(AssertionError) as info:
        check_block(block, *inputs, checks=[check], **kwargs)
    text = str(info.value)
    assert text.startswith(f"{check}: "), text
    assert type(block).__name__ in text, text
    return text


def test_pure_fails_on_a_block_that_scales_its_input_in_place():
    text = fails("pure", ScalesInput(), x34())
    assert "inputs in place" in text and "largest difference" in text and "inputs[0][" in text


def test_pure_fails_on_an_in_place_write_that_keeps_values():
    text = fails("pure", TouchesInput(), x34())
    assert "version counter 0 -> 1" in text and "largest difference 0 at inputs[0]" in text


def test_pure_fails_on_a_block_that_mutates_its_params():
    text = fails("pure", DecaysParams(), x34())
    assert "params in place" in text and "params['w']" in text and "largest difference" in text


def test_pure_fails_on_global_rng_and_leaves_the_global_rng_as_it_was():
    before = torch.random.get_rng_state()
    text = fails("pure", GlobalRng(), x34())
    assert "global RNG" in text and "largest difference" in text
    assert torch.equal(torch.random.get_rng_state(), before)


def test_other_checks_pass_on_the_global_rng_block():
    check_block(GlobalRng(), x34(), checks=["deterministic", "eval_state", "batch_independent"])


def test_pure_fails_on_a_state_update_in_place_during_training():
    text = fails("pure", CountsInPlace(), x34(), train=True)
    assert "state in place" in text and "largest difference 1 at state['count']" in text


def test_pytree_outputs_pass_and_failures_name_the_leaf():
    check_block(TreeOut(), x34())
    text = fails("batch_independent", TreeOut(mix=True), x34())
    assert "at output['pair'][1][" in text


def test_deterministic_fails_on_a_block_with_hidden_python_state():
    text = fails("deterministic", CallCounter(), x34())
    assert "different outputs" in text and "largest difference" in text and "bit-identical" in text


def test_eval_state_fails_on_a_block_that_updates_state_in_evaluation():
    text = fails("eval_state", Counter(), x34())
    assert "largest difference 1 at state['count']" in text


def test_batch_independent_fails_on_a_block_whose_rows_see_each_other():
    text = fails("batch_independent", RowsMix(), x34())
    assert "row i" in text and "largest difference" in text and "output[" in text


def test_vmap_fails_on_item_and_chains_the_original_error():
    with pytest.raises(AssertionError, match=r"^vmap: ItemBranch\(\)\.apply: torch\.func\.vmap") as info:
        check_block(ItemBranch(), x34(), checks=["vmap"])
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "hint:" in str(info.value) and ".item()" in str(info.value)


def test_compile_fails_on_item_branching():
    with pytest.raises(AssertionError, match=r"^compile: ItemBranch\(\)\.apply: torch\.compile") as info:
        check_block(ItemBranch(), x34()[:1, :], checks=["compile"])
    assert info.value.__cause__ is not None
    assert "hint:" in str(info.value) and ".item()" in str(info.value)


def test_compile_fails_on_a_graph_break():
    with pytest.raises(AssertionError, match=r"^compile: GraphBreak\(\)\.apply") as info:
        check_block(GraphBreak(), x34()[:1, :], checks=["compile"])
    assert "Unsupported" in str(info.value) and info.value.__cause__ is not None


def test_each_broken_block_passes_the_checks_it_does_not_break():
    check_block(Counter(), x34(), checks=["pure", "deterministic", "batch_independent", "vmap"])
    check_block(RowsMix(), x34(), checks=["pure", "deterministic", "eval_state", "vmap"])
    check_block(ItemBranch(), x34(), checks=["pure", "deterministic", "eval_state", "batch_independent"])


# -- bad input -------------------------------------------------------------------------

def test_rejects_an_object_without_init_and_apply():
    with pytest.raises(TypeError, match="check_block: block must be an object with init"):
        check_block(torch.nn.Linear(3, 2), x34())


def test_rejects_a_block_class_instead_of_an_instance():
    with pytest.raises(TypeError, match="pass an instance, not the class"):
        check_block(nn.Dense, x34())


def test_rejects_an_unknown_check_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown check 'jit'; valid checks are \['pure'"):
        check_block(nn.Dense(3, 2), x34(), checks=["pure", "jit"])


def test_rejects_mismatched_batch_sizes():
    with pytest.raises(ValueError, match="one batch size"):
        check_block(nn.MultiHeadAttention(4, 2), torch.ones(2, 3, 4), torch.ones(3, 3, 4),
                    checks=["batch_independent"])


@pytest.mark.parametrize("check", ["eval_state", "batch_independent"])
def test_rejects_eval_only_checks_with_train(check):
    with pytest.raises(ValueError, match=f"check '{check}' applies to train=False only"):
        check_block(nn.Dropout(0.5), x34(), train=True, checks=[check])


def test_rejects_a_key_that_is_not_a_key():
    with pytest.raises(TypeError, match="key must be an int64 tensor"):
        check_block(nn.Dense(3, 2), x34(), key=0)


def test_an_error_of_the_block_itself_propagates_with_a_note():
    with pytest.raises(ValueError, match="in_features") as info:
        check_block(nn.Dense(5, 2), x34(), checks=["pure"])
    assert any("reference call" in note for note in info.value.__notes__)


def test_check_names_and_a_single_name_as_string():
    assert CHECKS == ("pure", "deterministic", "eval_state", "batch_independent", "vmap", "compile")
    check_block(nn.Dense(3, 2), x34(), checks="eval_state")
