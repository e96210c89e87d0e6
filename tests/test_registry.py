"""Generic tests over ``tests/registry.py``: every block and model keeps the protocol's
promises (checked with ``deepfn.testing``, the kit users get), compiles without graph breaks
or recompiles, and keeps its parameter tree: frozen golden files and the twin's state_dict.
The per-block oracle tests (values and gradients against PyTorch) live under tests/nn and
tests/models.
"""

from __future__ import annotations

import dataclasses
import json
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepfn import models, nn, random, tree
from deepfn._checks import where
from deepfn.testing import check_block, check_causal, check_mask_invariance
from deepfn.testing import strategies as dst
from tests import registry
from tests.registry import CASES, BlockCase

EVAL_CHECKS = ["pure", "deterministic", "eval_state", "batch_independent", "vmap"]
TRAIN_CHECKS = ["pure", "deterministic", "vmap"]
ids = [case.name for case in CASES]


def _uncovered(cases: list[BlockCase]) -> list[str]:
    covered = {type(case.make_block()) for case in cases}
    return sorted(name for name, cls in registry.public_blocks().items() if cls not in covered)


def test_registry_covers_every_public_block():
    missing = _uncovered(CASES)
    assert not missing, (f"public blocks without a BlockCase in tests/registry.py: {missing}; add a tiny "
                         f"case for each (and run {registry.REGEN_HINT} for its golden tree)")


def test_coverage_check_sees_a_missing_block():
    assert registry.public_blocks()["deepfn.nn.SEBlock"] is nn.SEBlock
    assert _uncovered([c for c in CASES if c.name != "SEBlock"]) == ["deepfn.nn.SEBlock"]


def test_registry_names_unique_and_no_orphan_golden_files():
    assert len(ids) == len(set(ids)), f"duplicate case names: {sorted(n for n in ids if ids.count(n) > 1)}"
    orphans = sorted(p.name for p in registry.GOLDEN_DIR.glob("*.json") if p.stem not in registry.BY_NAME)
    assert not orphans, f"golden files without a registry case: {orphans}; run {registry.REGEN_HINT}"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_protocol_eval(case: BlockCase):
    check_block(case.make_block(), *case.make_inputs(), key=random.key(1), checks=EVAL_CHECKS)


@pytest.mark.parametrize("case", [c for c in CASES if c.train_ok], ids=[c.name for c in CASES if c.train_ok])
def test_protocol_train(case: BlockCase):
    check_block(case.make_block(), *case.make_inputs(), key=random.key(2), train=True, checks=TRAIN_CHECKS)


@pytest.mark.parametrize("case", [c for c in CASES if c.compile], ids=[c.name for c in CASES if c.compile])
def test_compile_fullgraph_equals_eager(case: BlockCase):
    check_block(case.make_block(), *case.make_inputs(), key=random.key(3), checks=["compile"])


# -- no recompile on the second call ---------------------------------------------------------

def _fresh(fn):
    # Dynamo caches per code object: a private copy per test keeps the cases from sharing one
    # cache (and its recompile limit).
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)


