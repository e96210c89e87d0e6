"""The plain-PyTorch twin of ``scripts/train_lm.py``: a character-level GPT written the usual
nanoGPT way (``nn.Module`` blocks, ``torch.optim.AdamW``, ``torch.compile(model)``, a manual
warmup + cosine learning rate), trained on the same blocks in the same order with the same
batch, schedule, clipping and time budget, and scored by the same measure: the perplexity
``exp(mean next-token NLL)`` over every prediction of a held-out split, in eval mode.

``train_lm.py --compare-torch`` runs it after deepfn's run, in the same process, so that both
figures come from one command on one machine. It starts from its own nanoGPT initialisation
(normal, std 0.02; residual projections 0.02 / sqrt(2 n_layers)), not from deepfn's weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deepfn import data, random

IGNORE = -100


@dataclass(frozen=True)
class GPTConfig:
    """The shape of the model and how it trains (the script's flags, in one place)."""
    vocab_size: int
    block_size: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    dropout: float = 0.1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    decay_steps: int = 2000
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.1
    clip_norm: float = 1.0


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_heads, c // self.n_heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(b, t, c)))


class MLP(nn.Module):
    """GELU-tanh feed-forward. Dropout after the activation too, where deepfn's GPT (the
    placements of ``TransformerEncoderLayer``) has one and nanoGPT has none: the same model."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(cfg.d_model, 4 * cfg.d_model)
        self.c_proj = nn.Linear(4 * cfg.d_model, cfg.d_model)
        self.act_dropout, self.dropout = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act_dropout(F.gelu(self.c_fc(x), approximate="tanh"))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(cfg.d_model), CausalSelfAttention(cfg)
        self.ln_2, self.mlp = nn.LayerNorm(cfg.d_model), MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """GPT-2's decoder-only Transformer: ``ids [b, t] int64 -> logits [b, t, vocab]``, tied embeddings."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.d_model), wpe=nn.Embedding(cfg.block_size, cfg.d_model),
            drop=nn.Dropout(cfg.dropout), h=nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers)),
            ln_f=nn.LayerNorm(cfg.d_model)))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight   # one tensor, used twice
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.transformer.drop(self.transformer.wte(ids) + self.transformer.wpe(positions))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))


def learning_rate(cfg: GPTConfig, step: int) -> float:
    """nanoGPT's ``get_lr``: linear warmup from 0, then cosine to ``min_lr_ratio * lr`` at
    ``decay_steps`` (warmup included), then flat; ``deepfn.optim.cosine_decay(lr, decay_steps
    - warmup_steps, alpha=min_lr_ratio, warmup_steps=warmup_steps)`` step for step."""
    if step < cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    k = min(step - cfg.warmup_steps, cfg.decay_steps - cfg.warmup_steps) / (cfg.decay_steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * k)))


def optimizer(model: nn.Module, cfg: GPTConfig) -> torch.optim.AdamW:
    """AdamW with decay on the matrices (weights, embeddings) only, as nanoGPT groups them."""
    params = dict(model.named_parameters())   # the tied weight appears once
    decay = [p for p in params.values() if p.ndim >= 2]
    rest = [p for p in params.values() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-8)


@torch.no_grad()
def heldout_nll(model: nn.Module, blocks: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> float:
    """Mean next-token NLL over every label of ``blocks`` that is not ``IGNORE`` (eval mode)."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for x, y in data.batches(blocks, batch_size):
        logits = model(x)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE,
                                 reduction="sum").double().cpu()
        count += int((y != IGNORE).sum())
    model.train(was_training)
    return float(total) / count


def train(cfg: GPTConfig, train_blocks: tuple[torch.Tensor, torch.Tensor],
          val_blocks: tuple[torch.Tensor, torch.Tensor], *, batch_size: int, seed: int, time_budget_s: float,
          test_blocks: tuple[torch.Tensor, torch.Tensor] | None = None, max_steps: int | None = None,
          epochs: int = 1000, compile: bool = True, device: str | torch.device = "cpu",
          log: Callable[[str], object] = print) -> dict:
    """Train ``NanoGPT(cfg)`` until ``time_budget_s`` seconds (compile and evaluations included),
    ``max_steps`` updates or ``epochs`` epochs, evaluating ``val_blocks`` after every epoch (a
    last, partial epoch too) and keeping the weights of the best evaluation, as ``fit`` does.

    Each epoch visits ``train_blocks`` (``int64 [n, T]`` inputs and labels) in the order of
    ``random.permutation`` under ``random.fold_in(random.key(seed), epoch)``, dropping the
    last incomplete batch; dropout draws from torch's global RNG, seeded with ``seed``.

    Returns:
        ``val_nll``, ``val_ppl`` (the best evaluation), ``test_ppl`` (its weights on
        ``test_blocks``, when given), ``steps``, ``train_s`` (the whole loop), ``steps_per_s``
        (updates over the time spent in updates, compile included), ``params`` and ``rows``
        (one dict per evaluation).
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    model = NanoGPT(cfg).to(device)
    opt = optimizer(model, cfg)
    run = torch.compile(model) if compile else model
    train_blocks, val_blocks = (tuple(t.to(device) for t in b) for b in (train_blocks, val_blocks))
    base, step, rows, best, step_s = random.key(seed), 0, [], None, 0.0
    start = time.perf_counter()
    more = lambda: (max_steps is None or step < max_steps) and time.perf_counter() - start < time_budget_s  # noqa: E731
    model.train()
    for epoch in range(epochs):
        if not more():
            break
        tic, first, loss = time.perf_counter(), step, None
        for x, y in data.batches(train_blocks, batch_size, key=random.fold_in(base, epoch), drop_last=True):
            if not more():
                break
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            loss = F.cross_entropy(run(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            opt.step()
            step += 1
        epoch_s = time.perf_counter() - tic
        step_s += epoch_s
        nll = heldout_nll(run, val_blocks, batch_size)
        rows.append({"epoch": epoch + 1, "step": step, "train_loss_last": None if loss is None else loss.item(),
                     "val_loss": nll, "val_ppl": math.exp(nll), "epoch_time": epoch_s,
                     "steps_per_s": (step - first) / max(epoch_s, 1e-9)})
        log(f"torch epoch {epoch + 1}: step {step} val_loss={nll:.4f} val_ppl={math.exp(nll):.3f}")
        if best is None or nll < best[0]:
            best = (nll, {k: v.detach().clone() for k, v in model.state_dict().items()})
    train_s = time.perf_counter() - start
    figures = {"val_nll": best[0], "val_ppl": math.exp(best[0]), "steps": step, "train_s": train_s,
               "steps_per_s": step / max(step_s, 1e-9), "params": sum(p.numel() for p in model.parameters()),
               "rows": rows}
    if test_blocks is not None:
        model.load_state_dict(best[1])
        figures["test_ppl"] = math.exp(heldout_nll(run, tuple(t.to(device) for t in test_blocks), batch_size))
    return figures
