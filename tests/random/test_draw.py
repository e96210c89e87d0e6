"""``deepfn::threefry_draw``: random words and uniforms in one C pass inside compiled CPU code and
under transforms, with the values of the tensor code everywhere (batches of keys, odd counts,
no C loop), and small draws left to Inductor's fused code."""

from __future__ import annotations

import pytest
import torch
from torch._inductor.utils import run_and_get_code

from deepfn import random
from deepfn.random import draw as _threefry_draw
from deepfn.random import native as _threefry_native
from deepfn.random import threefry as _threefry

needs_loop = pytest.mark.skipif(_threefry_native.native() is None, reason="no C Threefry loop here")
LARGE = 2 * _threefry._EXTERN_MIN_PAIRS + 1      # odd: the last pair's second word is cut
DTYPES = [torch.int64, torch.float32, torch.float64]


def _expected(key: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    return _threefry_draw.as_dtype(_threefry_draw.words(key, n), dtype)


def _compiled(fn, *args):
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False):
        out, codes = run_and_get_code(torch.compile(fn, fullgraph=True), *args)
    torch._dynamo.reset()
    return out, "\n".join(codes)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 7, LARGE])
def test_operator_equals_tensor_code(dtype, n):
    key = random.key(3)
    out = _threefry_draw.threefry_draw(key, n, dtype)
    assert out.shape == (n,) and out.dtype == dtype
    assert torch.equal(out, _expected(key, n, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_operator_without_the_loop_uses_tensor_code(monkeypatch, dtype):
    key = random.key(4)
    expected = _threefry_draw.threefry_draw(key, LARGE, dtype)
    monkeypatch.setattr(_threefry_native, "native", lambda: None)
    assert _threefry_native.draw(key, LARGE, dtype) is None
    assert torch.equal(_threefry_draw.threefry_draw(key, LARGE, dtype), expected)


def test_operator_passes_torch_library_checks():
    for dtype in DTYPES:
        torch.library.opcheck(_threefry_draw.threefry_draw, (random.key(5), LARGE, dtype))
        torch.library.opcheck(_threefry_draw.threefry_draw, (random.split(random.key(5), 3), 9, dtype))


@needs_loop
@pytest.mark.parametrize("sampler", ["uniform", "bits", "normal", "bernoulli"])
def test_compiled_large_draws_call_the_loop_once_with_eager_values(sampler):
    draw = {
        "uniform": lambda k: random.uniform(k, (3, LARGE)),
        "bits": lambda k: random.bits(k, LARGE),
        "normal": lambda k: random.normal(k, (LARGE,)),
        "bernoulli": lambda k: random.bernoulli(k, 0.3, (LARGE, 2)),
    }[sampler]
    key = random.key(6)
    out, code = _compiled(draw, key)
    assert torch.equal(out, draw(key))
    assert code.count("= torch.ops.deepfn.threefry_draw.default(") == 1
    assert "threefry2x32" not in code   # no counter array through the cipher operator


@needs_loop
def test_compiled_small_draws_stay_tensor_code():
    # An extern call costs more than a small draw: Inductor inlines the cipher instead.
    assert 3 * 700 < 2 * _threefry._EXTERN_MIN_PAIRS
    key = random.key(7)
    out, code = _compiled(lambda k: random.uniform(k, (3, 700)), key)
    assert torch.equal(out, random.uniform(key, (3, 700)))
    assert "threefry_draw" not in code


@pytest.mark.parametrize("dtype", DTYPES)
def test_operator_draws_a_row_per_key(dtype):
    keys = random.split(random.key(14), 6).reshape(2, 3, 2)
    out = _threefry_draw.threefry_draw(keys, LARGE, dtype)
    assert out.shape == (2, 3, LARGE)
    for i in range(2):
        for j in range(3):
            assert torch.equal(out[i, j], _expected(keys[i, j], LARGE, dtype))


@needs_loop
def test_compiled_draws_for_a_batch_of_keys_call_the_loop_once():
    keys = random.split(random.key(15), 4)
    draw = lambda k: random.uniform(k, (3, 1000))   # noqa: E731  (4 x 1,500 pairs: over the threshold together)
    out, code = _compiled(draw, keys)
    assert out.shape == (4, 3, 1000) and torch.equal(out, draw(keys))
    assert code.count("= torch.ops.deepfn.threefry_draw.default(") == 1


@pytest.mark.parametrize("dtype", DTYPES)
def test_vmap_over_keys_equals_one_draw_per_key(dtype):
    keys = random.split(random.key(8), 3)
    n = LARGE
    batched = torch.func.vmap(lambda k: _threefry_draw.draw(k, n, dtype))(keys)
    assert batched.shape == (3, n)
    for b in range(3):
        assert torch.equal(batched[b], _expected(keys[b], n, dtype))


def test_vmap_with_an_unbatched_key_draws_the_same_for_every_lane():
    key = random.key(9)
    out = torch.func.vmap(lambda x: x + random.uniform(key, (LARGE,)))(torch.zeros(2, LARGE))
    assert torch.equal(out[0], random.uniform(key, (LARGE,))) and torch.equal(out[1], out[0])


def test_under_grad_the_dropout_mask_is_the_eager_one():
    key, x = random.key(10), torch.randn(LARGE)

    def loss(x):
        return torch.where(random.bernoulli(key, 0.8, x.shape), x, 0.0).sum()

    g = torch.func.grad(loss)(x)
    assert torch.equal(g, random.bernoulli(key, 0.8, x.shape).to(x.dtype))


def test_other_devices_and_dtypes_are_left_to_the_tensor_code():
    assert _threefry_draw.draw(random.key(0).to("meta"), LARGE, torch.float32) is None
    assert _threefry_draw.draw(random.key(0), LARGE, torch.float16) is None


@needs_loop
def test_compiled_vmap_of_grad_with_a_key_per_lane_draws_all_lanes_in_one_call():
    # An ensemble's or per-example step's dropout: one key per lane, masks from one C call.
    keys, x = random.split(random.key(17), 4), torch.randn(4, LARGE)

    def loss(k, x):
        return torch.where(random.bernoulli(k, 0.9, x.shape), x / 0.9, 0.0).sum()

    def per_lane(keys, x):
        return torch.func.vmap(torch.func.grad(loss, argnums=1))(keys, x)

    out, code = _compiled(per_lane, keys, x)
    assert code.count("= torch.ops.deepfn.threefry_draw.default(") == 1
    for b in range(4):
        assert torch.equal(out[b], torch.func.grad(loss, argnums=1)(keys[b], x[b]))
