"""Benchmark: tokens per second of ``models.generate`` on a small GPT, greedy.

Contenders, on the same weights (a fresh ``GPT`` of vocabulary 512, 4 layers, 4 heads, width
128, ``max_len`` 256; prompt 16 tokens, 128 new tokens, batch 1 and 8; quick: 2 layers,
width 64, 16 new tokens, batch 1):

- ``generate(compile=True)``: the cached decode step under ``torch.compile``. The first call
  (the compile, into a fresh Inductor cache, Dynamo's frames dropped first so each batch size
  compiles cold) is reported apart from the steady-state rate;
- ``generate(compile=False)``: the same cached loop, eager;
- an uncached loop: ``GPT.apply`` over the whole prefix for every new token, argmax of the
  last position;
- ``transformers.GPT2LMHeadModel.generate(do_sample=False)`` (eager attention, its dynamic
  key/value cache, ``torch.no_grad``), the weights loaded by ``interop.to_torch``; skipped
  with a reason when ``transformers`` is not installed.

Every contender decodes greedily (``temperature=0``), so all must give the same tokens; each
row reports the share of tokens equal to the compiled cached loop's. The contenders are timed
in turns (``_timing.time_interleaved``), one call of each being a whole ``generate``.
``ratio`` = deepfn time / competitor time (below 1: deepfn is faster).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from deepfn import interop, random
from deepfn.models import GPT, generate

from ._timing import Contender, clear_in_memory_compile_caches, start, time_interleaved

VOCAB, MAX_LEN, PROMPT = 512, 256, 16


def _uncached(model: GPT, params, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding without a cache: the whole prefix through ``apply`` for every token."""
    ids = prompt
    for _ in range(new):
        token = model.apply(params, {}, ids)[0][:, -1].argmax(-1)
        ids = torch.cat([ids, token[:, None]], dim=1)
    return ids


def _hf_model(model: GPT, params) -> tuple[torch.nn.Module | None, str]:
    """``GPT2LMHeadModel`` holding ``params`` (eager attention), or ``(None, why not)``."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError as exc:
        return None, f"transformers not installed ({exc})"
    config = GPT2Config(vocab_size=model.vocab_size, n_positions=model.max_len, n_embd=model.d_model,
                        n_layer=model.n_layers, n_head=model.n_heads, activation_function="gelu_new",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
                        pad_token_id=0)
    config._attn_implementation = "eager"   # transformers' plain matmul-softmax attention
    hf = GPT2LMHeadModel(config).eval()
    interop.to_torch(model, params, {}, hf)
    return hf, ""


def _hf_generate(hf: torch.nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor:
    # eos_token_id=None: every row runs the full length, as the deepfn contenders do.
    with torch.no_grad():
        return hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=new,
                           min_new_tokens=new, eos_token_id=None, pad_token_id=0)


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return 0.0
    return float((a == b).float().mean())


def _row(name: str, deepfn_s: float, baseline: str, baseline_s: float | None, note: str) -> dict:
    return {"group": "generate", "name": name, "deepfn_s": deepfn_s, "baseline": baseline, "baseline_s": baseline_s,
            "ratio": None if baseline_s is None else deepfn_s / baseline_s, "note": note}


def _rows_for_batch(model: GPT, params, batch: int, new: int, steps: int) -> list[dict]:
    prompt = random.randint(random.key(batch), (batch, PROMPT), 1, VOCAB)   # no 0: the pad id
    key = random.key(0)
    tokens = batch * new

    def cached(compile: bool) -> Callable[[], Callable[[], torch.Tensor]]:
        return lambda: (lambda: generate(model, params, prompt, key, max_new_tokens=new, temperature=0.0,
                                         compile=compile))

    clear_in_memory_compile_caches()   # the compiled step's first call compiles for this batch alone
    t0 = time.perf_counter()
    contenders: dict[str, Contender] = {"compiled": start(cached(True), compiled=True)}
    compile_s = contenders["compiled"].figures["first_s"]
    contenders["eager"] = start(cached(False), compiled=False)
    contenders["uncached"] = start(lambda: (lambda: _uncached(model, params, prompt, new)), compiled=False)
    hf, why = _hf_model(model, params)
    if hf is not None:
        contenders["transformers"] = start(lambda: (lambda: _hf_generate(hf, prompt, new)), compiled=False)
    with torch.no_grad():
        reference = contenders["compiled"].one_step()
        agree = {name: _agree(c.one_step(), reference) for name, c in contenders.items()}
    time_interleaved(list(contenders.values()), steps)
    sec = {name: c.figures["median_s"] for name, c in contenders.items()}
    rate = {name: tokens / s for name, s in sec.items()}
    setup_s = time.perf_counter() - t0
    label = f"d{model.d_model} {model.n_layers}L b{batch} prompt{PROMPT} +{new}"
    rates = ", ".join(f"{n} {r:.0f} tok/s" for n, r in rate.items())
    compiled, eager, uncached = sec["compiled"], sec["eager"], sec["uncached"]
    rows = [
        _row(f"greedy compiled vs eager cached, {label}", compiled, "generate(compile=False)", eager,
             f"{rates}; first compiled call (compile) {compile_s:.1f} s; tokens equal to compiled: "
             f"eager {agree['eager']:.0%}; setup+timing {setup_s:.0f} s"),
        _row(f"greedy compiled cached vs uncached, {label}", compiled,
             "uncached loop (apply over the whole prefix, argmax)", uncached,
             f"eager cached / uncached = {eager / uncached:.3f}; tokens equal to compiled: "
             f"uncached {agree['uncached']:.0%}"),
    ]
    if hf is None:
        rows.append(_row(f"greedy vs transformers, {label}", compiled, "GPT2LMHeadModel.generate", None,
                         f"skipped: {why}"))
    else:
        hf_s = sec["transformers"]
        rows.append(_row(f"greedy compiled cached vs transformers, {label}", compiled,
                         "GPT2LMHeadModel.generate(do_sample=False), eager attention", hf_s,
                         f"eager cached / transformers = {eager / hf_s:.3f}; tokens equal to compiled: "
                         f"transformers {agree['transformers']:.0%}"))
    return rows


def run(quick: bool = False) -> list[dict]:
    if quick:
        model, batches, new, steps = GPT(VOCAB, MAX_LEN, d_model=64, n_layers=2, n_heads=4), (1,), 16, 2
    else:
        model, batches, new, steps = GPT(VOCAB, MAX_LEN, d_model=128, n_layers=4, n_heads=4), (1, 8), 128, 5
    params = model.init(random.key(0))[0]
    return [row for batch in batches for row in _rows_for_batch(model, params, batch, new, steps)]

