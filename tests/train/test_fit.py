"""fit: early stopping, history rows and files, best/keep-last checkpoints, bit-identical
resume (at epoch ends and mid-epoch), augmentation keys, ensembles, distillation, bad input."""

import json
import math
import os

import pytest
import torch

from deepfn import checkpoint, losses, optim, random, tree
from deepfn.models import MLP
from deepfn.train import (
    TrainState,
    distillation_loss,
    ensemble_train_state,
    evaluate,
    fit,
    make_ensemble_train_step,
    make_eval_step,
    make_train_step,
    read_history,
    teacher_logits,
)

MODEL = MLP(6, (16,), 3, dropout_rate=0.2, batch_norm=True)


def _data(seed, n=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def _setup(lr=0.05):
    opt = optim.adam(lr=optim.cosine_decay(lr, 40))
    ts = TrainState.create(MODEL, opt, random.key(1))
    step = make_train_step(MODEL, losses.cross_entropy, opt, compile=False, lr=optim.cosine_decay(lr, 40))
    return ts, step, make_eval_step(MODEL, losses.cross_entropy, compile=False)


def _scripted_eval(values):
    """An eval_step whose loss is values[0], values[1], ... on successive epochs."""
    calls = iter(values)

    def eval_step(params, state, batch):
        return {"loss": torch.tensor(float(next(calls)))}

    return eval_step


def _run(tmp_path, **kw):
    ts, step, ev = _setup()
    base = dict(epochs=3, batch_size=8, key=random.key(7), eval_step=ev, val_data=_data(1, 16), progress=False)
    return fit(step, ts, _data(0), **{**base, **kw})


def test_early_stopping_with_patience():
    ts, step, _ = _setup()
    _, hist = fit(step, ts, _data(0), epochs=10, batch_size=8, key=random.key(0), progress=False,
                  eval_step=_scripted_eval([1.0, 0.5, 0.6, 0.7, 0.4]), val_data=_data(1, 8), patience=2)
    assert hist.stopped_early and len(hist.rows) == 4
    assert (hist.best_epoch, hist.best_value) == (2, 0.5)


def test_early_stopping_mode_max_and_min_delta():
    ts, step, _ = _setup()
    _, hist = fit(step, ts, _data(0), epochs=10, batch_size=8, key=random.key(0), progress=False,
                  eval_step=_scripted_eval([0.5, 0.55, 0.9, 0.95]), val_data=_data(1, 8), patience=1,
                  monitor="val_loss", mode="max", min_delta=0.1)
    # 0.55 is not 0.1 better than 0.5: patience 1 stops at epoch 2.
    assert hist.stopped_early and len(hist.rows) == 2 and hist.best_epoch == 1


# A noisy validation accuracy: epoch 2 reads best once; epochs 5-7 are good together.
NOISY = [0.90, 0.99, 0.93, 0.96, 0.97, 0.97, 0.97]


def test_smoothing_keeps_the_stable_epoch_not_the_lucky_one(tmp_path):
    ts, step, _ = _setup()
    kw = dict(epochs=7, batch_size=8, key=random.key(0), progress=False, val_data=_data(1, 8),
              monitor="val_loss", mode="max")
    raw, raw_hist = fit(step, ts, _data(0), eval_step=_scripted_eval(NOISY), **kw)
    assert raw_hist.best_epoch == 2 and int(raw.step) == 10
    ts, step, _ = _setup()
    best, hist = fit(step, ts, _data(0), eval_step=_scripted_eval(NOISY), smoothing=3,
                     checkpoint_dir=tmp_path, keep_last=1, **kw)
    assert hist.best_epoch == 7 and int(best.step) == 35
    assert hist.best_value == pytest.approx(0.97)
    assert sorted(os.listdir(tmp_path)) == ["ckpt_000000035.safetensors"]   # the best is the last


def test_smoothing_survives_a_resume(tmp_path):
    kw = dict(epochs=7, batch_size=8, key=random.key(0), progress=False, val_data=_data(1, 8),
              monitor="val_loss", mode="max", smoothing=3, checkpoint_dir=tmp_path)
    ts, step, _ = _setup()
    fit(step, ts, _data(0), eval_step=_scripted_eval(NOISY[:4]), **{**kw, "epochs": 4})
    ts, step, _ = _setup()
    best, hist = fit(step, ts, _data(0), eval_step=_scripted_eval(NOISY[4:]), resume=True, **kw)
    assert hist.best_epoch == 7 and int(best.step) == 35


def test_history_rows_and_files(tmp_path):
    ts, hist = _run(tmp_path, history_path=tmp_path / "h.jsonl", plot_path=tmp_path / "c.png")
    rows = read_history(tmp_path / "h.jsonl")
    assert rows == json.loads(json.dumps(hist.rows)) and len(rows) == 3
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["step"] for r in rows] == [5, 10, 15]
    for r in rows:
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "epoch_time",
                     "samples_per_s"):
            assert isinstance(r[name], float), name
        assert 0.0 <= r["val_accuracy"] <= 1.0 and not r["partial"]
    assert rows[0]["lr"] == pytest.approx(optim.cosine_decay(0.05, 40)(4))
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    with open(tmp_path / "c.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_val_metrics_equal_evaluate(tmp_path):
    ts, hist = _run(tmp_path, epochs=1, restore_best=False)
    ev = make_eval_step(MODEL, losses.cross_entropy, compile=False)
    again = evaluate(ev, ts.params, ts.state, _data(1, 16), 5)   # uneven batches, weighted mean
    assert again["loss"] == pytest.approx(hist.rows[0]["val_loss"], rel=1e-5)
    assert again["accuracy"] == pytest.approx(hist.rows[0]["val_accuracy"])


def test_best_checkpoint_kept_and_returned(tmp_path):
    ts, step, _ = _setup()
    best, hist = fit(step, ts, _data(0), epochs=5, batch_size=8, key=random.key(0), progress=False,
                     eval_step=_scripted_eval([3.0, 1.0, 2.0, 4.0, 5.0]), val_data=_data(1, 8),
                     checkpoint_dir=tmp_path, keep_last=2)
    files = sorted(os.listdir(tmp_path))
    assert files == [f"ckpt_{s:09d}.safetensors" for s in (10, 20, 25)]
    assert int(best.step) == 10 and hist.best_epoch == 2
    stored = checkpoint.load(tmp_path / files[0])
    assert tree.all_equal(stored.params, best.params)


def _assert_same(a, b):
    for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("first", [dict(epochs=2), dict(max_steps=7)], ids=["epoch_end", "mid_epoch"])
def test_resume_is_bit_identical(tmp_path, first):
    whole, hist = _run(tmp_path / "a", restore_best=False, checkpoint_dir=tmp_path / "a")
    _run(tmp_path / "b", restore_best=False, checkpoint_dir=tmp_path / "b", **first)
    resumed, hist2 = _run(tmp_path / "b", restore_best=False, checkpoint_dir=tmp_path / "b", resume=True)
    _assert_same(resumed, whole)
    final = [r for r in hist2.rows if not r["partial"]]
    assert [r["train_loss"] for r in final][-1] == hist.rows[-1]["train_loss"]
    assert [r["val_loss"] for r in final] == [r["val_loss"] for r in hist.rows]


def test_resume_after_finish_returns_stored_state(tmp_path):
    best, _ = _run(tmp_path, checkpoint_dir=tmp_path)
    again, hist = _run(tmp_path, checkpoint_dir=tmp_path, resume=True)
    _assert_same(again, best)
    assert len(hist.rows) == 3


def test_augment_gets_a_fresh_key_per_step():
    seen = []

    def augment(key, x):
        seen.append(key.clone())
        return x + 0.01 * random.normal(key, x.shape)

    ts, step, _ = _setup()
    fit(step, ts, _data(0), epochs=2, batch_size=8, key=random.key(0), progress=False, augment=augment)
    assert len(seen) == 10 and len({tuple(k.tolist()) for k in seen}) == 10


def test_ensemble_with_step_key():
    opt = optim.sgd(0.1)
    model = MLP(6, (8,), 3)
    ts = ensemble_train_state(model, opt, random.key(0), 3)
    step = make_ensemble_train_step(model, losses.cross_entropy, opt, compile=False)
    out, hist = fit(step, ts, _data(0), epochs=2, batch_size=8, key=random.key(0), progress=False,
                    step_key=lambda k: random.split(k, 3), restore_best=False)
    assert out.step.tolist() == [10, 10, 10] and len(hist.rows) == 2


def test_distillation_batch_fn_and_loss():
    teacher = MLP(6, (16,), 3)
    t_params, t_state = teacher.init(random.key(3))
    x, y = _data(0)
    t_logits = teacher_logits(teacher, t_params, t_state, x, batch_size=7)
    torch.testing.assert_close(t_logits, teacher.apply(t_params, t_state, x)[0])
    assert not t_logits.requires_grad
    student, opt = MLP(6, (4,), 3), optim.adam(1e-2)
    loss_fn = distillation_loss(temperature=2.0, alpha=0.7)
    s_logits = student.apply(*student.init(random.key(0)), x)[0]
    torch.testing.assert_close(loss_fn(s_logits, (y, t_logits)),
                               losses.distillation(s_logits, t_logits, y, temperature=2.0, alpha=0.7))
    step = make_train_step(student, loss_fn, opt, compile=False)
    ts, hist = fit(step, TrainState.create(student, opt, random.key(0)), (x, y, t_logits), epochs=2,
                   batch_size=8, key=random.key(0), progress=False, batch_fn=lambda a, b, c: (a, (b, c)))
    assert len(hist.rows) == 2 and "train_loss" in hist.rows[0]


@pytest.mark.parametrize("kw, err, match", [
    (dict(epochs=0), ValueError, "epochs must be a positive int"),
    (dict(batch_size=100), ValueError, "fewer than batch_size=100"),
    (dict(mode="avg"), ValueError, "mode must be one of"),
    (dict(patience=0), ValueError, "patience must be a positive int or None"),
    (dict(monitor="val_f1"), ValueError, "monitor='val_f1' is not a history column"),
    (dict(resume=True), ValueError, "resume=True needs checkpoint_dir"),
    (dict(val_data=None), ValueError, "eval_step and val_data go together"),
    (dict(key=torch.zeros(2)), TypeError, "key must be a deepfn.random.key"),
    (dict(max_steps=-1), ValueError, "max_steps must be a positive int or None"),
    (dict(smoothing=0), ValueError, "smoothing must be a positive int; got 0"),
    (dict(smoothing=2.0), ValueError, "smoothing must be a positive int; got 2.0"),
])
def test_bad_arguments(tmp_path, kw, err, match):
    with pytest.raises(err, match=match):
        _run(tmp_path, **kw)


def test_bad_data():
    ts, step, _ = _setup()
    x, y = _data(0)
    with pytest.raises(TypeError, match="train_data must be a tuple of tensors"):
        fit(step, ts, x, epochs=1, batch_size=8, key=random.key(0))
    with pytest.raises(ValueError, match="same leading size"):
        fit(step, ts, (x, y[:-1]), epochs=1, batch_size=8, key=random.key(0))
    with pytest.raises(ValueError, match="needs batch_fn"):
        fit(step, ts, (x, y, y), epochs=1, batch_size=8, key=random.key(0), progress=False)
    with pytest.raises(ValueError, match="monitor='val_loss' needs eval_step"):
        fit(step, ts, (x, y), epochs=1, batch_size=8, key=random.key(0), monitor="val_loss")


def test_distillation_loss_rejects_bad_config_and_labels():
    with pytest.raises(ValueError, match="temperature must be a float > 0"):
        distillation_loss(temperature=0.0)
    with pytest.raises(ValueError, match=r"alpha must be a float in \[0, 1\]"):
        distillation_loss(alpha=1.5)
    with pytest.raises(ValueError, match="must be \\(labels, teacher_logits\\)"):
        distillation_loss()(torch.zeros(2, 3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        teacher_logits(MODEL, *MODEL.init(random.key(0)), torch.zeros(4, 6), batch_size=0)


def test_batch_order_is_applied_and_checked():
    seen = []

    def recording_step(train_state, batch, key):
        seen.append(batch[0][:, 0].clone())
        return train_state, {"loss": torch.tensor(0.0)}

    x, y = _data(0)
    x[:, 0] = torch.arange(40.0)   # the row index, to read back which rows came
    ts, _, _ = _setup()
    by_row = lambda key, rows: rows.sort().values  # noqa: E731
    fit(recording_step, ts, (x, y), epochs=1, batch_size=8, key=random.key(0), progress=False, batch_order=by_row)
    assert torch.equal(torch.cat(seen), torch.arange(40.0))
    with pytest.raises(ValueError, match="must return the same 40 row indices"):
        fit(recording_step, ts, (x, y), epochs=1, batch_size=8, key=random.key(0), progress=False,
            batch_order=lambda key, rows: rows[:-1])


def test_curves_drawn_every_plot_interval_and_at_the_end_not_every_epoch(tmp_path, monkeypatch):
    from deepfn.train import fit_report
    drawn = []
    monkeypatch.setattr(fit_report, "plot_history", lambda rows, path: drawn.append(len(rows)))
    _run(tmp_path, epochs=5, plot_path=str(tmp_path / "curves.png"))
    assert drawn == [5]   # a run shorter than PLOT_EVERY_S draws once, at the end
    monkeypatch.setattr(fit_report, "PLOT_EVERY_S", 0.0)
    drawn.clear()
    _run(tmp_path, epochs=3, plot_path=str(tmp_path / "curves.png"))
    assert drawn == [1, 2, 3]


def test_epoch_loss_is_averaged_over_finite_steps_and_skipped_steps_are_reported():
    ts, step, ev = _setup()
    calls = []

    def poisoning_step(train_state, batch, key):   # the third update of the run sees a NaN row
        calls.append(1)
        x, y = batch
        if len(calls) == 3:
            x = x.clone().index_fill_(0, torch.tensor([0]), float("nan"))
        return step(train_state, (x, y), key)

    lines = []
    _, hist = fit(poisoning_step, ts, _data(0), epochs=2, batch_size=8, key=random.key(7), eval_step=ev,
                  val_data=_data(1, 16), progress=False, log=lines.append)
    assert [r["skipped_steps"] for r in hist.rows] == [1, 0]
    assert all(map(math.isfinite, hist.column("train_loss") + hist.column("val_loss")))
    assert "skipped_steps=1" in lines[0] and "skipped_steps" not in lines[1]
