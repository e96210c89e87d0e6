"""deepfn.train.autograd.autograd_grad_and_value: torch.func.grad_and_value's results through plain autograd, eagerly."""

import torch

from deepfn import losses, random, tree
from deepfn.models import MLP, AdvancedCNN
from deepfn.train.autograd import autograd_grad_and_value


def _objective(model):
    def objective(params, state, x, y, key):
        logits, new_state = model.apply(params, state, x, key=key, train=True)
        loss = losses.cross_entropy(logits, y)
        return loss, (logits, new_state)
    return objective


def _check_same(model, x, y):
    params, state = model.init(random.key(0))
    before = tree.map(torch.clone, params)
    objective = _objective(model)
    args = (state, x, y, random.key(1))
    ref_g, (ref_v, (ref_logits, ref_state)) = torch.func.grad_and_value(objective, has_aux=True)(params, *args)
    g, (v, (logits, new_state)) = autograd_grad_and_value(objective, params, *args)
    torch.testing.assert_close(g, ref_g, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close((v, logits, new_state), (ref_v, ref_logits, ref_state), rtol=0, atol=0)
    assert not v.requires_grad and not logits.requires_grad
    assert all(not t.requires_grad for t in tree.leaves(new_state) if isinstance(t, torch.Tensor))
    # Pure: the caller's params are neither written nor made to require grad.
    assert tree.all_equal(params, before) and not any(p.requires_grad for p in tree.leaves(params))


def test_equals_torch_func_on_an_mlp_with_batch_norm_and_dropout():
    g = torch.Generator().manual_seed(0)
    _check_same(MLP(6, (16, 8), 3, batch_norm=True, dropout_rate=0.2), torch.randn(8, 6, generator=g),
                torch.randint(0, 3, (8,), generator=g))


def test_equals_torch_func_on_a_cnn():
    g = torch.Generator().manual_seed(1)
    model = AdvancedCNN(1, 4, base_channels=4, num_blocks=(1, 1, 1, 1), stem="cifar")
    _check_same(model, torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g))


def test_unused_leaves_get_zeros_and_integer_leaves_pass_through():
    params = {"w": torch.ones(3), "unused": torch.full((2,), 5.0), "n": torch.tensor(7)}
    grads, (value, aux) = autograd_grad_and_value(lambda p: ((p["w"] ** 2).sum(), p["w"] * 2), params)
    assert torch.equal(grads["w"], torch.full((3,), 2.0)) and torch.equal(grads["unused"], torch.zeros(2))
    assert grads["n"] is params["n"] and float(value) == 3.0 and not aux.requires_grad
