"""Benchmark: greedy decoding with the key/value cache vs full recomputation of the prefix.

``deepfn`` is ``Transformer.greedy_decode`` (cross-attention k/v of the memory projected
once, self-attention k/v of the prefix cached); the baseline reruns ``Transformer.decode``
over the whole prefix at every step (the encoder runs once in both). The model is
d_model 256, 4 heads, d_ff 1024, 3 encoder + 3 decoder layers, vocabulary 1000, batch 8,
source length 32, 64 generated tokens (quick: d_model 64, 1 + 1 layers, 16 tokens). EOS's
output bias is lowered so that every row runs to the full length in both variants.
Target: the cache at least 3x faster (ratio = cached / uncached <= 0.33).
"""

from __future__ import annotations

import statistics
import time

import torch

from deepfn import random, tree
from deepfn.models import Transformer

BOS, EOS = 1, 2


def _median_time(fn, repeats: int) -> float:
    fn()                                   # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _uncached_greedy(model: Transformer, params, src: torch.Tensor, max_len: int) -> torch.Tensor:
    memory = model.encode(params, {}, src)[0]
    prefix = torch.full((src.shape[0], 1), BOS, dtype=torch.int64, device=src.device)
    for _ in range(max_len):
        token = model.decode(params, {}, prefix, memory, src)[0][:, -1].argmax(-1)
        prefix = torch.cat([prefix, token[:, None]], dim=1)
    return prefix[:, 1:]


def run(quick: bool = False) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    d_model, layers, length, batch, repeats = (64, 1, 16, 4, 3) if quick else (256, 3, 64, 8, 3)
    model = Transformer(vocab_size=1000, d_model=d_model, n_heads=4, n_layers=layers, d_ff=4 * d_model,
                        dropout=0.0, max_seq_len=128)
    params = tree.map(lambda p: p.to(device), model.init(random.key(0))[0])
    flat = tree.flatten(params)
    flat["output_layer.bias"] = flat["output_layer.bias"].index_fill(0, torch.tensor([EOS], device=device), -1e4)
    params = tree.unflatten(flat)
    src = random.randint(random.key(1), (batch, 32), 3, 1000).to(device)

    with torch.no_grad():
        cached = model.greedy_decode(params, {}, src, length, bos_id=BOS, eos_id=EOS)
        full = _uncached_greedy(model, params, src, length)
        agree = float((cached == full).float().mean())
        t_cached = _median_time(lambda: model.greedy_decode(params, {}, src, length, bos_id=BOS, eos_id=EOS),
                                repeats)
        t_full = _median_time(lambda: _uncached_greedy(model, params, src, length), repeats)
    tokens = batch * length
    return [{
        "group": "decoding",
        "name": f"greedy d{d_model} {layers}+{layers}L b{batch} len{length} ({device})",
        "deepfn_s": t_cached,
        "baseline": "greedy without cache (decode over the whole prefix each step)",
        "baseline_s": t_full,
        "ratio": t_cached / t_full,
        "note": (f"cached {tokens / t_cached:.0f} tok/s, uncached {tokens / t_full:.0f} tok/s, "
                 f"speedup {t_full / t_cached:.2f}x (target >= 3x); tokens agree {agree:.0%}"),
    }]


if __name__ == "__main__":
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
