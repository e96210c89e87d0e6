"""deepfn.models.AdvancedCNN against torchvision's ResNet and the seed-named twin."""

from __future__ import annotations

import pytest
import torch
import torchvision
from hypothesis import given
from hypothesis import strategies as st

from deepfn import interop, random, tree
from deepfn.interop import renames
from deepfn.models import AdvancedCNN
from tests.models.seed_twins import TwinCNN
from tests.utils import TOL, assert_trees_close

TINY = dict(base_channels=4, num_blocks=(1, 1, 1, 1), stem="cifar")


def _randomise_stats(module):
    """Non-trivial running statistics so eval mode tests more than the identity."""
    g = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return module


def _compare(model, module, x, labels, tol):
    """Outputs and parameter gradients of deepfn (through interop) and the module agree."""
    params, state = interop.from_torch(model, module)
    y, out_state = model.apply(params, state, x)
    assert out_state is state
    torch.testing.assert_close(y, module(x), **tol)

    def loss(p):
        return torch.nn.functional.cross_entropy(model.apply(p, state, x)[0], labels)

    grads = tree.flatten(torch.func.grad(loss)(params))
    module.zero_grad()
    torch.nn.functional.cross_entropy(module(x), labels).backward()
    rename = renames.find(model, module) or (lambda n: n)
    named = dict(module.named_parameters())
    expected = tree.unflatten({n: named[rename(n)].grad for n in grads})
    assert_trees_close(tree.unflatten(grads), expected, **tol)


def test_resnet18_fp32():
    torch.manual_seed(0)
    net = _randomise_stats(torchvision.models.resnet18(num_classes=10)).eval()
    model = AdvancedCNN(use_attention=False, dropout_rate=0.0)
    _compare(model, net, torch.randn(2, 3, 32, 32), torch.tensor([1, 7]), dict(rtol=1e-4, atol=1e-4))


def test_small_resnet_fp64():
    torch.manual_seed(1)
    block = torchvision.models.resnet.BasicBlock
    net = _randomise_stats(torchvision.models.resnet.ResNet(block, [1, 2, 1, 1], num_classes=10)).double().eval()
    model = AdvancedCNN(num_blocks=(1, 2, 1, 1), use_attention=False, dropout_rate=0.0)
    _compare(model, net, torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.tensor([0, 3]), TOL[torch.float64])


def test_resnet34_eval():
    torch.manual_seed(4)
    net = _randomise_stats(torchvision.models.resnet34(num_classes=10)).eval()
    model = AdvancedCNN(num_blocks=(3, 4, 6, 3), use_attention=False, dropout_rate=0.0)
    params, state = interop.from_torch(model, net)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.apply(params, state, x)[0], net(x), rtol=1e-4, atol=1e-4)


def test_to_torch_round_trip(getkey):
    block = torchvision.models.resnet.BasicBlock
    net = torchvision.models.resnet.ResNet(block, [1, 2, 1, 1], num_classes=10).eval()
    model = AdvancedCNN(num_blocks=(1, 2, 1, 1), use_attention=False, dropout_rate=0.0)
    params, state = model.init(getkey())
    state = tree.map(lambda t: t + 1 if t.is_floating_point() else t + 3, state)
    interop.to_torch(model, params, state, net)
    assert torch.equal(net.conv1.weight, params["conv1"]["conv"]["weight"])
    assert torch.equal(net.bn1.running_var, state["conv1"]["batch_norm"]["running_var"])
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model.apply(params, state, x)[0], net(x), rtol=1e-4, atol=1e-4)
    back = interop.from_torch(model, net)
    assert tree.all_equal(back, (params, state))


