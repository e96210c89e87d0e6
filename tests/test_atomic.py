"""deepfn._atomic.write_atomically: whole files only, permissions as open() gives them (or an
explicit mode), and clear errors for bad arguments."""

import os
import stat
from contextlib import contextmanager

import pytest
import torch

from deepfn import _atomic, checkpoint
from deepfn._atomic import current_umask, write_atomically


@contextmanager
def _umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002])
def test_files_follow_the_umask_as_open_does(tmp_path, mask):
    with _umask(mask):
        write_atomically(tmp_path / "a.bin", b"data")
        with open(tmp_path / "plain.bin", "wb") as f:
            f.write(b"data")
    assert _mode(tmp_path / "a.bin") == _mode(tmp_path / "plain.bin") == 0o666 & ~mask


def test_checkpoints_follow_the_umask(tmp_path):
    with _umask(0o027):
        checkpoint.save(tmp_path / "a.safetensors", {"w": torch.ones(1)})
        checkpoint.CheckpointManager(tmp_path / "run").save(0, {"w": torch.ones(1)})
    assert _mode(tmp_path / "a.safetensors") == 0o640
    assert _mode(tmp_path / "run" / "ckpt_000000000.safetensors") == 0o640


def test_explicit_mode_is_exact_whatever_the_umask(tmp_path):
    with _umask(0o000):
        write_atomically(tmp_path / "private.bin", b"code", mode=0o600)
    assert _mode(tmp_path / "private.bin") == 0o600
    with _umask(0o077):
        write_atomically(tmp_path / "shared.bin", b"data", mode=0o644)
    assert _mode(tmp_path / "shared.bin") == 0o644


def test_replacing_a_file_takes_the_new_mode(tmp_path):
    path = tmp_path / "a.bin"
    with _umask(0o022):
        write_atomically(path, b"old")
        write_atomically(path, b"new", mode=0o600)
    assert _mode(path) == 0o600 and path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_current_umask_reads_without_changing_it():
    with _umask(0o027):
        assert current_umask() == 0o027
        assert current_umask() == 0o027


def test_current_umask_falls_back_without_proc(monkeypatch):
    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")
    monkeypatch.setattr(_atomic, "open", no_proc, raising=False)
    with _umask(0o037):
        assert current_umask() == 0o037
        assert os.umask(0o037) == 0o037       # restored after reading


@pytest.mark.parametrize("mode, error, message", [
    ("0600", TypeError, r"mode must be an int such as 0o600, or None; got str"),
    (True, TypeError, r"mode must be an int such as 0o600, or None; got bool"),
    (0o10000, ValueError, r"mode must be within 0o0..0o7777; got 0o10000"),
    (-1, ValueError, r"mode must be within 0o0..0o7777; got -0o1"),
])
def test_rejects_bad_mode(tmp_path, mode, error, message):
    with pytest.raises(error, match=rf"write_atomically: {message}"):
        write_atomically(tmp_path / "a.bin", b"x", mode=mode)
    assert not os.listdir(tmp_path)


def test_rejects_text_data(tmp_path):
    with pytest.raises(TypeError, match=r"write_atomically: data must be bytes; got str"):
        write_atomically(tmp_path / "a.bin", "text")
