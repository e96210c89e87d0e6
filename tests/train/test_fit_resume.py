"""fit(resume=True): the current train state is the template; a damaged newest checkpoint is
skipped for the newest good one, whose own loop position and history are used; a checkpoint
of another model is refused; a step's own loss scale is part of the template."""

import os

import pytest
import torch

from deepfn import amp, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import TrainState, fit, make_eval_step, make_train_step

MODEL = MLP(6, (16,), 3, batch_norm=True)


def _data(seed, n=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long()


def _run(directory, model=MODEL, loss_scale=None, **kw):
    opt = optim.adam(1e-2)
    ts = TrainState.create(model, opt, random.key(1))
    step = make_train_step(model, losses.cross_entropy, opt, compile=False, loss_scale=loss_scale)
    ev = make_eval_step(model, losses.cross_entropy, compile=False)
    base = dict(epochs=3, batch_size=8, key=random.key(7), eval_step=ev, val_data=_data(1, 16), progress=False,
                checkpoint_dir=directory, keep_last=3, restore_best=False)
    return fit(step, ts, _data(0), **{**base, **kw})


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True))


def test_resume_skips_a_damaged_newest_checkpoint_and_uses_that_checkpoints_loop(tmp_path):
    whole, hist = _run(tmp_path / "a")
    _run(tmp_path / "b")
    newest = tmp_path / "b" / "ckpt_000000015.safetensors"
    data = newest.read_bytes()
    newest.write_bytes(data[:len(data) // 2])   # a save cut short
    with pytest.warns(UserWarning, match="ckpt_000000015"):
        resumed, hist2 = _run(tmp_path / "b", resume=True)
    # Step 10's checkpoint says "epoch 2 done": epoch 3 runs again and ends where the whole run did.
    assert _same(resumed, whole)
    assert [r["epoch"] for r in hist2.rows] == [1, 2, 3]
    assert [r["val_loss"] for r in hist2.rows] == [r["val_loss"] for r in hist.rows]


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    _run(tmp_path, epochs=1)
    other = MLP(6, (8,), 3, batch_norm=True)
    with pytest.raises(ValueError, match=r"does not match `like`.*params/network/0/weight: shape \[16, 6\]"):
        _run(tmp_path, model=other, resume=True)


def test_resume_of_a_step_with_its_own_loss_scale(tmp_path):
    scale = amp.DynamicLossScale(init_scale=2.0 ** 8)
    whole, _ = _run(tmp_path / "a", loss_scale=scale)
    _run(tmp_path / "b", loss_scale=scale, epochs=2)
    resumed, hist = _run(tmp_path / "b", loss_scale=scale, resume=True)
    assert isinstance(resumed.loss_scale, amp.DynamicLossScale) and _same(resumed, whole)
    assert len(hist.rows) == 3 and os.path.exists(tmp_path / "b" / "ckpt_000000015.safetensors")
