"""Hostile inputs to training, data, checkpoints and the distributed helpers (no process group)."""

from __future__ import annotations

import os
import tempfile

import torch

from deepfn import checkpoint, data, distributed, losses, optim
from deepfn.models import MLP
from deepfn.train import TrainState, evaluate, fit, make_train_step

from .case import Case, k, x

_MODEL = MLP(4, (8,), 3)
_OPT = optim.sgd(0.1)
_XY = (x(8, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]))


def _state():
    return TrainState.create(_MODEL, _OPT, k())


def _step(**kw):
    return make_train_step(_MODEL, losses.cross_entropy, _OPT, compile=False, **kw)


def _fit(**kw):
    args = dict(epochs=1, batch_size=4, key=k(), progress=False)
    return fit(_step(), _state(), _XY, **{**args, **kw})


def _tmp(name: str, content: bytes | None = None) -> str:
    """A path in a fresh temporary folder (with ``content`` written there, if given)."""
    path = os.path.join(tempfile.mkdtemp(prefix="deepfn-hostile-"), name)
    if content is not None:
        with open(path, "wb") as f:
            f.write(content)
    return path


TRAIN = [
    Case("make_train_step loss_fn a str", lambda: make_train_step(_MODEL, "cross_entropy", _OPT, compile=False), TypeError,
         r"make_train_step: loss_fn must be callable"),
    Case("make_train_step optimizer a torch optimizer class", lambda: make_train_step(_MODEL, losses.cross_entropy, torch.optim.SGD),
         TypeError, r"make_train_step: optimizer must be a GradientTransformation"),
    Case("make_train_step accumulation 0", lambda: _step(accumulation_steps=0), ValueError,
         r"make_train_step: accumulation_steps must be a positive int; got 0"),
    Case("make_train_step clip_norm negative", lambda: _step(clip_norm=-1.0), ValueError,
         r"make_train_step: clip_norm must be None or a positive float; got -1\.0"),
    Case("make_train_step policy a str", lambda: _step(policy="bf16"), TypeError,
         r"make_train_step: policy must be None or an amp\.Policy; got str"),
    Case("make_train_step compile fast", lambda: make_train_step(_MODEL, losses.cross_entropy, _OPT, compile="fast"), ValueError,
         r"make_train_step: compile must be True/'whole'"),
    Case("step batch a tensor", lambda: _step()(_state(), _XY[0], k()), ValueError,
         r"batch must be a pair \(inputs, labels\); got Tensor"),
    Case("step batch sizes differ", lambda: _step()(_state(), (_XY[0], _XY[1][:5]), k()), ValueError,
         r"every batch tensor needs the same leading \(batch\) size"),
    Case("step batch not divisible by accumulation", lambda: _step(accumulation_steps=3)(_state(), _XY, k()), ValueError,
         r"batch size must be divisible by accumulation_steps=3; got 8"),
    Case("step x of 5 features", lambda: _step()(_state(), (x(8, 5), _XY[1]), k()), ValueError,
         r"MLP\(.*\.apply: x must have size 4 \(input_dim\)"),
    Case("step labels out of range", lambda: _step()(_state(), (_XY[0], _XY[1] + 3), k()), ValueError,
         r"cross_entropy: labels must lie in \[0, 3\)"),
    Case("step train state of another model",
         lambda: _step()(TrainState.create(MLP(4, (8,), 5), _OPT, k()), _XY, k()), ValueError,
         r"Dense\(in_features=8, out_features=3, bias=True\)\.apply: params\['weight'\] must be \[3, 8\]; got float32 \[5, 8\]"),
    Case("TrainState loss_scale a float", lambda: TrainState({}, {}, (), loss_scale=2.0), TypeError,
         r"TrainState: loss_scale must be None or an amp\.DynamicLossScale"),
    Case("fit batch_size 0", lambda: _fit(batch_size=0), ValueError, r"fit: batch_size must be a positive int; got 0"),
    Case("fit epochs -1", lambda: _fit(epochs=-1), ValueError, r"fit: epochs must be a positive int; got -1"),
    Case("fit patience 0", lambda: _fit(patience=0), ValueError, r"fit: patience must be a positive int or None; got 0"),
    Case("fit mode best", lambda: _fit(mode="best"), ValueError, r"fit: mode must be one of \['min', 'max'\]; got 'best'"),
    Case("fit float key", lambda: _fit(key=x(2)), TypeError, r"fit: key must be a deepfn\.random\.key \(int64 \[2\]\)"),
    Case("fit resume without folder", lambda: _fit(resume=True), ValueError, r"fit: resume=True needs checkpoint_dir"),
    Case("fit val_data without eval_step", lambda: _fit(val_data=_XY), ValueError,
         r"fit: eval_step and val_data go together; got only val_data"),
    Case("fit monitor val without validation", lambda: _fit(monitor="val_accuracy"), ValueError,
         r"fit: monitor='val_accuracy' needs eval_step and val_data"),
    Case("evaluate batch_size 0", lambda: evaluate(lambda p, s, b: {"loss": x()}, {}, {}, _XY, 0), ValueError,
         r"train\.evaluate: batch_size must be a positive int; got 0"),
]

