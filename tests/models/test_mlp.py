"""deepfn.models.MLP against the seed-named twin and a plain nn.Sequential."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import interop, random, tree
from deepfn.models import MLP, num_parameters
from deepfn.nn import activations
from tests.models.seed_twins import TwinMLP, mlp_layers
from tests.utils import TOL, assert_trees_close


def _grads(model, params, state, x, labels):
    def loss(p):
        logits, _ = model.apply(p, state, x)
        return torch.nn.functional.cross_entropy(logits, labels)
    return torch.func.grad(loss)(params)


def _torch_grads(module, x, labels):
    module.zero_grad()
    torch.nn.functional.cross_entropy(module(x), labels).backward()
    return {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("config", [
    dict(activation="relu"),
    dict(activation="tanh", batch_norm=True, dropout_rate=0.2),
    dict(activation="gelu", batch_norm=True),
])
def test_matches_seed_twin_eval(config, dtype):
    torch.manual_seed(0)
    twin = TwinMLP(5, [7, 6], 3, **config).to(dtype).eval()
    for m in twin.modules():  # non-trivial running statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model = MLP(5, [7, 6], 3, **config)
    params, state = interop.from_torch(model, twin)
    x, labels = torch.randn(4, 5, dtype=dtype), torch.tensor([0, 2, 1, 2])
    y, new_state = model.apply(params, state, x)
    assert new_state is state
    torch.testing.assert_close(y, twin(x), **TOL[dtype])
    grads = _grads(model, params, state, x, labels)
    assert_trees_close(grads, tree.unflatten(_torch_grads(twin, x, labels)), **TOL[dtype])


def test_tree_names_equal_seed_state_dict(getkey):
    model = MLP(5, [7, 6], 3, batch_norm=True, dropout_rate=0.1)
    params, state = model.init(getkey())
    flat = {**tree.flatten(params), **tree.flatten(state)}
    sd = TwinMLP(5, [7, 6], 3, batch_norm=True, dropout_rate=0.1).state_dict()
    assert {k: tuple(v.shape) for k, v in flat.items()} == {k: tuple(v.shape) for k, v in sd.items()}
    assert model.num_parameters() == num_parameters(params) == sum(p.numel() for p in TwinMLP(
        5, [7, 6], 3, batch_norm=True).parameters())


def test_plain_sequential_round_trip(getkey):
    model = MLP(4, [8], 2, activation="leaky_relu", batch_norm=True, dropout_rate=0.3)
    seq = torch.nn.Sequential(*mlp_layers(4, [8], 2, "leaky_relu", 0.3, True)).eval()
    params, state = model.init(getkey())
    state = tree.map(lambda t: t + 1, state)
    interop.to_torch(model, params, state, seq)
    x = torch.randn(3, 4)
    torch.testing.assert_close(model.apply(params, state, x)[0], seq(x))
    back_params, back_state = interop.from_torch(model, seq)
    assert tree.all_equal(back_params, params) and tree.all_equal(back_state, state)


def test_plain_sequential_wrong_layer_is_rejected(getkey):
    model = MLP(4, [8], 2, batch_norm=True)
    seq = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with pytest.raises(ValueError, match="layer 1 must be torch.nn.BatchNorm1d"):
        interop.from_torch(model, seq)


def test_train_mode_running_stats_after_two_steps(dtype):
    torch.manual_seed(1)
    twin = TwinMLP(5, [6, 4], 3, batch_norm=True).to(dtype).train()
    model = MLP(5, [6, 4], 3, batch_norm=True)
    params, state = interop.from_torch(model, twin)
    for _ in range(2):
        x = torch.randn(8, 5, dtype=dtype) * 2 + 1
        y, new_state = model.apply(params, state, x, train=True)
        torch.testing.assert_close(y, twin(x), **TOL[dtype])
        assert tree.structure(new_state) == tree.structure(state)
        state = new_state
    _, expected = interop.from_torch(model, twin)
    assert_trees_close(state, expected, **TOL[dtype])
    assert int(state["network"]["1"]["num_batches_tracked"]) == 2


def test_weight_init_matches_seed_statistics(getkey):
    n = 256
    for name, check in [
        ("xavier", lambda w: w.abs().max() <= math.sqrt(6 / (2 * n)) and abs(w.std() - math.sqrt(2 / (2 * n))) < 0.05 * math.sqrt(1 / n)),
        ("he", lambda w: abs(w.std() - math.sqrt(2 / n)) < 0.03 * math.sqrt(2 / n)),
        ("normal", lambda w: abs(w.std() - 0.02) < 0.001 and abs(w.mean()) < 0.001),
    ]:
        params, _ = MLP(n, [n], n, weight_init=name).init(getkey())
        for layer in ("0", "2"):
            w = params["network"][layer]["weight"]
            assert check(w), (name, layer, float(w.std()))
            assert torch.equal(params["network"][layer]["bias"], torch.zeros(n))


def test_custom_activation_is_used(getkey):
    activations.register("mlp_test_cube", lambda t: t ** 3)
    model = MLP(3, [4], 2, activation="mlp_test_cube")
    params, state = model.init(getkey())
    x = torch.randn(2, 3)
    p = params["network"]
    expected = (x @ p["0"]["weight"].T + p["0"]["bias"]) ** 3 @ p["2"]["weight"].T + p["2"]["bias"]
    torch.testing.assert_close(model.apply(params, state, x)[0], expected)


@given(batch=st.integers(1, 5), dims=st.lists(st.integers(1, 6), min_size=0, max_size=3),
       din=st.integers(1, 6), dout=st.integers(1, 6), bn=st.booleans())
def test_output_shapes(batch, dims, din, dout, bn):
    model = MLP(din, dims, dout, batch_norm=bn, dropout_rate=0.5)
    params, state = model.init(random.key(batch))
    x = torch.randn(batch + (1 if bn else 0), din)
    y, _ = model.apply(params, state, x)
    assert y.shape == (x.shape[0], dout)
    y, new_state = model.apply(params, state, x, key=random.key(1), train=True)
    assert y.shape == (x.shape[0], dout) and tree.structure(new_state) == tree.structure(state)


def test_dropout_needs_key_and_is_deterministic(getkey):
    model = MLP(4, [16], 2, dropout_rate=0.5)
    params, state = model.init(getkey())
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r"MLP\(.*train=True needs a random key"):
        model.apply(params, state, x, train=True)
    k = getkey()
    a, _ = model.apply(params, state, x, key=k, train=True)
    b, _ = model.apply(params, state, x, key=k, train=True)
    c, _ = model.apply(params, state, x, key=getkey(), train=True)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_vmap_over_parameter_sets_equals_loop(getkey):
    model = MLP(4, [8, 8], 3, batch_norm=True)
    inits = [model.init(getkey()) for _ in range(3)]
    params = tree.stack([p for p, _ in inits])
    state = tree.stack([s for _, s in inits])
    x = torch.randn(5, 4)
    for train in (False, True):
        ys, states = torch.func.vmap(lambda p, s, train=train: model.apply(p, s, x, train=train))(params, state)
        for i, (p, s) in enumerate(inits):
            y, s2 = model.apply(p, s, x, train=train)
            torch.testing.assert_close(ys[i], y)
            assert_trees_close(tree.unstack(states)[i], s2)


def test_adam_steps_lower_the_loss(getkey):
    model = MLP(2, [16, 16], 2)
    params, state = model.init(getkey())
    x = random.normal(getkey(), (64, 2))
    labels = (x[:, 0] * x[:, 1] > 0).long()  # learnable: XOR of signs

    def loss_fn(p):
        return torch.nn.functional.cross_entropy(model.apply(p, state, x)[0], labels)

    m = tree.zeros_like(params)
    v = tree.zeros_like(params)
    first = float(loss_fn(params))
    for t in range(1, 31):
        g = torch.func.grad(loss_fn)(params)
        m = tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        bc1, bc2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        params = tree.map(lambda p, a, b, bc1=bc1, bc2=bc2: p - 0.02 * (a / bc1) / ((b / bc2).sqrt() + 1e-8),
                          params, m, v)
    assert float(loss_fn(params)) < 0.7 * first


@pytest.mark.parametrize("x, match", [
    (torch.randn(2, 3, 4), r"MLP\(.*\.apply: x must be 2-d \[b, input_dim\]; got float32 \[2, 3, 4\]"),
    (torch.randn(2, 5), r"MLP\(.*\.apply: x must have size 4 \(input_dim\) in axis -1; got float32 \[2, 5\]"),
])
def test_bad_input_shapes(x, match, getkey):
    model = MLP(4, [3], 2)
    params, state = model.init(getkey())
    with pytest.raises(ValueError, match=match):
        model.apply(params, state, x)


def test_bad_input_dtype(getkey):
    model = MLP(4, [3], 2)
    params, state = model.init(getkey())
    with pytest.raises(TypeError, match=r"MLP\(.*x must be floating point; got int64 \[2, 4\]"):
        model.apply(params, state, torch.ones(2, 4, dtype=torch.int64))


@pytest.mark.parametrize("kwargs, match", [
    (dict(activation="swishy"), r"MLP: activation must be one of .*'relu'.*; got 'swishy'"),
    (dict(weight_init="orthogonal"), r"MLP: weight_init must be one of .*'xavier'.*; got 'orthogonal'"),
    (dict(dropout_rate=1.0), r"MLP: dropout_rate must be a float in \[0, 1\); got 1.0"),
    (dict(hidden_dims=[4, 0]), r"MLP: hidden_dims\[1\] must be a positive int; got 0"),
    (dict(hidden_dims=8), r"MLP: hidden_dims must be a sequence of positive ints; got 8"),
    (dict(input_dim=0), r"MLP: input_dim must be a positive int; got 0"),
])
def test_bad_config(kwargs, match):
    config = dict(input_dim=4, hidden_dims=[3], output_dim=2) | kwargs
    with pytest.raises(ValueError, match=match):
        MLP(**config)
