"""amp.Policy: parsing, casting only floating leaves, errors that list the valid dtypes."""

import pytest
import torch

from deepfn.amp import Policy, parse_dtype


def test_from_string_long_and_short_names():
    p = Policy.from_string("params=float32,compute=bfloat16,output=float32")
    assert (p.param_dtype, p.compute_dtype, p.output_dtype) == (torch.float32, torch.bfloat16, torch.float32)
    q = Policy.from_string("p=f32, c=f16, o=bf16")
    assert (q.param_dtype, q.compute_dtype, q.output_dtype) == (torch.float32, torch.float16, torch.bfloat16)
    assert Policy.from_string("compute=bf16") == Policy(torch.float32, torch.bfloat16, torch.float32)


def test_constructor_accepts_names():
    assert Policy("f32", "bf16", "float32") == Policy(torch.float32, torch.bfloat16, torch.float32)


def test_cast_touches_only_floating_leaves():
    p = Policy.from_string("params=float32,compute=bfloat16,output=float16")
    tree = {"w": torch.ones(2), "ids": torch.arange(3), "mask": torch.ones(2, dtype=torch.bool),
            "nested": [torch.zeros(1, dtype=torch.float64)], "none": None}
    out = p.cast_to_compute(tree)
    assert out["w"].dtype == torch.bfloat16 and out["nested"][0].dtype == torch.bfloat16
    assert out["ids"] is tree["ids"] and out["mask"] is tree["mask"] and out["none"] is None
    assert p.cast_to_output(tree)["w"].dtype == torch.float16
    assert p.cast_to_param(out)["w"].dtype == torch.float32
    assert tree["w"].dtype == torch.float32          # the input is not changed


def test_bare_tensor_is_a_tree():
    p = Policy.from_string("compute=bf16")
    assert p.cast_to_compute(torch.ones(3)).dtype == torch.bfloat16
    ids = torch.arange(3)
    assert p.cast_to_compute(ids) is ids


def test_unknown_dtype_lists_valid_ones():
    with pytest.raises(ValueError, match=r"Policy.from_string: unknown dtype 'fp8'.*bfloat16"):
        Policy.from_string("compute=fp8")


def test_unknown_key_rejected():
    with pytest.raises(ValueError, match=r"Policy.from_string: expected 'key=dtype'.*'weights=f32'"):
        Policy.from_string("weights=f32")


def test_missing_equals_rejected():
    with pytest.raises(ValueError, match=r"Policy.from_string: expected 'key=dtype'"):
        Policy.from_string("bf16")


def test_non_string_spec_rejected():
    with pytest.raises(TypeError, match=r"Policy.from_string: spec must be a str"):
        Policy.from_string(torch.bfloat16)


def test_integer_dtype_rejected():
    with pytest.raises(TypeError, match=r"Policy: compute_dtype: dtype must be floating"):
        Policy(torch.float32, torch.int32, torch.float32)


def test_parse_dtype_unknown_name():
    with pytest.raises(ValueError, match=r"deepfn.amp.parse_dtype: unknown dtype 'float128'"):
        parse_dtype("float128")
