"""fit's units: early stopping, epoch means over finite steps and the skipped-step count,
the summary line, and the batches' order checks."""

import math

import pytest
import torch

from deepfn import random
from deepfn.train.early_stopping import EarlyStopping, improved, smoothed
from deepfn.train.fit_batches import EpochBatches
from deepfn.train.fit_report import EpochMeans, summary_line


def test_improved_by_mode_and_min_delta():
    assert improved(1.0, None, "min", 0.0) and not improved(math.nan, None, "min", 0.0)
    assert not improved(None, 1.0, "min", 0.0)
    assert improved(0.8, 1.0, "min", 0.1) and not improved(0.95, 1.0, "min", 0.1)
    assert improved(1.2, 1.0, "max", 0.1) and not improved(1.05, 1.0, "max", 0.1)


def test_early_stopping_counts_complete_epochs_without_improvement():
    stop = EarlyStopping("min", 0.0, patience=2)
    assert stop.observe(1.0, 1, partial=False) and stop.best_epoch == 1
    assert not stop.observe(1.5, 2, partial=True) and stop.wait == 0   # a partial epoch never counts
    assert not stop.observe(1.5, 2, partial=False) and not stop.stopped
    assert not stop.observe(1.2, 3, partial=False) and stop.stopped and stop.best_value == 1.0


def _best_epoch(values, **kw):
    stop = EarlyStopping("max", 0.0, **kw)
    for epoch, value in enumerate(values, 1):
        stop.observe(value, epoch, partial=False)
    return stop


def test_smoothing_picks_the_stable_epoch_where_the_raw_value_picks_one_noisy_epoch():
    # As a 270-image validation split reads: epoch 2 is one lucky read, epochs 5-7 are stable.
    noisy = [0.90, 0.99, 0.93, 0.96, 0.97, 0.97, 0.97]
    assert _best_epoch(noisy).best_epoch == 2
    stop = _best_epoch(noisy, smoothing=3)
    assert stop.best_epoch == 7 and stop.best_value == pytest.approx(0.97)
    assert stop.recent == [0.97, 0.97] and stop.last_value == pytest.approx(0.97)


def test_smoothing_waits_on_the_mean_and_stops_with_patience():
    stop = _best_epoch([0.5, 0.9, 0.5, 0.5], smoothing=2, patience=2)
    # means: 0.5, 0.7, 0.7 (no gain), 0.5 -> best epoch 2, two epochs without gain
    assert stop.best_epoch == 2 and stop.wait == 2 and stop.stopped


def test_smoothing_window_skips_partial_epochs_and_missing_values():
    stop = EarlyStopping("min", 0.0, smoothing=2)
    stop.observe(1.0, 1, partial=False)
    assert stop.observe(0.1, 2, partial=True) and stop.recent == [1.0]   # compared, not kept
    stop.observe(3.0, 2, partial=False)
    assert stop.recent == [3.0] and stop.last_value == pytest.approx(2.0)
    assert not stop.observe(None, 3, partial=False) and stop.last_value is None
    assert smoothed([1.0, 2.0]) == 1.5 and smoothed([]) is None and math.isnan(smoothed([1.0, math.nan]))


def test_replay_refills_the_window_as_observing_did():
    values = [0.4, 0.3, 0.2, 0.35]
    seen = _best_epoch(values, smoothing=3)
    again = EarlyStopping("max", 0.0, smoothing=3)
    again.replay(values)
    assert again.recent == seen.recent == [0.2, 0.35]
    short = EarlyStopping("max", 0.0, smoothing=3)
    short.replay([0.4])
    assert short.recent == [0.4]
    plain = EarlyStopping("max", 0.0)
    plain.replay(values)
    assert plain.recent == []


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_early_stopping_rejects_a_smoothing_that_is_not_a_positive_int(bad):
    with pytest.raises(ValueError, match=f"smoothing must be a positive int .*; got {bad!r}"):
        EarlyStopping("min", smoothing=bad)


def _metrics(loss, nonfinite):
    return {"loss": torch.tensor(loss), "nonfinite": torch.tensor(nonfinite)}


def test_epoch_means_average_over_finite_steps_and_count_skipped_ones():
    means = EpochMeans()
    means.add(_metrics(1.0, False), 8)
    means.add(_metrics(math.nan, True), 8)
    means.add(_metrics(3.0, False), 4)
    out = means.means()
    assert out["train_loss"] == pytest.approx((8 * 1.0 + 4 * 3.0) / 12)
    assert out["skipped_steps"] == 1 and out["train_nonfinite"] == pytest.approx(8 / 20)
    assert means.rows == 20 and means.running_loss() == pytest.approx(out["train_loss"])


def test_epoch_means_of_an_ensemble_count_each_members_finite_steps():
    means = EpochMeans()
    means.add({"loss": torch.tensor([1.0, math.nan]), "nonfinite": torch.tensor([False, True])}, 8)
    means.add({"loss": torch.tensor([3.0, 5.0]), "nonfinite": torch.tensor([False, False])}, 8)
    out = means.means()
    assert out["train_loss"] == pytest.approx((1.0 + 3.0 + 5.0) / 3) and out["skipped_steps"] == 1


def test_epoch_means_without_a_finite_step_are_nan_and_steps_without_the_flag_all_count():
    means = EpochMeans()
    means.add(_metrics(math.nan, True), 8)
    assert math.isnan(means.means()["train_loss"])
    plain = EpochMeans()
    plain.add({"loss": torch.tensor(2.0), "lr": torch.tensor(0.1)}, 8)
    assert plain.means() == {"train_loss": 2.0, "skipped_steps": 0}
    assert float(plain.last_lr) == pytest.approx(0.1)


def test_summary_line_names_skipped_steps_only_when_there_are_some():
    row = {"epoch": 2, "train_loss": 0.5, "samples_per_s": 1000.0, "epoch_time": 1.5, "skipped_steps": 0}
    assert summary_line(row, 5) == "epoch 2/5 train_loss=0.5 1000 ex/s 1.5s"
    assert "train_loss=0.5 skipped_steps=3 1000 ex/s" in summary_line({**row, "skipped_steps": 3}, 5)


def test_epoch_batches_cover_the_data_and_check_batch_order():
    x, y = torch.arange(20.0), torch.arange(20)
    batches = EpochBatches((x, y), 8, random.key(0), distributed=False, drop_last=False, batch_fn=None,
                           augment=None, batch_order=None, step_key=None)
    assert batches.per_epoch == 3
    order = batches.order(0)
    seen = torch.cat([batches.batch(order, b, b)[0][0] for b in range(3)])
    assert torch.equal(seen.sort().values, x)
    bad = EpochBatches((x, y), 8, random.key(0), distributed=False, drop_last=True, batch_fn=None,
                       augment=None, batch_order=lambda key, rows: rows[:-1], step_key=None)
    with pytest.raises(ValueError, match="must return the same 20 row indices"):
        bad.order(0)