DATA = [
    Case("digits split training", lambda: data.digits("training"), ValueError,
         r"data\.digits: split must be one of \['train', 'val', 'test'\]; got 'training'"),
    Case("batches ragged data", lambda: list(data.batches((x(8, 4), torch.arange(7)), 4)), ValueError,
         r"batches: every tensor needs the same leading size"),
    Case("batches size 0", lambda: list(data.batches(_XY, 0)), ValueError, r"batches: batch_size must be a positive int; got 0"),
    Case("batches empty tuple", lambda: list(data.batches((), 4)), ValueError, r"batches: data must hold at least one tensor"),
    Case("batches a bare tensor", lambda: list(data.batches(x(8, 4), 4)), TypeError,
         r"batches: data must be a tuple of tensors, e\.g\. \(x, y\)"),
    Case("batches float key", lambda: list(data.batches(_XY, 4, key=x(2))), TypeError,
         r"batches: key must be None or an int64 tensor \[2\]"),
    Case("random_crop padding -1", lambda: data.random_crop(k(), x(2, 1, 8, 8), -1), ValueError,
         r"data\.random_crop: padding must be a non-negative int; got -1"),
    Case("random_crop 3-d images", lambda: data.random_crop(k(), x(1, 8, 8), 1), ValueError,
         r"data\.random_crop: images must be 4-d \[B, C, H, W\]"),
    Case("random_crop int padding as float", lambda: data.random_crop(k(), x(2, 1, 8, 8), 1.5), ValueError,
         r"data\.random_crop: padding must be a non-negative int; got 1\.5"),
    Case("random_flip p 1.5", lambda: data.random_flip(k(), x(2, 1, 8, 8), 1.5), ValueError,
         r"data\.random_flip: p must be a float in \[0, 1\]; got 1\.5"),
    Case("random_flip float key", lambda: data.random_flip(x(2), x(2, 1, 8, 8)), TypeError,
         r"data\.random_flip: key must be an int64 tensor \[2\]"),
    Case("random_flip 2-d images", lambda: data.random_flip(k(), x(8, 8)), ValueError,
         r"data\.random_flip: images must be 4-d \[B, C, H, W\]"),
]

CHECKPOINT = [
    Case("load a missing file", lambda: checkpoint.load(_tmp("none.safetensors")), FileNotFoundError, r"none\.safetensors"),
    Case("load a folder", lambda: checkpoint.load(tempfile.mkdtemp(prefix="deepfn-hostile-")), (IsADirectoryError, ValueError),
         r"deepfn-hostile-"),
    Case("load a text file", lambda: checkpoint.load(_tmp("notes.safetensors", b"hello, not a checkpoint")), ValueError,
         r"notes\.safetensors"),
    Case("load an empty file", lambda: checkpoint.load(_tmp("empty.safetensors", b"")), ValueError,
         r"empty\.safetensors.*too short"),
    Case("save metadata a list", lambda: checkpoint.save(_tmp("m.safetensors"), {"a": x(2)}, metadata=[1]), TypeError,
         r"checkpoint\.save: metadata must be a dict or None; got list"),
    Case("save metadata not JSON", lambda: checkpoint.save(_tmp("m.safetensors"), {"a": x(2)}, metadata={"f": object()}),
         TypeError, r"checkpoint\.save: metadata must be JSON-serialisable"),
    Case("CheckpointManager keep_last 0", lambda: checkpoint.CheckpointManager(_tmp("ckpts"), keep_last=0), ValueError,
         r"CheckpointManager: keep_last must be a positive int; got 0"),
    Case("CheckpointManager restore a missing step", lambda: checkpoint.CheckpointManager(_tmp("ckpts")).restore(7),
         FileNotFoundError, r"CheckpointManager: no checkpoint for step 7"),
    Case("CheckpointManager save step -1", lambda: checkpoint.CheckpointManager(_tmp("ckpts")).save(-1, {"a": x(2)}),
         ValueError, r"CheckpointManager\.save: step must be a non-negative int; got -1"),
    Case("CheckpointManager metric a str", lambda: checkpoint.CheckpointManager(_tmp("ckpts")).save(1, {"a": x(2)}, {"loss": "low"}),
         TypeError, r"CheckpointManager\.save: metrics\['loss'\] must be a number"),
]

DISTRIBUTED = [
    Case("init unknown backend", lambda: distributed.init("carrier-pigeon"), ValueError, r"carrier-pigeon"),
    Case("init timeout negative", lambda: distributed.init("gloo", timeout=-1.0), ValueError, r"timeout must be positive; got -1\.0"),
    Case("all_reduce_mean bucket 0", lambda: distributed.all_reduce_mean({"a": x(2)}, bucket_mb=0), ValueError,
         r"all_reduce_mean: bucket_mb must be"),
    Case("broadcast src 1 alone", lambda: distributed.broadcast({"a": x(2)}, src=1), ValueError,
         r"broadcast: src must be"),
    Case("shard_indices rank beyond world", lambda: distributed.shard_indices(k(), 0, 10, 2, 2), ValueError,
         r"shard_indices: rank must be an int in \[0, world_size=2\); got 2"),
    Case("shard_size world 0", lambda: distributed.shard_size(10, 0), ValueError, r"distributed\.shard_size: world_size must be an int >= 1; got 0"),
]

CASES = TRAIN + DATA + CHECKPOINT + DISTRIBUTED
