import os, sys, time, tempfile, functools, torch
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()
from scripts.bench_parts import workloads as W
from deepfn import losses, random
from deepfn.train import TrainState, make_train_step
wl = W.WORKLOADS[sys.argv[1]]
mode = {"split": "split", "whole": True}[sys.argv[2]]
opt = wl.deepfn_opt()
loss_fn = functools.partial(losses.cross_entropy, label_smoothing=wl.label_smoothing)
step = make_train_step(wl.model, loss_fn, opt, clip_norm=wl.clip, compile=mode)
box = [TrainState.create(wl.model, opt, random.key(0))]
inputs, labels = W.make_batch(wl)
batch = (inputs if len(inputs) > 1 else inputs[0], labels)
keys = random.split(random.key(1), 16).unbind(0)
def one():
    box[0], m = step(box[0], batch, keys[0])
    return m["loss"]
t0 = time.perf_counter(); one(); first = time.perf_counter() - t0
t = W.time_steps(one, int(sys.argv[3]))
print(sys.argv[1], sys.argv[2], "first", round(first, 1), "median ms", round(t["median_s"] * 1e3, 2), "min", round(t["min_s"]*1e3, 2), flush=True)
