"""deepfn.testing.strategies: drawn values keep their promises; hypothesis stays optional."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfn.testing import strategies as dst


@given(k=dst.keys())
def test_keys_are_int64_pairs_of_32_bit_words(k):
    assert k.dtype == torch.int64 and k.shape == (2,)
    assert bool(((k >= 0) & (k < 2**32)).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@settings(max_examples=10)
@given(data=st.data())
def test_float_arrays_are_finite_and_moderate(dtype, data):
    x = data.draw(dst.arrays((2, 3), dtype))
    assert x.shape == (2, 3) and x.dtype == dtype
    assert bool(torch.isfinite(x).all()) and bool((x.abs() <= 10).all())


@settings(max_examples=10)
@given(i=dst.arrays((4,), torch.int64, min_value=-3, max_value=3), b=dst.arrays((2, 2), torch.bool))
def test_integer_and_bool_arrays(i, b):
    assert i.dtype == torch.int64 and bool(((i >= -3) & (i <= 3)).all())
    assert b.dtype == torch.bool and b.shape == (2, 2)


@settings(max_examples=10)
@given(x=dst.arrays(dst.shapes(min_dims=1, max_dims=3, max_side=4)))
def test_arrays_accept_a_strategy_of_shapes(x):
    assert 1 <= x.ndim <= 3 and all(1 <= s <= 4 for s in x.shape)


@settings(max_examples=5)
@given(x=dst.arrays((40, 40), min_value=-1.0, max_value=1.0))
def test_large_arrays_come_from_a_seed_within_bounds(x):
    assert x.shape == (40, 40) and bool(torch.isfinite(x).all()) and bool((x.abs() <= 1).all())
    assert x.unique().numel() > 100     # not a constant fill


@given(mask=dst.padding_masks(dst.batch_sizes(), dst.dims()))
def test_padding_masks_are_non_empty_prefixes(mask):
    assert mask.dtype == torch.bool and mask.ndim == 2
    assert 1 <= mask.shape[0] <= 4 and 1 <= mask.shape[1] <= 8
    lengths = mask.sum(1)
    assert bool((lengths >= 1).all())
    prefix = torch.arange(mask.shape[1])[None, :] < lengths[:, None]
    assert torch.equal(mask, prefix)


@given(tokens=dst.token_batches(3, 6, vocab=5, pad_id=2))
def test_token_batches_pad_after_a_prefix_of_real_ids(tokens):
    assert tokens.dtype == torch.int64 and tokens.shape == (3, 6)
    valid = tokens != 2
    assert bool(((tokens >= 0) & (tokens < 5)).all())
    assert bool(valid[:, 0].all())
    prefix = torch.arange(6)[None, :] < valid.sum(1, keepdim=True)
    assert torch.equal(valid, prefix)


@given(b=dst.batch_sizes(), d=dst.dims(2, 3), s=dst.shapes(2, 2))
def test_size_helpers_stay_in_their_ranges(b, d, s):
    assert 1 <= b <= 4 and 2 <= d <= 3 and len(s) == 2


def test_rejects_a_vocabulary_without_room_for_a_token():
    with pytest.raises(ValueError, match="vocab must be an int >= 2"):
        dst.token_batches(2, 3, vocab=1)


def test_rejects_a_pad_id_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"pad_id must be in \[0, 5\)"):
        dst.token_batches(2, 3, vocab=5, pad_id=5)


def test_rejects_a_negative_side():
    with pytest.raises(ValueError, match="shape must be non-negative ints"):
        dst.arrays((2, -1))


def test_rejects_inverted_bounds():
    with pytest.raises(ValueError, match="min_value must be <= max_value"):
        dst.arrays((2,), min_value=1.0, max_value=0.0)


def test_rejects_a_non_dtype():
    with pytest.raises(TypeError, match="dtype must be a torch.dtype"):
        dst.arrays((2,), "float32")


def test_deepfn_and_check_block_work_without_hypothesis():
    script = textwrap.dedent("""
        import sys
        import torch._dynamo  # torch probes for hypothesis with find_spec on import; let it finish first
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "hypothesis" or name.startswith("hypothesis."):
                    raise ImportError("hypothesis is blocked")
        sys.meta_path.insert(0, Block())
        import torch, deepfn
        assert "deepfn.testing" not in sys.modules
        from deepfn.testing import check_block, check_causal
        check_block(deepfn.nn.Dense(3, 2), torch.ones(2, 3), checks=["pure", "eval_state"])
        check_causal(lambda x: x.cumsum(1), torch.ones(2, 3, 1))
        try:
            from deepfn.testing import strategies
        except ImportError as err:
            assert "needs hypothesis" in str(err), err
        else:
            raise SystemExit("strategies imported without hypothesis")
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
