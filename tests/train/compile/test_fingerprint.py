"""deepfn.train.compile.fingerprint: equal programs hash alike (in any process), anything that changes what
they compute changes the hash, tensor values do not."""

import copy
import functools
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from deepfn import optim
from deepfn.models import MLP
from deepfn.train.compile.fingerprint import fingerprint

ROOT = Path(__file__).resolve().parents[3]

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


@given(values)
def test_a_copy_hashes_alike(x):
    assert fingerprint(x) == fingerprint(copy.deepcopy(x))


@given(values, values)
def test_equal_hashes_mean_equal_values(x, y):
    if fingerprint(x) == fingerprint(y):
        assert x == y and type(x) is type(y)


def test_types_that_compare_equal_hash_apart():
    assert len({fingerprint(v) for v in (1, 1.0, True, "1", (1,), [1])}) == 6


def test_tensor_metadata_counts_and_values_do_not():
    a = torch.zeros(2, 3)
    assert fingerprint(a) == fingerprint(torch.ones(2, 3))
    for other in (torch.zeros(3, 2), torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3).t().contiguous().t(),
                  torch.zeros(2, 3, requires_grad=True)):
        assert fingerprint(other) != fingerprint(a)


def test_models_and_optimizers_hash_by_their_settings():
    assert fingerprint(MLP(6, (8,), 3)) == fingerprint(MLP(6, (8,), 3))
    assert fingerprint(MLP(6, (8,), 3)) != fingerprint(MLP(6, (8,), 3, dropout_rate=0.1))
    assert fingerprint(optim.adamw(lr=1e-3)) == fingerprint(optim.adamw(lr=1e-3))
    assert fingerprint(optim.adamw(lr=1e-3)) != fingerprint(optim.adamw(lr=2e-3))
    assert fingerprint(optim.adamw(lr=1e-3)) != fingerprint(optim.adam(lr=1e-3))


def _scale(x, factor=2.0):
    return x * factor


def _shift(x, factor=2.0):
    return x + factor


def test_functions_hash_by_code_defaults_and_partial_arguments():
    assert fingerprint(_scale) != fingerprint(_shift)   # same signature, other bytecode
    assert fingerprint(functools.partial(_scale, factor=3.0)) != fingerprint(functools.partial(_scale, factor=4.0))

    def closing_over(k):
        return lambda x: x * k
    assert fingerprint(closing_over(1)) == fingerprint(closing_over(1))
    assert fingerprint(closing_over(1)) != fingerprint(closing_over(2))


class _Partial(functools.partial):
    pass


def test_partials_bound_methods_local_classes_and_weak_references():
    assert fingerprint(_Partial(_scale, factor=3.0)) != fingerprint(functools.partial(_scale, factor=3.0))
    tagged = functools.partial(_scale)
    tagged.note = "x"
    assert fingerprint(tagged) != fingerprint(functools.partial(_scale))
    assert fingerprint({"a": 1}.get) != fingerprint({"a": 2}.get)   # a C method: its owner counts
    assert fingerprint(torch.ones(3).mul) != fingerprint(torch.ones(5, 7).mul)

    def local_class(value):
        class Config:
            scale = value
        return Config
    assert fingerprint(local_class(1)) == fingerprint(local_class(1))
    assert fingerprint(local_class(1)) != fingerprint(local_class(2))
    a, b = torch.zeros(2), torch.zeros(3)
    assert fingerprint(weakref.ref(a)) != fingerprint(weakref.ref(b))


def test_large_arrays_hash_by_their_bytes():
    np = pytest.importorskip("numpy")
    x = np.zeros(5000)
    y = x.copy()
    y[2500] = 1.0   # numpy's repr would elide this element
    assert fingerprint(x) != fingerprint(y) and fingerprint(x) == fingerprint(x.copy())


def test_shared_and_cyclic_objects():
    shared = [1]
    assert fingerprint([shared, shared]) != fingerprint([[1], [1]])   # sharing is structure
    loop: list = []
    loop.append(loop)
    assert fingerprint(loop) == fingerprint(loop)


_OTHER_PROCESS = """
from deepfn.train.compile.fingerprint import fingerprint
from deepfn import optim
from deepfn.models import MLP
print(fingerprint({"a", "b", "c"}, frozenset({1, 2}), MLP(6, (8,), 3), optim.adamw(lr=1e-3)))
"""


def test_the_same_in_every_process():
    """String hashing is randomised per process: sets and dicts must not leak that order."""
    outputs = set()
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", _OTHER_PROCESS], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.add(done.stdout.strip())
    assert len(outputs) == 1
