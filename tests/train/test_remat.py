"""deepfn.remat (deepfn.train.remat): same values and gradients under grad, vmap(grad) and torch.compile, and
fewer tensors saved for the backward pass."""

import contextlib

import torch

import deepfn
from deepfn import nn, random, tree
from deepfn.train.remat import differentiated_outside


def _mlp(params, x, mask):
    h = x
    for layer in params["layers"]:
        h = torch.tanh(h @ layer["w"] + layer["b"])
    return {"out": h * mask, "sq": (h ** 2).sum()}


def _setup(depth=4, width=8):
    g = torch.Generator().manual_seed(0)
    params = {"layers": [{"w": torch.randn(width, width, generator=g) * 0.5, "b": torch.randn(width, generator=g)}
                         for _ in range(depth)]}
    return params, torch.randn(5, width, generator=g), torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]).unsqueeze(-1)


def _loss(fn):
    return lambda p, x, m: fn(p, x, m)["out"].sum() + fn(p, x, m)["sq"]


def test_values_and_tree_output():
    params, x, m = _setup()
    out, ref = deepfn.remat(_mlp)(params, x, m), _mlp(params, x, m)
    assert tree.all_equal(out, ref)


def test_grad_equals_plain():
    params, x, m = _setup()
    g = torch.func.grad(_loss(deepfn.remat(_mlp)), argnums=(0, 1))(params, x, m)
    ref = torch.func.grad(_loss(_mlp), argnums=(0, 1))(params, x, m)
    for a, b in zip(tree.leaves(g), tree.leaves(ref), strict=True):
        torch.testing.assert_close(a, b)


def test_vmap_grad_equals_plain():
    params, x, m = _setup()
    xs = torch.stack([x, 2 * x, -x])
    f = torch.func.vmap(torch.func.grad(_loss(deepfn.remat(_mlp))), in_dims=(None, 0, None))
    ref = torch.func.vmap(torch.func.grad(_loss(_mlp)), in_dims=(None, 0, None))
    for a, b in zip(tree.leaves(f(params, xs, m)), tree.leaves(ref(params, xs, m)), strict=True):
        torch.testing.assert_close(a, b)


def test_compiled_grad_equals_plain():
    params, x, m = _setup(depth=2, width=4)
    x = x[:, :4]
    f = torch.compile(torch.func.grad(_loss(deepfn.remat(_mlp))), fullgraph=True)
    ref = torch.func.grad(_loss(_mlp))(params, x, m)
    for a, b in zip(tree.leaves(f(params, x, m)), tree.leaves(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_non_float_inputs_and_keys_pass_through():
    layer = nn.Dropout(0.5)
    f = deepfn.remat(lambda p, x, k: layer.apply({}, {}, x * p["s"], key=k, train=True)[0].sum())
    p, x, k = {"s": torch.tensor(2.0)}, torch.ones(16), random.key(0)
    ref = lambda p, x, k: layer.apply({}, {}, x * p["s"], key=k, train=True)[0].sum()  # noqa: E731
    torch.testing.assert_close(torch.func.grad(f)(p, x, k)["s"], torch.func.grad(ref)(p, x, k)["s"])


def _count_saved(fn, params, x, m):
    leaves = tree.map(lambda t: t.clone().requires_grad_(), params)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        loss = _loss(fn)(leaves, x, m)
    loss.backward()
    return sum(saved), tree.map(lambda t: t.grad, leaves)


def test_saves_fewer_tensors_in_plain_autograd():
    params, x, m = _setup(depth=8, width=16)
    x = torch.randn(32, 16)
    m = torch.ones(32, 1)
    remat_saved, remat_grads = _count_saved(deepfn.remat(_mlp), params, x, m)
    plain_saved, plain_grads = _count_saved(_mlp, params, x, m)
    assert remat_saved < plain_saved / 2
    for a, b in zip(tree.leaves(remat_grads), tree.leaves(plain_grads), strict=True):
        torch.testing.assert_close(a, b)


def _stacked(fn):
    """Three ``fn`` regions in a row: what a compiled forward must keep between them."""
    def loss(p, x):
        for _ in range(3):
            x = fn(p, x)
        return x.square().sum()
    return loss


def _four_tanh(p, x):
    for _ in range(4):
        x = torch.tanh(x @ p["w"])
    return x


def _compiled_saved_bytes_and_grad(fn, w, x):
    compiled = torch.compile(_stacked(fn), fullgraph=True)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t
    p = {"w": w.clone().requires_grad_()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), differentiated_outside():
        loss = compiled(p, x)
    (grad,) = torch.autograd.grad(loss, p["w"])
    return saved[0], grad


def test_compiled_forward_differentiated_outside_recomputes():
    # make_train_step(compile="split")'s setting: AOTAutograd's backward graph recomputes the
    # regions (a checkpoint in the graph), so the compiled function saves only their inputs.
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(32, 32, generator=g) * 0.2, torch.randn(64, 32, generator=g)
    remat_bytes, remat_grad = _compiled_saved_bytes_and_grad(deepfn.remat(_four_tanh), w, x)
    plain_bytes, plain_grad = _compiled_saved_bytes_and_grad(_four_tanh, w, x)
    assert remat_bytes < plain_bytes / 2, (remat_bytes, plain_bytes)
    expected = torch.func.grad(_stacked(_four_tanh))({"w": w}, x)["w"]
    torch.testing.assert_close(remat_grad, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(plain_grad, expected, rtol=1e-5, atol=1e-4)


def test_compiled_code_follows_the_context():
    # Dynamo guards on differentiated_outside(): one compiled function recompiles when called
    # outside it (and saves every activation there), instead of reusing the checkpoint graph.
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(32, 32, generator=g) * 0.2, torch.randn(64, 32, generator=g)
    compiled = torch.compile(_stacked(deepfn.remat(_four_tanh)), fullgraph=True)
    sizes = []
    for outside in (True, False, True):
        saved = [0]

        def pack(t, saved=saved):
            saved[0] += t.numel() * t.element_size()
            return t
        p = {"w": w.clone().requires_grad_()}
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                (differentiated_outside() if outside else contextlib.nullcontext()):
            loss = compiled(p, x)
        torch.autograd.grad(loss, p["w"])
        sizes.append(saved[0])
    assert sizes[0] == sizes[2] < sizes[1] / 2, sizes
