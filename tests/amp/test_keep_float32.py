"""A half policy keeps normalisation params in float32 (``Policy.keep_float32``), as autocast
leaves a norm module's weight and bias float32; a bf16 CNN step matches an autocast twin."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from deepfn import amp, losses, nn, optim, random, tree
from deepfn.train import TrainState, make_train_step

BF16 = amp.Policy("float32", "bfloat16", "float32")
NORMS = ("bn.weight", "bn.bias", "ln.weight", "ln.bias")


@dataclass(frozen=True)
class SmallCNN:
    """conv -> batch norm -> relu -> mean over space -> layer norm -> dense: ``[b, 3, H, W]`` -> ``[b, 4]``."""

    def children(self) -> dict:
        return {"conv": nn.Conv2d(3, 8, 3, padding=1, bias=False), "bn": nn.BatchNorm(8),
                "ln": nn.LayerNorm(8), "fc": nn.Dense(8, 4)}

    def init(self, key):
        return nn.init_children(self.children(), key)

    def apply(self, params, state, x, *, key=None, train=False):
        c = self.children()
        h, _ = c["conv"].apply(params["conv"], {}, x)
        h, bn_state = c["bn"].apply(params["bn"], nn.child_state(state, "bn"), h, train=train)
        h, _ = c["ln"].apply(params["ln"], {}, torch.relu(h).mean((2, 3)))
        y, _ = c["fc"].apply(params["fc"], {}, h)
        return y, (nn.merge_state(state, {"bn": bn_state}) if train else state)


class TorchSmallCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.ln = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.ln(torch.relu(self.bn(self.conv(x))).mean((2, 3))))


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)


def _dtypes(params) -> dict[str, torch.dtype]:
    return {k: v.dtype for k, v in tree.flatten(params).items()}


def test_compute_cast_keeps_norm_params_float32():
    params, _ = SmallCNN().init(random.key(0))
    dtypes = _dtypes(BF16.cast_to_compute(params))
    assert {k: d for k, d in dtypes.items() if k in NORMS} == dict.fromkeys(NORMS, torch.float32)
    assert {k: d for k, d in dtypes.items() if k not in NORMS} == dict.fromkeys(
        ["conv.weight", "fc.weight", "fc.bias"], torch.bfloat16)


def test_half_param_dtype_keeps_norm_params_and_statistics_float32():
    policy = amp.Policy("bfloat16", "bfloat16", "float32")
    ts = TrainState.create(SmallCNN(), optim.sgd(0.1), random.key(0), policy=policy)
    dtypes = _dtypes(ts.params)
    assert all(dtypes[k] == torch.float32 for k in NORMS)
    assert dtypes["conv.weight"] == dtypes["fc.weight"] == torch.bfloat16
    step = make_train_step(SmallCNN(), losses.cross_entropy, optim.sgd(0.1), policy=policy, compile=False)
    ts, _ = step(ts, _batch(), None)
    assert _dtypes(ts.params) == dtypes
    assert ts.state["bn"]["running_mean"].dtype == ts.state["bn"]["running_var"].dtype == torch.float32


def test_none_casts_every_leaf():
    params, _ = SmallCNN().init(random.key(0))
    policy = amp.Policy("float32", "bfloat16", "float32", keep_float32=None)
    assert set(_dtypes(policy.cast_to_compute(params)).values()) == {torch.bfloat16}


def test_float_policies_ignore_the_rule():
    params, _ = SmallCNN().init(random.key(0))
    assert set(_dtypes(amp.Policy("float64", "float64").cast_to_compute(params)).values()) == {torch.float64}
    assert set(_dtypes(BF16.cast_to_param(params)).values()) == {torch.float32}


def test_outputs_are_cast_whole():
    out = BF16.with_output_dtype("bfloat16").cast_to_output({"weight": torch.ones(2), "bias": torch.ones(2)})
    assert set(_dtypes(out).values()) == {torch.bfloat16}


def test_a_custom_rule_sees_dotted_paths():
    seen = []
    params, _ = SmallCNN().init(random.key(0))
    policy = amp.Policy("float32", "bfloat16", keep_float32=lambda path, node: seen.append(path) or path == "fc")
    dtypes = _dtypes(policy.cast_to_compute(params))
    assert seen == ["", "conv", "bn", "ln", "fc"]
    assert dtypes["fc.weight"] == dtypes["fc.bias"] == torch.float32
    assert dtypes["bn.weight"] == torch.bfloat16


@pytest.mark.parametrize(("node", "expected"), [
    ({"weight": torch.ones(4), "bias": torch.zeros(4)}, True),              # BatchNorm, LayerNorm(4)
    ({"weight": torch.ones(3, 5), "bias": torch.zeros(3, 5)}, True),        # LayerNorm((3, 5))
    ({"weight": torch.ones(4, 4), "bias": torch.zeros(4)}, False),          # Dense
    ({"weight": torch.ones(4, 2, 3, 3), "bias": torch.zeros(4)}, False),    # Conv2d
    ({"weight": torch.ones(4)}, False),                                     # no bias
    ({"weight": torch.ones(4), "bias": torch.zeros(4), "extra": torch.ones(4)}, False),
], ids=["batch_norm", "layer_norm_2d", "dense", "conv", "weight_only", "extra_leaf"])
def test_norm_affine(node, expected):
    assert amp.norm_affine("any.path", node) is expected


def test_compiled_cast_is_one_graph():
    params, _ = SmallCNN().init(random.key(0))
    compiled = torch.compile(BF16.cast_to_compute, fullgraph=True, backend="eager")(params)
    assert _dtypes(compiled) == _dtypes(BF16.cast_to_compute(params))


def test_bf16_step_matches_an_autocast_twin():
    model, opt = SmallCNN(), optim.sgd(0.1)
    ts = TrainState.create(model, opt, random.key(0), policy=BF16)
    twin = TorchSmallCNN()
    twin.load_state_dict({k: v.clone() for k, v in (tree.flatten(ts.params) | tree.flatten(ts.state)).items()})
    torch_opt = torch.optim.SGD(twin.parameters(), lr=0.1)
    step = make_train_step(model, losses.cross_entropy, opt, policy=BF16, compile=False)
    x, y = _batch()
    for _ in range(3):
        ts, metrics = step(ts, (x, y), None)
        torch_opt.zero_grad()
        with torch.autocast("cpu", torch.bfloat16):
            logits = twin(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        torch_opt.step()
        torch.testing.assert_close(metrics["loss"], loss.detach(), rtol=1e-2, atol=1e-2)
    ours = tree.flatten(ts.params) | tree.flatten(ts.state)
    for name, value in twin.state_dict().items():
        assert ours[name].dtype == value.dtype, name
        torch.testing.assert_close(ours[name], value, rtol=2e-2, atol=2e-2, msg=lambda m, n=name: f"{n}: {m}")


def test_rejects_a_non_callable_rule():
    with pytest.raises(TypeError, match=r"Policy: keep_float32 must be None or a callable \(path, node\) -> bool; got str 'norm'"):
        amp.Policy("float32", "bfloat16", "float32", keep_float32="norm")
