"""Each compiled copy (deepfn.train.compile.own_code) learns its own dynamic sizes: a step that
saw two batch sizes does not make the next step of the same factory compile symbolic sizes."""

import torch

from deepfn.train.compile import compiled
from deepfn.train.compile.own_code import with_own_code


def _doubled():
    def double(x):
        return x * 2
    return double


def test_a_copy_that_saw_two_sizes_leaves_the_next_copy_static(monkeypatch):
    symbolic = []   # per graph compiled: whether it takes symbolic sizes

    def backend(gm, example_inputs):
        symbolic.append(any(isinstance(a, torch.SymInt) for a in example_inputs))
        return gm.forward

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=backend, fullgraph=True))
    first, second = compiled(_doubled(), None, "test"), compiled(_doubled(), None, "test")
    first(torch.ones(3))
    first(torch.ones(4))    # a second size: Dynamo recompiles the first copy with a symbolic size
    second(torch.ones(3))   # a fresh copy: static, as in a fresh process
    assert symbolic == [False, True, False]


def test_each_copy_has_its_own_name_and_the_same_qualified_name():
    fn = _doubled()
    a, b = with_own_code(fn), with_own_code(fn)
    assert len({a.__code__.co_name, b.__code__.co_name, fn.__code__.co_name}) == 3
    assert a.__code__.co_name.startswith("double__")
    assert a.__code__.co_qualname == fn.__code__.co_qualname and a.__code__.co_code == fn.__code__.co_code
