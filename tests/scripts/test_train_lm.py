"""scripts/train_lm.py and its plain-PyTorch twin (bench_parts/lm_torch_baseline.py) on the
committed Multi30k sample: a tiny run end to end (RESULT, history with perplexity and samples,
resume), the exact held-out perplexity against a direct computation, the twin's schedule and
model against deepfn's, and one exit 2 naming the flag per rejected flag."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F

from deepfn import data, models, optim, random, tree
from deepfn.train import make_eval_step

from .test_scripts import FLAGS, MULTI30K, _outputs, _script

TINY = ["--no-compile", "--no-progress", "--data-dir", MULTI30K, "--block-size", "16", "--d-model", "16",
        "--n-layers", "1", "--n-heads", "2", "--batch-size", "32", "--warmup", "1", "--samples", "2",
        "--sample-tokens", "8"]


@pytest.fixture(scope="module")
def train_lm():
    return _script("train_lm")


@pytest.fixture(scope="module")
def twin():
    from bench_parts import lm_torch_baseline
    return lm_torch_baseline


def test_tiny_run_beside_torch_then_resume(tmp_path, train_lm, capsys):
    out = str(tmp_path / "lm")
    result = train_lm.main([*TINY, "--out", out, "--max-steps", "2", "--compare-torch"])
    assert result["steps"] == 2 and result["torch_steps"] == 2
    assert result["params"] == result["torch_params"]                 # the same model on both sides
    assert 1 < result["test_ppl"] < 2 * result["vocab"] and 1 < result["torch_test_ppl"] < 2 * result["vocab"]
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("RESULT ")][-1]
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    assert float(fields["test_ppl"]) == pytest.approx(result["test_ppl"], abs=1e-4)
    assert {"val_ppl", "torch_val_ppl", "torch_test_ppl", "steps_per_s", "wall_s"} <= set(fields)
    rows, _ = _outputs(out)
    assert math.exp(rows[-1]["val_loss"]) == pytest.approx(rows[-1]["val_ppl"])
    assert len(rows[-1]["samples"]) == 2 and all(len(s) == 8 for s in rows[-1]["samples"])
    vocab = json.load(open(os.path.join(out, "vocab.json"), encoding="utf-8"))
    assert vocab["unk_id"] == 0 and result["vocab"] == len(vocab["chars"]) + 1
    assert open(os.path.join(out, "samples.txt"), encoding="utf-8").read().strip()
    assert [json.loads(r)["step"] for r in open(os.path.join(out, "torch_history.jsonl"))] == [2]
    again = train_lm.main([*TINY, "--out", out, "--max-steps", "4", "--resume"])
    assert again["steps"] == 4
    assert [r["step"] for r in _outputs(out)[0]] == [2, 4]


@pytest.mark.slow   # minutes of compiling on 2 cores; the real runs of train_lm.py compile by default
def test_compiled_run_matches_the_eager_one(tmp_path, train_lm):
    flags = [f for f in TINY if f != "--no-compile"] + ["--max-steps", "2", "--no-compile-cache"]
    compiled = train_lm.main([*flags, "--out", str(tmp_path / "compiled")])
    eager = train_lm.main([*flags, "--no-compile", "--out", str(tmp_path / "eager")])
    assert compiled["test_ppl"] == pytest.approx(eager["test_ppl"], rel=1e-4)


def test_help_lists_the_shared_and_own_flags(train_lm, capsys):
    with pytest.raises(SystemExit) as done:
        train_lm.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in (*FLAGS, "--data-dir", "--download", "--time-budget-min", "--block-size", "--compare-torch",
                 "--samples", "--temperature", "--top-k"):
        assert flag in text, flag


def test_heldout_perplexity_is_the_mean_nll_of_every_character(train_lm):
    """Padded blocks, padded rows and the per-position loss give exactly the mean NLL of every
    next-character prediction of the stream, computed here in one pass without padding."""
    model = models.GPT(vocab_size=11, max_len=8, d_model=8, n_layers=1, n_heads=2)
    params, state = model.init(random.key(0))
    ids = random.randint(random.key(1), (61,), 0, 11)                # 60 predictions: 8 blocks of 8, padded
    held = train_lm.HeldOut(ids, 8, 3, torch.device("cpu"))
    assert held.blocks[0].shape == (9, 8) and held.counted == 60
    got = held.score(make_eval_step(model, train_lm.nll_per_position, compile=False), params, state, False)
    logits = torch.cat([model.apply(params, state, ids[None, i:i + 8])[0][0] for i in range(0, 60, 8)])[:60]
    nll = F.cross_entropy(logits, ids[1:])
    acc = (logits.argmax(-1) == ids[1:]).float().mean()
    assert got["loss"] == pytest.approx(float(nll), rel=1e-5)
    assert got["accuracy"] == pytest.approx(float(acc), rel=1e-6)
    assert got["ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-5)


def test_weight_decay_mask_takes_matrices_and_embeddings_only(train_lm):
    params, _ = models.GPT(vocab_size=5, max_len=4, d_model=4, n_layers=1, n_heads=1).init(random.key(0))
    decayed = sorted(p for p, leaf in tree.flatten(params).items() if train_lm.decays(p, leaf))
    assert decayed == ["layers.0.linear1.weight", "layers.0.linear2.weight", "layers.0.self_attn.in_proj_weight",
                       "layers.0.self_attn.out_proj.weight", "wpe.weight", "wte.weight"]


def test_twin_schedule_equals_deepfn_cosine_decay(twin):
    cfg = twin.GPTConfig(vocab_size=5, lr=3e-3, min_lr_ratio=0.1, warmup_steps=7, decay_steps=50)
    schedule = optim.cosine_decay(3e-3, 43, alpha=0.1, warmup_steps=7)
    for n in range(80):
        assert twin.learning_rate(cfg, n) == pytest.approx(float(schedule(n)), rel=1e-12, abs=1e-15)


def test_twin_has_the_size_of_deepfn_gpt_and_scores_like_it(twin):
    cfg = twin.GPTConfig(vocab_size=13, block_size=8, n_layers=2, n_heads=2, d_model=8, dropout=0.0)
    net = twin.NanoGPT(cfg)
    ours = models.GPT(vocab_size=13, max_len=8, d_model=8, n_layers=2, n_heads=2)
    assert sum(p.numel() for p in net.parameters()) == tree.size(ours.init(random.key(0))[0])
    ids = random.randint(random.key(2), (30,), 0, 13)
    x, y = data.next_token_blocks(ids, 8, pad_last=True)
    with torch.no_grad():
        logits = torch.cat([net(x[i:i + 1])[0] for i in range(x.shape[0])])
    direct = F.cross_entropy(logits[(y != -100).flatten()], y[y != -100])
    assert twin.heldout_nll(net, (x, y), 2) == pytest.approx(float(direct), rel=1e-5)


BAD_FLAGS = [
    (["--n-heads", "3"], "--n-heads"),
    (["--block-size", "0"], "--block-size"),
    (["--sample-tokens", "16"], "--sample-tokens"),
    (["--decay-steps", "1"], "--decay-steps"),
    (["--max-steps", "1"], "--decay-steps"),
    (["--top-k", "0"], "--top-k"),
    (["--temperature", "0"], "--temperature"),
    (["--dropout", "1"], "--dropout"),
    (["--min-lr-ratio", "1.5"], "--min-lr-ratio"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--clip-norm", "nan"], "--clip-norm"),
    (["--time-budget-min", "0"], "--time-budget-min"),
    (["--compare-torch", "--amp"], "--compare-torch"),
    (["--compare-torch", "--resume"], "--compare-torch"),
    (["--block-size", "100000", "--sample-tokens", "8"], "--block-size"),
    (["--batch-size", "100000"], "--batch-size"),
]


@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flags_exit_2_naming_the_flag(tmp_path, train_lm, capsys, flags, named):
    with pytest.raises(SystemExit) as exit_:
        train_lm.main([*TINY, "--out", str(tmp_path / "lm"), *flags])
    assert exit_.value.code == 2
    assert f"argument {named}" in capsys.readouterr().err
