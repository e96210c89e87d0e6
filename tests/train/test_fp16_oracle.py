"""The fp16 recipe (compute in float16, dynamic loss scaling) against PyTorch's own:
``torch.autocast(float16)`` + ``torch.amp.GradScaler`` + ``torch.optim.SGD`` with the same
weights. It runs on the CPU here and unchanged on CUDA (``DEEPFN_TEST_DEVICE=cuda``)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from deepfn import amp, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import TrainState, make_train_step

DEVICE = torch.device(os.environ.get("DEEPFN_TEST_DEVICE", "cpu"))
# Steps 2 and 4 overflow in float16 (inputs of 6e4 make the logits inf): both sides skip them.
OVERFLOW = {2, 4}


def _batches(n):
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        x = torch.randn(16, 6, generator=g)
        y = torch.randint(0, 3, (16,), generator=g)
        if i in OVERFLOW:
            x[0] = 6e4
        yield x.to(DEVICE), y.to(DEVICE)


def _torch_twin(params):
    flat = {k: v.detach().clone() for k, v in tree.flatten(params).items()}
    net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).to(DEVICE)
    with torch.no_grad():
        for name, p in net.named_parameters():
            idx, kind = name.split(".")
            p.copy_(flat[f"network.{idx}.{kind}"])
    return net


@pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="no CUDA device")
def test_fp16_policy_and_loss_scale_match_autocast_and_grad_scaler():
    model, opt = MLP(6, (16,), 3), optim.sgd(0.05, momentum=0.9)
    policy = amp.Policy("float32", "float16", "float32")
    scale = amp.DynamicLossScale(init_scale=2.0 ** 12, growth_interval=2)
    ts = tree.map(lambda t: t.to(DEVICE) if isinstance(t, torch.Tensor) else t,
                  TrainState.create(model, opt, random.key(0), loss_scale=scale))
    step = make_train_step(model, losses.cross_entropy, opt, policy=policy, compile=False)

    net = _torch_twin(ts.params)
    torch_opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler(DEVICE.type, init_scale=2.0 ** 12, growth_interval=2)
    for i, (x, y) in enumerate(_batches(7)):
        ts, metrics = step(ts, (x, y), None)
        used = scaler.get_scale()
        torch_opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE.type, dtype=torch.float16):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(torch_opt)
        scaler.update()

        assert bool(metrics["grads_finite"]) == (i not in OVERFLOW), i
        assert float(metrics["loss_scale"]) == used, i
        assert float(ts.loss_scale.loss_scale) == scaler.get_scale(), i
        if i not in OVERFLOW:
            torch.testing.assert_close(metrics["loss"], loss.detach(), rtol=2e-3, atol=2e-3)
        ours = tree.flatten(ts.params)
        for name, p in net.named_parameters():
            idx, kind = name.split(".")
            torch.testing.assert_close(ours[f"network.{idx}.{kind}"], p.detach(), rtol=2e-3, atol=2e-3,
                                       msg=lambda m, i=i, name=name: f"step {i}, {name}: {m}")
    assert all(t.dtype == torch.float32 for t in tree.leaves(ts.params))