@pytest.mark.parametrize("kwargs, match", [
    (dict(use_attention=True), "no attention; build the block with use_attention=False"),
    (dict(spatial_attention=True), "no attention; build the block with spatial_attention=False"),
    (dict(stem="cifar"), r"stem='cifar' needs conv1 = Conv2d\(kernel_size=3, stride=1, padding=1, bias=False\); "
                         r"got conv1 = Conv2d\(3, 64, kernel_size=\(7, 7\).*match stem='imagenet'"),
    (dict(num_blocks=(3, 4, 6, 3)), r"num_blocks must equal the ResNet's blocks per stage \(2, 2, 2, 2\)"),
])
def test_torchvision_mismatch_is_rejected(kwargs, match, resnet18):
    # A narrow block keeps from_torch's shape template cheap; the config checks come first.
    config = dict(base_channels=4, use_attention=False, dropout_rate=0.0) | kwargs
    with pytest.raises(ValueError, match=match):
        interop.from_torch(AdvancedCNN(**config), resnet18)


@pytest.fixture(scope="module")
def resnet18():
    return torchvision.models.resnet18(num_classes=10)


def _cifar_adapted(net, kernel=3, pool=False):
    """The usual CIFAR adaptation of a torchvision ResNet: a 3x3 stride-1 stem, no max-pool."""
    net.conv1 = torch.nn.Conv2d(3, net.conv1.out_channels, kernel, 1, kernel // 2, bias=False)
    if not pool:
        net.maxpool = torch.nn.Identity()
    return net


def test_cifar_adapted_resnet18_from_torch():
    torch.manual_seed(5)
    net = _randomise_stats(_cifar_adapted(torchvision.models.resnet18(num_classes=10))).eval()
    model = AdvancedCNN(use_attention=False, dropout_rate=0.0, stem="cifar")
    _compare(model, net, torch.randn(2, 3, 32, 32), torch.tensor([2, 9]), dict(rtol=1e-4, atol=1e-4))


def test_cifar_adapted_resnet18_to_torch(getkey):
    net = _cifar_adapted(torchvision.models.resnet18(num_classes=10)).eval()
    model = AdvancedCNN(use_attention=False, dropout_rate=0.0, stem="cifar")
    params, state = model.init(getkey())
    state = tree.map(lambda t: t + 1 if t.is_floating_point() else t + 3, state)
    interop.to_torch(model, params, state, net)
    assert torch.equal(net.conv1.weight, params["conv1"]["conv"]["weight"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.apply(params, state, x)[0], net(x), rtol=1e-4, atol=1e-4)
    assert tree.all_equal(interop.from_torch(model, net), (params, state))


NARROW = dict(base_channels=4, use_attention=False, dropout_rate=0.0)


@pytest.mark.parametrize("adapt, stem, match", [
    (dict(kernel=5), "cifar", r"stem='cifar' needs conv1 = Conv2d\(kernel_size=3, stride=1, padding=1, bias=False\); "
                              r"got conv1 = Conv2d\(3, 64, kernel_size=\(5, 5\)"),
    (dict(pool=True), "cifar", r"stem='cifar' needs maxpool = Identity\(\) \(no pooling\); got maxpool = MaxPool2d"),
    (dict(), "imagenet", r"stem='imagenet' needs conv1 = Conv2d\(kernel_size=7, stride=2, padding=3, bias=False\); "
                         r"got conv1 = .*the module's layers match stem='cifar': build the block with it"),
])
def test_cifar_adaptation_mismatch_names_the_layer(adapt, stem, match):
    net = _cifar_adapted(torchvision.models.resnet18(num_classes=10), **adapt)
    block = AdvancedCNN(stem=stem, **NARROW)   # the layer checks come before any shape template
    for convert in (lambda: interop.from_torch(block, net), lambda: interop.to_torch(block, *block.init(random.key(0)), net)):
        with pytest.raises(ValueError, match=match):
            convert()


def test_stem_conv_with_bias_is_rejected():
    net = _cifar_adapted(torchvision.models.resnet18(num_classes=10))
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=True)
    with pytest.raises(ValueError, match=r"needs conv1 = Conv2d\(kernel_size=3, stride=1, padding=1, bias=False\); "
                                         r"got conv1 = Conv2d\(3, 64, kernel_size=\(3, 3\), stride=\(1, 1\), padding=\(1, 1\)\)"):
        interop.from_torch(AdvancedCNN(stem="cifar", **NARROW), net)


@pytest.mark.parametrize("config", [
    dict(base_channels=16, num_blocks=(1, 1, 2, 1)),
    dict(base_channels=4, num_blocks=(1, 1, 1, 1), stem="cifar", use_attention=False, spatial_attention=True),
    dict(base_channels=2, num_blocks=(2, 1, 1, 1), stem="cifar", input_channels=1, num_classes=3,
         use_attention=True, spatial_attention=True),
])
def test_seed_twin_eval(config, dtype):
    torch.manual_seed(2)
    twin = _randomise_stats(TwinCNN(**config)).to(dtype).eval()
    model = AdvancedCNN(dropout_rate=0.0, **config)
    params, state = model.init(random.key(0))
    flat = {**tree.flatten(params), **tree.flatten(state)}
    assert {k: tuple(v.shape) for k, v in flat.items()} == {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    x = torch.randn(2, config.get("input_channels", 3), 16, 16, dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
    _compare(model, twin, x, torch.tensor([0, 1]), tol)
    fresh = interop.to_torch(model, params, state, TwinCNN(**config).to(dtype))
    assert tree.all_equal(interop.from_torch(model, fresh), (tree.cast(params, dtype), tree.cast(state, dtype)))


def test_seed_twin_train_two_steps(dtype):
    torch.manual_seed(3)
    config = dict(base_channels=16, num_blocks=(1, 1, 2, 1))
    twin = TwinCNN(**config).to(dtype).train()
    model = AdvancedCNN(dropout_rate=0.0, **config)
    params, state = interop.from_torch(model, twin)
    for _ in range(2):
        x = torch.randn(4, 3, 32, 32, dtype=dtype)
        y, new_state = model.apply(params, state, x, train=True)
        tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
        torch.testing.assert_close(y, twin(x), **tol)
        assert tree.structure(new_state) == tree.structure(state)
        state = new_state
    assert_trees_close(state, interop.from_torch(model, twin)[1], **TOL[dtype])
    assert int(state["layer3"]["1"]["bn2"]["num_batches_tracked"]) == 2


def test_train_dropout_needs_key_and_eval_ignores_it(getkey):
    model = AdvancedCNN(**TINY, dropout_rate=0.5)
    params, state = model.init(getkey())
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match=r"AdvancedCNN\(.*train=True needs a random key"):
        model.apply(params, state, x, train=True)
    k = getkey()
    a, _ = model.apply(params, state, x, key=k, train=True)
    b, _ = model.apply(params, state, x, key=k, train=True)
    c, _ = model.apply(params, state, x, key=getkey(), train=True)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(model.apply(params, state, x)[0], model.apply(params, state, x, key=k)[0])


@given(batch=st.integers(1, 3), size=st.integers(1, 12), classes=st.integers(1, 5),
       stem=st.sampled_from(["imagenet", "cifar"]), channels=st.integers(1, 3))
def test_output_shapes(batch, size, classes, stem, channels):
    model = AdvancedCNN(channels, classes, 2, (1, 1, 1, 1), use_attention=False, stem=stem, spatial_attention=True)
    params, state = model.init(random.key(size))
    y, _ = model.apply(params, state, torch.randn(batch, channels, size, size + 1))
    assert y.shape == (batch, classes)


def test_vmap_over_parameter_sets_equals_loop(getkey):
    model = AdvancedCNN(**TINY, dropout_rate=0.0)
    inits = [model.init(getkey()) for _ in range(2)]
    params, state = tree.stack([p for p, _ in inits]), tree.stack([s for _, s in inits])
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for train in (False, True):
        ys, states = torch.func.vmap(lambda p, s, train=train: model.apply(p, s, x, train=train))(params, state)
        for i, (p, s) in enumerate(inits):
            y, s2 = model.apply(p, s, x, train=train)
            # vmapped, the convolutions run as one grouped convolution: another summation order
            # (a CI run on drawn inputs differed by 2.6e-6 in an output of ~4e-3)
            torch.testing.assert_close(ys[i], y, rtol=1e-4, atol=1e-5)
            assert_trees_close(tree.unstack(states)[i], s2)


def test_compile_fullgraph_equals_eager(getkey):
    model = AdvancedCNN(**TINY, dropout_rate=0.3)
    params, state = model.init(getkey())
    # batch 4: BatchNorm over few values per channel amplifies inductor's reordered sums.
    x, k = random.normal(getkey(), (4, 3, 8, 8)), getkey()

    def step(p, s, x, k):
        return model.apply(p, s, x, key=k, train=True)

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True)
    y, new_state = compiled(params, state, x, k)
    y_eager, state_eager = step(params, state, x, k)
    torch.testing.assert_close(y, y_eager, rtol=1e-4, atol=1e-4)
    assert_trees_close(new_state, state_eager, rtol=1e-4, atol=1e-5)
    with torch.compiler.set_stance("fail_on_recompile"):
        compiled(params, new_state, random.normal(getkey(), (4, 3, 8, 8)), getkey())


def test_adam_steps_lower_the_loss(getkey):
    model = AdvancedCNN(**TINY, dropout_rate=0.0, num_classes=2)
    params, state = model.init(getkey())
    x = random.normal(getkey(), (16, 3, 8, 8))
    labels = (x[:, 0].mean(dim=(1, 2)) > 0).long()

    def loss_fn(p, s):
        logits, new_s = model.apply(p, s, x, train=True)
        return torch.nn.functional.cross_entropy(logits, labels), new_s

    m, v = tree.zeros_like(params), tree.zeros_like(params)
    first = float(loss_fn(params, state)[0])
    for t in range(1, 21):
        g, state = torch.func.grad(loss_fn, has_aux=True)(params, state)
        m = tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        bc1, bc2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        params = tree.map(lambda p, a, b, bc1=bc1, bc2=bc2: p - 0.01 * (a / bc1) / ((b / bc2).sqrt() + 1e-8),
                          params, m, v)
    assert float(loss_fn(params, state)[0]) < 0.5 * first


@pytest.mark.parametrize("x, match", [
    (torch.randn(3, 8, 8), r"AdvancedCNN\(.*\.apply: x must be 4-d \[b, c, H, W\]; got float32 \[3, 8, 8\]"),
    (torch.randn(2, 1, 8, 8), r"AdvancedCNN\(.*x must have size 3 \(input_channels\) in axis 1; got float32 \[2, 1, 8, 8\]"),
])
def test_bad_input_shapes(x, match, getkey):
    model = AdvancedCNN(**TINY)
    params, state = model.init(getkey())
    with pytest.raises(ValueError, match=match):
        model.apply(params, state, x)


def test_bad_input_dtype(getkey):
    model = AdvancedCNN(**TINY)
    params, state = model.init(getkey())
    with pytest.raises(TypeError, match=r"AdvancedCNN\(.*x must be floating point; got uint8 \[2, 3, 8, 8\]"):
        model.apply(params, state, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.parametrize("kwargs, match", [
    (dict(stem="tiny"), r"AdvancedCNN: stem must be one of \['imagenet', 'cifar'\]; got 'tiny'"),
    (dict(num_blocks=(2, 2, 2)), r"AdvancedCNN: num_blocks must be 4 positive ints .*; got \(2, 2, 2\)"),
    (dict(num_blocks=(2, 0, 2, 2)), r"AdvancedCNN: num_blocks must be 4 positive ints .*; got \(2, 0, 2, 2\)"),
    (dict(num_blocks="2222"), r"AdvancedCNN: num_blocks must be 4 positive ints"),
    (dict(base_channels=1), r"SEBlock: channels // reduction must be >= 1 .*channels=8, reduction=16"),
    (dict(dropout_rate=-0.1), r"AdvancedCNN: dropout_rate must be a float in \[0, 1\)"),
    (dict(num_classes=0), r"AdvancedCNN: num_classes must be a positive int; got 0"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdvancedCNN(**kwargs)


def test_num_parameters_matches_twin():
    model = AdvancedCNN(base_channels=8, num_blocks=(1, 2, 1, 1))
    assert model.num_parameters() == sum(p.numel() for p in TwinCNN(base_channels=8, num_blocks=(1, 2, 1, 1)).parameters())
