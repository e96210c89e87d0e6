"""The library on an accelerator: the same numbers as on the CPU, and the device-only paths.

Skipped without CUDA. ``DEEPFN_TEST_DEVICE`` picks the device (default ``cuda``; ``cpu`` runs
the same checks on the CPU, where every comparison is CPU against CPU). ``scripts/cuda_checks.sh``
runs this module, the fp16 oracle and the training scripts on a CUDA machine.

What only an accelerator exercises: Triton code from Inductor (compiled steps, the layout
optimization left on for non-CPU inputs), the fused finite check without a host read, AdamW's
in-place form declining non-CPU parameters (the donated step then takes the out-of-place
update), cuDNN convolutions and SDPA's fused attention kernels, and compiled steps saved by
``compile_cache`` and loaded by another process.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepfn import amp, checkpoint, interop, losses, optim, random, tree
from deepfn.models import MLP, AdvancedCNN, Transformer
from deepfn.models.decoding import beam_search, greedy_decode
from deepfn.nn import MultiHeadAttention
from deepfn.train import (
    TrainState,
    ensemble_train_state,
    make_ensemble_train_step,
    make_train_step,
    per_example_grads,
)
from deepfn.train.compile import inductor_options
from tests.utils import assert_trees_close

DEV = torch.device(os.environ.get("DEEPFN_TEST_DEVICE", "cuda"))
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(DEV.type == "cuda" and not torch.cuda.is_available(),
                                reason="needs a CUDA device (DEEPFN_TEST_DEVICE=cuda)")


@pytest.fixture(autouse=True)
def full_float32():
    """No TF32: CUDA's float32 products and convolutions then round as the CPU's do."""
    if DEV.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def to(device, t):
    return tree.map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, t)


def on_device(t) -> bool:
    return all(x.device.type == DEV.type for x in tree.leaves(t) if isinstance(x, torch.Tensor))


def assert_equal_on_cpu(actual, expected, **tol):
    """``actual`` lives on DEV, ``expected`` on the CPU; compared on the CPU."""
    assert on_device(actual), f"expected every tensor on {DEV}"
    assert_trees_close(to(CPU, actual), expected, **tol)


def _batch(n=8, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _tokens(b, t, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (b, t), generator=g)
    ids[0, -2:] = 0   # padding
    return ids


# -- random numbers and initialisation -------------------------------------------------

def test_random_draws_are_the_same_on_the_device():
    k = random.key(7)
    kd = k.to(DEV)
    for draw in (lambda k: random.bits(k, 1001), lambda k: random.split(k, 5), lambda k: random.fold_in(k, 3),
                 lambda k: random.randint(k, (300,), -4, 9), lambda k: random.permutation(k, 50),
                 lambda k: random.bernoulli(k, 0.3, (257,))):
        on_dev, on_cpu = draw(kd), draw(k)
        assert on_dev.device.type == DEV.type
        assert torch.equal(on_dev.cpu(), on_cpu)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        assert torch.equal(random.uniform(kd, (999,), dtype).cpu(), random.uniform(k, (999,), dtype))
    normal = random.normal(kd, (4001,))
    assert normal.device.type == DEV.type
    torch.testing.assert_close(normal.cpu(), random.normal(k, (4001,)), rtol=1e-6, atol=1e-6)


MODELS = {
    "mlp": lambda: MLP(6, (16, 8), 3, dropout_rate=0.2, batch_norm=True),
    "cnn": lambda: AdvancedCNN(3, 10, 8, (1, 1, 1, 1), dropout_rate=0.2),
    "transformer": lambda: Transformer(40, 16, 2, 1, 32, dropout=0.1, max_seq_len=16),
}


def _inputs(name):
    if name == "mlp":
        return (_batch()[0],)
    if name == "cnn":
        return (torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)),)
    return _tokens(3, 7, 40, seed=1), _tokens(3, 6, 40, seed=2)


@pytest.mark.parametrize("name", MODELS)
def test_init_and_apply_equal_the_cpu(name):
    """Params from a key on the device equal those from the key on the CPU; so do outputs and
    new state, in eval mode and in training mode with dropout (the same key, the same mask)."""
    model = MODELS[name]()
    params, state = model.init(random.key(3))
    dparams, dstate = model.init(random.key(3).to(DEV))
    assert_equal_on_cpu((dparams, dstate), (params, state), rtol=1e-6, atol=1e-7)
    inputs = _inputs(name)
    dinputs = to(DEV, inputs)
    for train in (False, True):
        key = random.key(5) if train else None
        out, new_state = model.apply(params, state, *inputs, key=key, train=train)
        dout, dnew_state = model.apply(dparams, dstate, *dinputs, key=None if key is None else key.to(DEV),
                                       train=train)
        assert_equal_on_cpu((dout, dnew_state), (out, new_state), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["auto", "math", "sdpa"])
def test_attention_matches_torch_multihead_attention_on_the_device(impl):
    torch.manual_seed(0)
    module = torch.nn.MultiheadAttention(16, 4, batch_first=True).to(DEV).eval()
    mha = MultiHeadAttention(16, 4, impl=impl)
    params, state = interop.from_torch(mha, module)
    assert on_device(params)
    g = torch.Generator().manual_seed(1)
    x, kv, w = (torch.randn(3, n, 16, generator=g).to(DEV) for n in (5, 7, 5))
    mask = torch.rand(3, 1, 5, 7, generator=g).to(DEV) > 0.4
    mask[..., 0] = True

    def loss(p):
        return (mha.apply(p, state, x, kv, mask)[0] * w).sum()

    grads = torch.func.grad(loss)(params)
    ref = module(x, kv, kv, attn_mask=~mask.expand(3, 4, 5, 7).reshape(12, 5, 7), need_weights=False)[0]
    (ref * w).sum().backward()
    assert_trees_close(mha.apply(params, state, x, kv, mask)[0], ref.detach(), rtol=1e-4, atol=1e-5)
    assert_trees_close(grads, tree.unflatten({n: p.grad for n, p in module.named_parameters()}),
                       rtol=1e-4, atol=1e-5)


# -- training steps ----------------------------------------------------------------------

def _mlp_setup(opt):
    model = MODELS["mlp"]()
    return model, TrainState.create(model, opt, random.key(0))


def _run(step, ts, batches, keys):
    losses_ = []
    for batch, key in zip(batches, keys, strict=True):
        ts, metrics = step(ts, batch, key)
        losses_.append(metrics["loss"])
    return ts.params, ts.state, ts.opt_state, torch.stack(losses_)


def test_eager_and_compiled_steps_on_the_device_equal_the_cpu_step():
    """Three SGD steps of an MLP with batch norm and dropout: eager and whole-graph compiled
    (Triton) on the device, against the eager CPU step."""
    opt = optim.sgd(0.1, momentum=0.9)
    model, ts = _mlp_setup(opt)
    batches = [_batch(seed=i) for i in range(3)]
    keys = [random.key(10 + i) for i in range(3)]
    cpu_step = make_train_step(model, losses.cross_entropy, opt, clip_norm=1.0, compile=False)
    expected = _run(cpu_step, ts, batches, keys)
    for compile_ in (False, True):
        step = make_train_step(model, losses.cross_entropy, opt, clip_norm=1.0, compile=compile_)
        got = _run(step, to(DEV, ts), to(DEV, batches), to(DEV, keys))
        assert_equal_on_cpu(got, expected, rtol=1e-5, atol=1e-6)


def test_adamw_in_place_declines_device_params_and_the_donated_step_still_updates():
    opt = optim.adamw(1e-2, weight_decay=0.1)
    model, ts = _mlp_setup(opt)
    ts = to(DEV, ts)
    batch, key = to(DEV, _batch()), random.key(1).to(DEV)
    pure = make_train_step(model, losses.cross_entropy, opt, compile=False)
    expected, _ = pure(ts, batch, key)

    grads = tree.map(torch.ones_like, ts.params)
    params_before, state_before = tree.map(torch.clone, ts.params), tree.map(torch.clone, ts.opt_state)
    done = opt.update.in_place(grads, ts.opt_state, ts.params)
    if DEV.type == "cpu":
        assert done is not None
        return
    assert done is None, "the in-place form is for CPU parameters only"
    assert_trees_close((ts.params, ts.opt_state), (params_before, state_before), rtol=0, atol=0)

    donated = make_train_step(model, losses.cross_entropy, opt, compile=False, donate=True)
    got, _ = donated(ts, batch, key)
    assert_trees_close((got.params, got.opt_state), (expected.params, expected.opt_state), rtol=1e-6, atol=1e-7)


def test_non_finite_gradients_skip_the_step_on_the_device():
    """The finite check on the device (fused, no host read): a NaN input skips the update."""
    opt = optim.adam(1e-2)
    model, ts = _mlp_setup(opt)
    ts = to(DEV, ts)
    x, y = _batch()
    x[0, 0] = float("nan")
    for compile_ in (False, True):
        step = make_train_step(model, losses.cross_entropy, opt, compile=compile_)
        new, metrics = step(ts, to(DEV, (x, y)), random.key(1).to(DEV))
        assert bool(metrics["nonfinite"])
        assert_trees_close(new.params, ts.params, rtol=0, atol=0)


def test_compiled_cnn_step_keeps_inductor_layout_defaults_and_equals_eager():
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(1))
    expected_options = {"layout_optimization": False, "cpp_wrapper": True} if DEV.type == "cpu" else {}
    assert inductor_options((to(DEV, x),)) == expected_options
    model, opt = AdvancedCNN(3, 10, 8, (1, 1, 1, 1)), optim.sgd(0.05, momentum=0.9)
    ts = to(DEV, TrainState.create(model, opt, random.key(0)))
    batch, key = to(DEV, (x, y)), random.key(2).to(DEV)
    eager = make_train_step(model, losses.cross_entropy, opt, compile=False)
    compiled = make_train_step(model, losses.cross_entropy, opt, compile=True)
    assert_trees_close(compiled(ts, batch, key)[0].params, eager(ts, batch, key)[0].params, rtol=1e-4, atol=1e-5)


def test_bf16_policy_steps_on_the_device():
    policy = amp.Policy(torch.float32, torch.bfloat16, torch.float32)
    model, opt = MODELS["transformer"](), optim.adam(1e-3)
    ts = to(DEV, TrainState.create(model, opt, random.key(0), policy=policy))
    src, tgt = _tokens(3, 7, 40, seed=1), _tokens(3, 6, 40, seed=2)
    batch, key = to(DEV, ((src, tgt), tgt)), random.key(3).to(DEV)
    loss_fn = functools.partial(losses.cross_entropy, ignore_index=0)
    results = []
    for compile_ in (False, True):
        step = make_train_step(model, loss_fn, opt, policy=policy, compile=compile_)
        new, metrics = step(ts, batch, key)
        assert metrics["loss"].dtype == torch.float32 and torch.isfinite(metrics["loss"])
        assert all(p.dtype == torch.float32 for p in tree.leaves(new.params))
        results.append((new.params, metrics["loss"]))
    assert_trees_close(results[1], results[0], rtol=2e-2, atol=2e-3)


def test_per_example_grads_and_ensemble_step_on_the_device():
    model = MLP(6, (16,), 3)
    params, state = model.init(random.key(0))
    x, y = _batch()

    def loss(p, x, y):
        return losses.cross_entropy(model.apply(p, state, x)[0], y)

    expected = per_example_grads(loss)(params, x, y)
    assert_equal_on_cpu(per_example_grads(loss)(to(DEV, params), *to(DEV, (x, y))), expected,
                        rtol=1e-5, atol=1e-6)

    opt = optim.adam(1e-2)
    members = ensemble_train_state(model, opt, random.key(4), 3)
    keys = random.split(random.key(5), 3)
    step = make_ensemble_train_step(model, losses.cross_entropy, opt, compile=False)
    new, metrics = step(members, (x, y), keys)
    dnew, dmetrics = step(to(DEV, members), to(DEV, (x, y)), keys.to(DEV))
    assert_equal_on_cpu((dnew.params, dnew.opt_state, dmetrics), (new.params, new.opt_state, metrics),
                        rtol=1e-5, atol=1e-6)


def test_decoding_on_the_device_equals_the_cpu():
    model = Transformer(40, 16, 2, 1, 32, dropout=0.0, max_seq_len=16)
    params, state = model.init(random.key(0))
    src = _tokens(3, 7, 40)
    for decode in (greedy_decode, functools.partial(beam_search, beam_size=3)):
        expected = decode(model, params, state, src, 10)
        got = decode(model, to(DEV, params), state, src.to(DEV), 10)
        assert got.device.type == DEV.type
        assert torch.equal(got.cpu(), expected)


def test_checkpoint_of_device_tensors_loads_on_either_device(tmp_path):
    opt = optim.adamw(1e-3)
    _, ts = _mlp_setup(opt)
    path = tmp_path / "ts.safetensors"
    checkpoint.save(path, to(DEV, ts))
    fields = lambda t: (t.params, t.state, t.opt_state, t.step)  # noqa: E731
    assert_trees_close(fields(checkpoint.load(path, like=ts)), fields(ts), rtol=0, atol=0)
    back = checkpoint.load(path, device=DEV)
    assert on_device(fields(back))
    assert_trees_close(to(CPU, fields(back)), fields(ts), rtol=0, atol=0)


# -- compiled steps saved on disk ------------------------------------------------------

_LOAD_IN_NEW_PROCESS = """
import sys, torch
from deepfn import losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import TrainState, make_train_step
dev = torch.device(sys.argv[3])
to = lambda t: tree.map(lambda x: x.to(dev) if isinstance(x, torch.Tensor) else x, t)
model, opt = MLP(6, (16,), 3, dropout_rate=0.1), optim.adamw(lr=0.1)
step = make_train_step(model, losses.cross_entropy, opt, clip_norm=1.0, compile_cache=sys.argv[1])
g = torch.Generator().manual_seed(0)
batch = to((torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)))
new, metrics = step(to(TrainState.create(model, opt, random.key(0))), batch, random.key(1).to(dev))
torch.save(to({"params": new.params, "loss": metrics["loss"]}), sys.argv[2])
print("traced graphs:", torch._dynamo.utils.counters["stats"]["unique_graphs"])
"""


def test_compile_cache_saves_a_device_step_that_a_new_process_loads(tmp_path):
    cache, out = tmp_path / "steps", tmp_path / "out.pt"
    model, opt = MLP(6, (16,), 3, dropout_rate=0.1), optim.adamw(lr=0.1)
    saved = make_train_step(model, losses.cross_entropy, opt, clip_norm=1.0, compile_cache=cache)
    eager = make_train_step(model, losses.cross_entropy, opt, clip_norm=1.0, compile=False)
    ts = to(DEV, TrainState.create(model, opt, random.key(0)))
    g = torch.Generator().manual_seed(0)
    batch = to(DEV, (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)))
    key = random.key(1).to(DEV)
    new, _ = saved(ts, batch, key)
    expected, expected_metrics = eager(ts, batch, key)
    assert_trees_close(new.params, expected.params, rtol=1e-5, atol=1e-6)
    files = sorted(cache.iterdir())
    assert len(files) == 1, files

    done = subprocess.run([sys.executable, "-c", _LOAD_IN_NEW_PROCESS, str(cache), str(out), str(DEV)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "traced graphs: 0" in done.stdout, done.stdout + done.stderr[-3000:]
    loaded = torch.load(out)
    assert_trees_close(loaded["params"], to(CPU, expected.params), rtol=1e-5, atol=1e-6)
    assert sorted(cache.iterdir()) == files
