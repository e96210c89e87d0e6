"""``amp.bf16_in_hardware`` and the scripts' warning when ``--amp`` meets a CPU that emulates bf16."""

from __future__ import annotations

import platform

import pytest
import torch

from deepfn import _torch as seam
from deepfn import amp
from deepfn._torch import gate, probes
from tests.scripts.test_scripts import _script

X86 = platform.machine().lower() in ("x86_64", "amd64")


def test_cpu_answer_is_the_instruction_set_probe():
    want = None
    if X86:
        want = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert amp.bf16_in_hardware("cpu") is want
    assert amp.bf16_in_hardware(torch.device("cpu")) is want


def test_devices_it_cannot_judge_give_none_and_cuda_without_a_gpu_false(monkeypatch):
    assert amp.bf16_in_hardware("meta") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert amp.bf16_in_hardware("cuda") is False


@pytest.mark.skipif(not X86, reason="the probes answer only on x86")
@pytest.mark.parametrize(("capability", "want"), [("AVX2", False), ("NO AVX", False), ("AVX512", None)])
def test_with_the_hook_off_the_public_capability_string_decides(monkeypatch, capability, want):
    monkeypatch.setattr(gate, "GATE", gate.Gate("2.99.0"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    with pytest.warns(RuntimeWarning, match="not the tested release"):
        assert amp.bf16_in_hardware("cpu") is want


@pytest.mark.skipif(not X86, reason="the probes answer only on x86")
def test_a_probe_that_raises_turns_the_hook_off_and_falls_back(monkeypatch):
    monkeypatch.setattr(gate, "GATE", gate.Gate(torch.__version__))

    def moved():
        raise AttributeError("moved")

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", moved)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with pytest.warns(RuntimeWarning, match="'cpu_isa'"):
        assert probes.cpu_bf16_in_hardware() is False
    assert not seam.hook_on("cpu_isa")


@pytest.mark.parametrize(("in_hardware", "warns"), [(False, True), (True, False), (None, False)])
def test_scripts_warn_when_amp_meets_a_cpu_that_emulates_bf16(tmp_path, monkeypatch, recwarn, in_hardware, warns):
    script = _script("train_mlp")
    monkeypatch.setattr(script._common.amp, "bf16_in_hardware", lambda device: in_hardware)
    args = script.build_parser().parse_args(["--no-compile", "--amp", "--device", "cpu", "--out", str(tmp_path)])
    setup = script._common.setup(args)
    assert setup["policy"] is not None   # a warning, not a refusal: the user may want bf16 anyway
    emulated = [w for w in recwarn if "--amp: this CPU has no bf16 matrix instructions" in str(w.message)]
    assert len(emulated) == (1 if warns else 0)