def _shifted(inputs, seed: int):
    """Same shapes and dtypes, new values: floats redrawn, ids and masks kept."""
    def redraw(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return random.normal(random.key(seed), tuple(x.shape), dtype=x.dtype)
        return x
    return tree.map(redraw, inputs)


@pytest.mark.parametrize("name, train", [("Dense", False), ("BatchNorm", True), ("Dropout", True),
                                         ("MultiHeadAttention", False)])
def test_second_call_does_not_recompile(name: str, train: bool):
    case = registry.BY_NAME[name]
    block = case.make_block()

    def apply(params, state, inputs, key):
        return block.apply(params, state, *inputs, key=key, train=train)

    compiled = torch.compile(_fresh(apply), fullgraph=True)
    params, state = block.init(random.key(4))
    first = compiled(params, state, case.make_inputs(), random.key(5) if train else None)
    # New parameter values, new input values, a new key: one graph serves them all.
    params2, state2 = block.init(random.key(6))
    inputs2 = _shifted(case.make_inputs(), 7)
    key2 = random.key(8) if train else None
    with torch.compiler.set_stance("fail_on_recompile"):
        second = compiled(params2, state2, inputs2, key2)
    eager = block.apply(params2, state2, *inputs2, key=key2, train=train)
    torch.testing.assert_close(second, eager, rtol=1e-5, atol=1e-6)
    assert not torch.equal(tree.leaves(first)[0], tree.leaves(second)[0])


# -- parameter trees -------------------------------------------------------------------------

def _golden_mismatch(case: BlockCase) -> str | None:
    """``None`` if the case's tree equals its golden file, else a message naming the fix."""
    path = registry.golden_path(case)
    if not path.exists():
        return (f"{case.name}: no golden file {path.name} in tests/golden; run "
                f"`{registry.REGEN_HINT} {case.name}` and commit it")
    got, want = registry.golden_tree(case), json.loads(path.read_text())
    if got == want:
        return None
    g, w = got["tree"], want["tree"]
    changed = [f"  {k}: now {g[k]}, golden {w[k]}" for k in sorted(set(g) & set(w)) if g[k] != w[k]]
    lines = [f"  only now:    {sorted(set(g) - set(w))}", f"  only golden: {sorted(set(w) - set(g))}",
             *changed, f"  total_size: now {got['total_size']}, golden {want['total_size']}"]
    return (f"{case.name}: parameter tree differs from tests/golden/{path.name}:\n" + "\n".join(lines)
            + f"\nIf the change is intended, run `{registry.REGEN_HINT} {case.name}` and review the "
            "diff of tests/golden.")


def _parity_mismatch(case: BlockCase) -> str | None:
    """``None`` if ``params | state`` has the twin's state_dict names, shapes and dtypes."""
    params, state = case.make_block().init(random.key(0))
    ours = {k: (tuple(v.shape), v.dtype) for k, v in (tree.flatten(params) | tree.flatten(state)).items()}
    theirs = {k: (tuple(v.shape), v.dtype) for k, v in case.make_twin().state_dict().items()}
    if set(ours) != set(theirs):
        return (f"{case.name}: names differ from the twin's state_dict; only deepfn: "
                f"{sorted(set(ours) - set(theirs))}, only twin: {sorted(set(theirs) - set(ours))}")
    wrong = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    if wrong:
        return f"{case.name}: (shape, dtype) differ from the twin's, as (deepfn, twin): {wrong}"
    return None


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_golden_tree(case: BlockCase):
    message = _golden_mismatch(case)
    assert message is None, message


def test_golden_mismatch_names_the_regen_script():
    drifted = dataclasses.replace(registry.BY_NAME["MLP"], make_block=lambda: models.MLP(5, (7, 4), 3))
    message = _golden_mismatch(drifted)
    assert message is not None and "network.0.weight: now f32[7, 5], golden f32[6, 5]" in message
    assert "only golden: ['network.1.bias'" in message and "scripts/regen_golden.py MLP" in message


TWINNED = [c for c in CASES if c.make_twin is not None]


@pytest.mark.parametrize("case", TWINNED, ids=[c.name for c in TWINNED])
def test_state_dict_parity_with_twin(case: BlockCase):
    message = _parity_mismatch(case)
    assert message is None, message


def test_parity_mismatch_is_reported():
    wrong_shape = dataclasses.replace(registry.BY_NAME["Dense"], make_twin=lambda: torch.nn.Linear(5, 4))
    assert "'weight': (((3, 5), torch.float32), ((4, 5), torch.float32))" in _parity_mismatch(wrong_shape)
    extra = dataclasses.replace(registry.BY_NAME["Dense_nobias"], make_twin=lambda: torch.nn.Linear(4, 2))
    assert "only twin: ['bias']" in _parity_mismatch(extra)


# -- sequence properties with drawn masks (eager, small) -----------------------------------

E, H = 8, 2
FEW = settings(max_examples=8, deadline=None)


def _init(block, seed):
    return block.init(random.key(seed))


@FEW
@given(valid=dst.padding_masks(dst.batch_sizes(1, 3), dst.dims(1, 6)), seed=st.integers(0, 2**16))
def test_attention_ignores_padded_keys(valid, seed):
    mha = nn.MultiHeadAttention(E, H)
    params, state = _init(mha, seed)
    x = random.normal(random.key(seed + 1), (*valid.shape, E))
    mask = valid[:, None, None, :]
    check_mask_invariance(lambda q: mha.apply(params, state, q, None, mask)[0], x, valid)


@FEW
@given(valid=dst.padding_masks(dst.batch_sizes(1, 3), dst.dims(1, 6)), seed=st.integers(0, 2**16),
       norm_first=st.booleans())
def test_encoder_layer_ignores_padded_positions(valid, seed, norm_first):
    layer = nn.TransformerEncoderLayer(E, H, 16, dropout=0.0, norm_first=norm_first)
    params, state = _init(layer, seed)
    x = random.normal(random.key(seed + 1), (*valid.shape, E))
    check_mask_invariance(lambda h: layer.apply(params, state, h, valid[:, None, None, :])[0], x, valid)


@FEW
@given(b=dst.batch_sizes(1, 3), t=dst.dims(2, 6), seed=st.integers(0, 2**16))
def test_causal_attention_does_not_see_the_future(b, t, seed):
    mha = nn.MultiHeadAttention(E, H)
    params, state = _init(mha, seed)
    x = random.normal(random.key(seed + 1), (b, t, E))
    check_causal(lambda q: mha.apply(params, state, q, None, nn.causal_mask(t))[0], x)


@FEW
@given(b=dst.batch_sizes(1, 3), t=dst.dims(2, 6), s=dst.dims(1, 5), seed=st.integers(0, 2**16),
       norm_first=st.booleans())
def test_decoder_layer_does_not_see_the_future(b, t, s, seed, norm_first):
    layer = nn.TransformerDecoderLayer(E, H, 16, dropout=0.0, norm_first=norm_first)
    params, state = _init(layer, seed)
    x = random.normal(random.key(seed + 1), (b, t, E))
    memory = random.normal(random.key(seed + 2), (b, s, E))
    check_causal(lambda h: layer.apply(params, state, h, memory, nn.causal_mask(t))[0], x)


def test_causal_check_catches_a_missing_mask():
    """The causal property must be able to fail: without the mask the decoder sees the future."""
    layer = nn.TransformerDecoderLayer(E, H, 16, dropout=0.0)
    params, state = _init(layer, 0)
    x, memory = random.normal(random.key(1), (2, 4, E)), random.normal(random.key(2), (2, 3, E))
    with pytest.raises(AssertionError, match="causal"):
        check_causal(lambda h: layer.apply(params, state, h, memory)[0], x)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_error_prefix_names_the_block_as_its_repr(case):
    # Error messages name a block by a repr built without dataclasses' recursion guard (which
    # Dynamo cannot trace): it must read exactly as repr() does.
    block = case.make_block()
    assert where(block, "apply") == f"{block!r}.apply"
