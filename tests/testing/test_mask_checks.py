"""check_mask_invariance and check_causal: pass on masked / causal functions, fail on mixing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from deepfn import nn, random
from deepfn.testing import check_causal, check_mask_invariance
from deepfn.testing import strategies as dst


def xs(b=2, t=5, e=3, seed=4) -> torch.Tensor:
    return random.normal(random.key(seed), (b, t, e))


VALID = torch.tensor([[True, True, False, False, False], [True, True, True, True, False]])


def masked_mean(valid):
    """Mean over the valid positions of each row, repeated at every position."""
    def fn(x):
        w = valid.to(x.dtype)[..., None]
        mean = (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True)
        return mean.expand_as(x)
    return fn


def mean_over_t(x):
    return x.mean(1, keepdim=True).expand_as(x)


def causal_cumsum(x):
    return x.cumsum(1)


def reversed_cumsum(x):
    return x.flip(1).cumsum(1).flip(1)


def attention(mask=None):
    block = nn.MultiHeadAttention(4, 2)
    params, state = block.init(random.key(1))
    return lambda x: block.apply(params, state, x, mask=mask)[0]


# -- mask invariance ---------------------------------------------------------------------

def test_masked_mean_passes():
    check_mask_invariance(masked_mean(VALID), xs(), VALID)


def test_mean_over_time_fails_and_names_the_largest_difference():
    with pytest.raises(AssertionError) as info:
        check_mask_invariance(mean_over_t, xs(), VALID)
    text = str(info.value)
    assert text.startswith("mask: mean_over_t: the output at valid positions changed")
    assert "largest difference" in text and " at y[" in text


def test_mask_failure_is_located_at_a_valid_position():
    with pytest.raises(AssertionError, match=r"largest difference [0-9.e+-]+ at y\[(\d), (\d), \d\]") as info:
        check_mask_invariance(mean_over_t, xs(), VALID)
    import re
    b, t = map(int, re.search(r"at y\[(\d), (\d)", str(info.value)).groups())
    assert VALID[b, t]


def test_attention_with_padding_mask_passes_and_without_fails():
    x = random.normal(random.key(2), (2, 5, 4))
    check_mask_invariance(attention(VALID[:, None, None, :]), x, VALID)
    with pytest.raises(AssertionError, match="^mask: .*largest difference"):
        check_mask_invariance(attention(), x, VALID)


def test_integer_tokens_are_replaced_by_ids_in_range():
    emb = nn.Embedding(10, 3)
    params, state = emb.init(random.key(0))
    tokens = torch.tensor([[1, 2, 0, 0, 0], [3, 9, 4, 5, 0]])
    valid = tokens != 0
    check_mask_invariance(lambda t: emb.apply(params, state, t)[0], tokens, valid)
    with pytest.raises(AssertionError, match="^mask: "):
        check_mask_invariance(lambda t: emb.apply(params, state, t)[0].cumsum(1).flip(1), tokens, valid)


@settings(max_examples=10)
@given(valid=dst.padding_masks(3, 4), x=dst.arrays((3, 4, 2)))
def test_masked_mean_passes_on_drawn_masks(valid, x):
    check_mask_invariance(masked_mean(valid), x, valid, atol=1e-5)


def test_mask_failure_reproduces_with_the_same_seed():
    messages = []
    for _ in range(2):
        with pytest.raises(AssertionError) as info:
            check_mask_invariance(mean_over_t, xs(), VALID, seed=3)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


# -- causality ---------------------------------------------------------------------------

def test_causal_cumsum_passes():
    check_causal(causal_cumsum, xs())


def test_reversed_cumsum_fails_at_position_zero():
    with pytest.raises(AssertionError) as info:
        check_causal(reversed_cumsum, xs())
    text = str(info.value)
    assert text.startswith("causal: reversed_cumsum: y[:, :1] changed when only x[:, 1:] changed")
    assert "position 0 sees the future" in text and "largest difference" in text and " at y[" in text


def test_a_leak_of_one_step_is_found_at_its_position():
    def peeks_at_3(x):      # position 2 sees x[:, 3]; everything else is causal
        return x.cumsum(1) + torch.nn.functional.pad(x[:, 3:4], (0, 0, 2, x.shape[1] - 3))
    with pytest.raises(AssertionError, match=r"position 2 sees the future.* at y\[\d, 2, \d\]"):
        check_causal(peeks_at_3, xs())


def test_attention_with_causal_mask_passes_and_without_fails():
    x = random.normal(random.key(2), (2, 5, 4))
    check_causal(attention(nn.causal_mask(5)), x)
    with pytest.raises(AssertionError, match="^causal: .*largest difference"):
        check_causal(attention(), x)


def test_checked_function_errors_become_assertions_chained_to_them():
    def broken(x):
        raise RuntimeError("boom")
    with pytest.raises(AssertionError, match="^causal: .*broken.*RuntimeError: boom") as info:
        check_causal(broken, xs())
    assert isinstance(info.value.__cause__, RuntimeError)


# -- bad input ---------------------------------------------------------------------------

def test_rejects_a_non_callable():
    with pytest.raises(TypeError, match="check_causal: fn must be callable"):
        check_causal(3, xs())


def test_rejects_a_one_dimensional_x():
    with pytest.raises(ValueError, match=r"check_mask_invariance: x must be at least 2-d \[B, T, \.\.\.\]"):
        check_mask_invariance(causal_cumsum, torch.ones(5), VALID)


def test_rejects_a_float_valid_mask():
    with pytest.raises(TypeError, match="valid must be a bool tensor"):
        check_mask_invariance(causal_cumsum, xs(), VALID.float())


def test_rejects_a_valid_mask_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"valid must have shape \[B, T\] = \[2, 5\]"):
        check_mask_invariance(causal_cumsum, xs(), VALID[:, :4])


def test_rejects_an_output_without_the_batch_and_time_axes():
    with pytest.raises(ValueError, match=r"must return a tensor \[B, T, \.\.\.\]"):
        check_causal(lambda x: x.sum(1), xs())
