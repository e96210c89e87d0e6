"""Private code files: deepfn's cache folder, the owner, mode and link checks a file passes
before it is opened, and the per-user secret key that signs saved compiled steps."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest

from deepfn import _private_files
from deepfn._private_files import (
    KEY_BYTES,
    UntrustedFileError,
    cache_root,
    hmac_sha256,
    private_dir,
    read_trusted,
    secret_key,
    trusted,
    write_private,
)

OTHER_USER = 12345   # a user id that is not ours


def as_other_user(path: Path) -> None:
    """Give ``path`` to another user, as a file planted by them would be (needs root)."""
    try:
        os.chown(path, OTHER_USER, OTHER_USER, follow_symlinks=False)
    except PermissionError:
        pytest.skip("simulating another user's file needs root (os.chown)")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(root))
    return root


def test_cache_root_is_the_environment_variable_or_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPFN_CACHE_DIR", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("DEEPFN_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "deepfn"


def test_cache_root_without_a_home_is_a_per_user_temporary_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("DEEPFN_CACHE_DIR", raising=False)

    def no_home():
        raise RuntimeError("Could not determine home directory.")
    monkeypatch.setattr(_private_files.Path, "home", staticmethod(no_home))
    monkeypatch.setattr(_private_files.tempfile, "gettempdir", lambda: str(tmp_path))
    assert cache_root() == tmp_path / f"deepfn-cache-{os.getuid()}"


def test_private_dir_creates_folders_0700_even_under_an_open_umask(tmp_path):
    old = os.umask(0)
    try:
        assert private_dir(tmp_path / "a" / "b") is None
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "a" / "b") == 0o700


def test_private_dir_closes_an_existing_folder_of_ours_that_others_can_read(tmp_path):
    folder = tmp_path / "steps"
    folder.mkdir()
    folder.chmod(0o755)
    assert private_dir(folder) is None
    assert mode_of(folder) == 0o700


def test_private_dir_rejects_a_group_writable_folder_and_leaves_it(tmp_path):
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(0o775)
    reason = private_dir(folder)
    assert reason is not None and str(folder) in reason and "writable by group or others (mode 0o775)" in reason
    assert mode_of(folder) == 0o775


def test_private_dir_rejects_a_folder_of_another_user(tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir(mode=0o700)
    as_other_user(folder)
    reason = private_dir(folder)
    assert reason is not None and f"owned by user id {OTHER_USER}" in reason


def test_private_dir_rejects_a_file_in_the_folders_place(tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in private_dir(tmp_path / "file")
    assert "cannot be created" in private_dir(tmp_path / "file" / "below")


def _world_writable(path: Path, sticky: bool = True) -> Path:
    path.mkdir()
    path.chmod(0o1777 if sticky else 0o777)
    return path


def test_in_a_shared_temporary_folder_a_folder_created_by_another_user_is_rejected(tmp_path):
    folder = _world_writable(tmp_path / "tmp") / "deepfn-cache-0"
    folder.mkdir(mode=0o700)
    as_other_user(folder)
    assert f"owned by user id {OTHER_USER}" in private_dir(folder)


def test_in_a_shared_temporary_folder_a_link_to_our_folder_is_rejected(tmp_path):
    target = tmp_path / "ours"
    target.mkdir(mode=0o700)
    link = _world_writable(tmp_path / "tmp") / "deepfn-cache-0"
    link.symlink_to(target)
    assert "is a symbolic link" in private_dir(link)


def test_in_a_shared_temporary_folder_our_readable_folder_is_closed_to_0700(tmp_path):
    folder = _world_writable(tmp_path / "tmp") / "deepfn-cache-0"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    assert private_dir(folder) is None and mode_of(folder) == 0o700
    folder.chmod(0o755)   # not through private_dir: its files are not trusted
    (folder / "f").write_bytes(b"x")
    (folder / "f").chmod(0o600)
    assert "expected 0o700" in trusted(folder / "f")


def test_a_folder_in_a_world_writable_folder_without_the_sticky_bit_is_rejected(tmp_path):
    folder = _world_writable(tmp_path / "open", sticky=False) / "cache"
    assert "anyone can rename it in" in private_dir(folder)


def _private_file(folder: Path, data: bytes = b"code") -> Path:
    assert private_dir(folder) is None
    path = folder / "lib.so"
    write_private(path, data)
    return path


def test_a_private_file_is_trusted_and_read(cache, tmp_path):
    path = _private_file(tmp_path / "d")
    assert mode_of(path) == 0o600
    assert trusted(path) is None
    assert read_trusted(path) == b"code"


def test_write_private_writes_0600_under_an_open_umask(tmp_path):
    assert private_dir(tmp_path / "d") is None
    old = os.umask(0)
    try:
        write_private(tmp_path / "d" / "f", b"x")
    finally:
        os.umask(old)
    assert mode_of(tmp_path / "d" / "f") == 0o600


def test_a_group_writable_file_is_not_trusted(tmp_path):
    path = _private_file(tmp_path / "d")
    path.chmod(0o620)
    assert "writable by group or others (mode 0o620)" in trusted(path)
    with pytest.raises(UntrustedFileError, match=r"lib\.so is writable by group or others"):
        read_trusted(path)


def test_a_file_of_another_user_is_not_trusted(tmp_path):
    path = _private_file(tmp_path / "d")
    as_other_user(path)
    assert f"owned by user id {OTHER_USER}" in trusted(path)
    with pytest.raises(UntrustedFileError, match=f"owned by user id {OTHER_USER}"):
        read_trusted(path)


def test_a_symbolic_link_is_not_trusted_nor_followed(tmp_path):
    real = _private_file(tmp_path / "elsewhere")
    folder = tmp_path / "d"
    assert private_dir(folder) is None
    (folder / "lib.so").symlink_to(real)
    assert "is a symbolic link" in trusted(folder / "lib.so")
    with pytest.raises(UntrustedFileError, match=r"is a symbolic link"):
        read_trusted(folder / "lib.so")


def test_a_fifo_is_not_trusted_and_reading_it_does_not_block(tmp_path):
    folder = tmp_path / "d"
    assert private_dir(folder) is None
    os.mkfifo(folder / "lib.so", 0o600)
    assert "is not a regular file" in trusted(folder / "lib.so")
    with pytest.raises(UntrustedFileError, match=r"is not a regular file"):
        read_trusted(folder / "lib.so")


def test_a_good_file_in_a_group_writable_folder_is_not_trusted(tmp_path):
    path = _private_file(tmp_path / "d")
    path.parent.chmod(0o770)
    assert "the folder" in trusted(path) and "writable by group or others" in trusted(path)
    with pytest.raises(UntrustedFileError, match=r"the folder .* writable by group or others"):
        read_trusted(path)


def test_a_missing_file_raises_file_not_found(tmp_path):
    assert private_dir(tmp_path / "d") is None
    with pytest.raises(FileNotFoundError):
        read_trusted(tmp_path / "d" / "none")
    with pytest.raises(FileNotFoundError):
        trusted(tmp_path / "d" / "none")


def test_the_secret_key_is_created_once_private_and_kept(cache):
    key = secret_key()
    path = cache / "hmac.key"
    assert len(key) == KEY_BYTES and path.read_bytes() == key
    assert mode_of(path) == 0o600 and mode_of(cache) == 0o700
    assert secret_key() == key
    _private_files._create_key(path)   # a process that lost the race to create it
    assert secret_key() == key and not [p for p in cache.iterdir() if p.name != "hmac.key"]


def test_hmac_is_hmac_sha256_with_the_key_over_the_joined_parts(cache):
    key = secret_key()
    assert hmac_sha256(b"ab", memoryview(b"cd")) == hmac.new(key, b"abcd", hashlib.sha256).digest()
    assert hmac_sha256(b"abcd") != hmac_sha256(b"abce")


def test_another_users_key_is_not_used(cache):
    secret_key()
    as_other_user(cache / "hmac.key")
    with pytest.raises(UntrustedFileError, match=f"hmac.key is owned by user id {OTHER_USER}"):
        secret_key()


def test_a_group_writable_key_is_not_used(cache):
    secret_key()
    (cache / "hmac.key").chmod(0o660)
    with pytest.raises(UntrustedFileError, match=r"hmac.key is writable by group or others"):
        hmac_sha256(b"x")


def test_a_key_of_the_wrong_length_is_not_used(cache):
    secret_key()
    write_private(cache / "hmac.key", b"short")
    with pytest.raises(UntrustedFileError, match=r"holds 5 bytes, expected a key of 32"):
        secret_key()


def test_no_key_in_an_untrusted_cache_root(cache):
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    with pytest.raises(UntrustedFileError, match=r"writable by group or others \(mode 0o777\)"):
        secret_key()
    assert not (cache / "hmac.key").exists()
