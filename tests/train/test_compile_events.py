"""Compile events in fit's history: the batch signatures each epoch gave the train and eval
steps for the first time, and evaluation's padded last batch (one shape, the same numbers)."""

import functools

import pytest
import torch

from deepfn import losses, optim, random
from deepfn.models import MLP
from deepfn.train import TrainState, evaluate, fit, make_eval_step, make_train_step
from deepfn.train.compile.signatures import SignatureLog, batch_signature

MODEL = MLP(6, (16,), 3, dropout_rate=0.2, batch_norm=True)
PAD = -1
masked_loss = functools.partial(losses.cross_entropy, ignore_index=PAD)


def _data(seed, n):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def _fit(epochs, *, compile=False, compile_cache=None, eval_pad_label=PAD):
    opt = optim.adam(1e-2)
    ts = TrainState.create(MODEL, opt, random.key(1))
    step = make_train_step(MODEL, losses.cross_entropy, opt, compile=compile, compile_cache=compile_cache)
    eval_step = make_eval_step(MODEL, masked_loss, ignore_index=PAD, compile=compile, compile_cache=compile_cache)
    # 40 training rows in batches of 16: two full batches a epoch (the last 8 dropped);
    # 21 validation rows in batches of 8: two full batches and one of 5.
    return fit(step, ts, _data(0, 40), epochs=epochs, batch_size=16, key=random.key(2), eval_step=eval_step,
               val_data=_data(1, 21), eval_batch_size=8, eval_pad_label=eval_pad_label, progress=False)


def test_signature_names_structure_shapes_and_dtypes():
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64)
    assert batch_signature((x, y)) == batch_signature((x + 1, y + 2))
    assert batch_signature((x, y)) != batch_signature((x[:3], y[:3]))
    assert batch_signature((x, y)) != batch_signature((x.double(), y))
    assert batch_signature(((x, x), y)) != batch_signature(([x, x], y))
    assert batch_signature((x, y)) != batch_signature(((x,), y))


def test_signature_log_counts_new_signatures_once():
    log = SignatureLog()
    x = torch.zeros(4, 3)
    for batch in (x, x, x[:2], x):
        log.see(batch)
    assert log.take_new() == 2 and log.take_new() == 0 and len(log) == 2
    log.see(x[:1])
    assert log.take_new() == 1


def test_no_new_signatures_after_the_first_epoch():
    _, history = _fit(3)
    assert history.column("train_new_signatures") == [1, 0, 0]
    assert history.column("eval_new_signatures") == [1, 0, 0]   # the partial batch padded to 8 rows


def test_unpadded_partial_batch_is_a_second_eval_signature():
    _, history = _fit(2, eval_pad_label=None)
    assert history.column("eval_new_signatures") == [2, 0]


def test_padded_evaluation_equals_the_unpadded_one():
    ts = TrainState.create(MODEL, optim.adam(1e-2), random.key(3))
    x, y = _data(4, 21)
    plain = make_eval_step(MODEL, losses.cross_entropy, compile=False)
    masked = make_eval_step(MODEL, masked_loss, ignore_index=PAD, compile=False)
    log = SignatureLog()
    padded = evaluate(masked, ts.params, ts.state, (x, y), 8, pad_label=PAD, signatures=log)
    reference = evaluate(plain, ts.params, ts.state, (x, y), 8)
    assert len(log) == 1 and set(padded) == set(reference)
    for name in reference:
        torch.testing.assert_close(padded[name], reference[name], rtol=1e-6, atol=1e-7)
    # The oracle: the mean over all 21 rows at once.
    logits = MODEL.apply(ts.params, ts.state, x)[0]
    torch.testing.assert_close(padded["loss"], torch.nn.functional.cross_entropy(logits, y).item(),
                               rtol=1e-6, atol=1e-7)
    assert padded["accuracy"] == pytest.approx((logits.argmax(-1) == y).float().mean().item())


def test_padding_with_a_label_the_loss_counts_would_change_the_loss():
    # The test above can fail: a loss that does not ignore the pad label sees the copies.
    ts = TrainState.create(MODEL, optim.adam(1e-2), random.key(3))
    x, y = _data(4, 21)
    counting = make_eval_step(MODEL, losses.cross_entropy, compile=False)
    padded = evaluate(counting, ts.params, ts.state, (x, y), 8, pad_label=0)
    reference = evaluate(counting, ts.params, ts.state, (x, y), 8)
    assert padded["loss"] != pytest.approx(reference["loss"], rel=1e-4)


@pytest.mark.slow   # two compiles; tests/scripts' compiled MLP run checks the same count of saved steps
def test_compiled_steps_compile_once_per_new_signature(tmp_path):
    # Saved steps are static-shape compiles, one file per input signature: the files are the compiles.
    cache = tmp_path / "steps"
    _, history = _fit(2, compile=True, compile_cache=str(cache))
    assert history.column("train_new_signatures") == [1, 0] and history.column("eval_new_signatures") == [1, 0]
    assert len(list(cache.iterdir())) == 2
