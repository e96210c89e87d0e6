"""Files that hold code, kept private: deepfn's cache folder, the checks a file must pass
before it is opened, and a per-user secret key to authenticate what deepfn wrote.

Why: two kinds of file deepfn reads run code when they are loaded: a saved compiled step
(:mod:`deepfn.train.compile.saved`, unpickled) and the C random loop's shared library
(:mod:`deepfn.random.native`, whose constructors run when it is loaded). Another user who
can write such a file, or the folder that holds it, could run code as the current user. So
deepfn creates these folders ``0700``, writes the files ``0600``, and opens a file only when
it and its folder are owned by the current user and writable by nobody else. Saved steps
also carry an HMAC-SHA256 made with :func:`secret_key`, checked before they are unpickled.

Where there are no user ids (Windows) the owner and mode checks are skipped; the symbolic
link check and the HMAC stay.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import secrets
import stat
import tempfile
from pathlib import Path

from ._atomic import write_atomically

KEY_NAME = "hmac.key"
KEY_BYTES = 32


class UntrustedFileError(OSError):
    """A file or folder that deepfn does not open: the message says which and why."""


def _uid() -> int | None:
    """The current user's id, or ``None`` where the OS has none (Windows)."""
    getuid = getattr(os, "getuid", None)
    return None if getuid is None else getuid()


def cache_root() -> Path:
    """deepfn's cache folder: ``$DEEPFN_CACHE_DIR``, else ``~/.cache/deepfn``, else (no home
    folder, as in containers run as an arbitrary user) ``<tempdir>/deepfn-cache-<uid>``."""
    if os.environ.get("DEEPFN_CACHE_DIR"):
        return Path(os.environ["DEEPFN_CACHE_DIR"])
    try:
        return Path.home() / ".cache" / "deepfn"
    except RuntimeError:   # no $HOME and no passwd entry
        uid = _uid()
        return Path(tempfile.gettempdir()) / ("deepfn-cache" if uid is None else f"deepfn-cache-{uid}")


def _owner_and_mode(st: os.stat_result, what: str) -> str | None:
    """Why ``what`` (with status ``st``) is not private to the current user, or ``None``."""
    uid = _uid()
    if uid is None:
        return None
    if st.st_uid != uid:
        return f"{what} is owned by user id {st.st_uid}, not by the current user (id {uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by group or others (mode {stat.S_IMODE(st.st_mode):#o})"
    return None


def _folder_reason(folder: Path) -> str | None:
    """Why the files in ``folder`` cannot be trusted, or ``None``: the folder must be the
    current user's and writable by nobody else. In a folder others can write to (the system's
    temporary folder), it must also be a real folder, not a link, and closed to others
    (``0700``): another user could have created it first."""
    try:
        st = os.stat(folder)
    except OSError as error:
        return f"the folder {folder} cannot be read ({error.strerror or error})"
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder} is not a folder"
    reason = _owner_and_mode(st, f"the folder {folder}")
    if reason is not None or _uid() is None:
        return reason
    try:
        parent = os.stat(folder.absolute().parent)
    except OSError:
        return None
    if parent.st_mode & stat.S_IWOTH:
        if not parent.st_mode & stat.S_ISVTX:
            return f"the folder {folder} lies in {folder.absolute().parent}, which anyone can rename it in"
        if os.path.islink(folder):
            return f"the folder {folder} is a symbolic link in {folder.absolute().parent}, which anyone can write to"
        if stat.S_IMODE(st.st_mode) & 0o077:
            return (f"the folder {folder} lies in {folder.absolute().parent}, which anyone can write to, and "
                    f"is open to others (mode {stat.S_IMODE(st.st_mode):#o}; expected 0o700)")
    return None


def private_dir(folder: str | os.PathLike) -> str | None:
    """Create ``folder`` (and its parents) with mode ``0700``, or close an existing one of the
    current user's to ``0700``; return why its files cannot be trusted, or ``None``.

    An existing folder owned by another user, or writable by group or others, is not changed
    and not trusted (files may already have been planted in it)."""
    folder = Path(folder)
    missing, path = [], folder   # the folder and its parents that do not exist yet, innermost first
    while not os.path.lexists(path) and path != path.parent:
        missing.append(path)
        path = path.parent
    try:
        for path in reversed(missing):   # each 0700 (mkdir's parents=True makes parents by the umask)
            with contextlib.suppress(FileExistsError):   # made by a racing process
                path.mkdir(mode=0o700)
        st = os.lstat(folder)
    except OSError as error:
        return f"the folder {folder} cannot be created ({error.strerror or error})"
    closable = (_uid() is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == _uid()
                and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))
    if closable and stat.S_IMODE(st.st_mode) & 0o077:   # ours, readable by others: close it
        try:
            os.chmod(folder, 0o700)
        except OSError as error:
            return f"the folder {folder} cannot be made private ({error.strerror or error})"
    return _folder_reason(folder)


def trusted(path: str | os.PathLike) -> str | None:
    """Why the file ``path`` may not be opened, or ``None``: it must be a regular file (not a
    symbolic link), owned by the current user and writable by nobody else, in a folder that
    passes the same checks. A missing file raises ``FileNotFoundError``."""
    path = Path(path)
    reason = _folder_reason(path.parent)
    if reason is not None:
        return reason
    return _file_reason(os.lstat(path), path)


def _file_reason(st: os.stat_result, path: Path) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    return _owner_and_mode(st, str(path))


def read_trusted(path: str | os.PathLike) -> bytes:
    """The bytes of ``path`` when it passes :func:`trusted`, checked on the opened file itself
    (``O_NOFOLLOW``, then ``fstat``) so that it cannot be swapped between check and read.

    Raises:
        FileNotFoundError: no such file.
        UntrustedFileError: the file or its folder fails a check (the message says which).
    """
    path = Path(path)
    reason = _folder_reason(path.parent)
    if reason is not None:
        raise UntrustedFileError(reason)
    if not hasattr(os, "O_NOFOLLOW") and os.path.islink(path):   # Windows: no O_NOFOLLOW
        raise UntrustedFileError(f"{path} is a symbolic link")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:   # O_NOFOLLOW met a link
            raise UntrustedFileError(f"{path} is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        reason = _file_reason(os.fstat(f.fileno()), path)
        if reason is not None:
            raise UntrustedFileError(reason)
        return f.read()


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode ``0600`` (its folder should come from
    :func:`private_dir`)."""
    write_atomically(path, data, mode=0o600)


def secret_key() -> bytes:
    """The current user's secret key: :data:`KEY_BYTES` random bytes in ``<cache root>/hmac.key``
    (mode ``0600``), created on first use, read only when it passes :func:`read_trusted`.

    Raises:
        UntrustedFileError: the cache root or the key file fails a check, or the key file does
            not hold :data:`KEY_BYTES` bytes.
    """
    root = cache_root()
    reason = private_dir(root)
    if reason is not None:
        raise UntrustedFileError(reason)
    path = root / KEY_NAME
    try:
        key = read_trusted(path)
    except FileNotFoundError:
        _create_key(path)
        key = read_trusted(path)
    if len(key) != KEY_BYTES:
        raise UntrustedFileError(f"{path} holds {len(key)} bytes, expected a key of {KEY_BYTES}; delete it to "
                                 f"make a new one")
    return key


def _create_key(path: Path) -> None:
    """Write a new key whole under a temporary name, then link it to ``path``: the link fails
    when ``path`` exists, so processes that race agree on the first key, and none reads a
    half-written one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")   # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:   # a file system without hard links: create exclusively in place
            _create_key_in_place(path)
    finally:
        os.unlink(tmp)


def _create_key_in_place(path: Path) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(KEY_BYTES))


def hmac_sha256(*parts: bytes | memoryview) -> bytes:
    """HMAC-SHA256 with :func:`secret_key` of the concatenated ``parts`` (given apart, so that
    a large file's body is not copied): 32 bytes."""
    mac = hmac.new(secret_key(), digestmod=hashlib.sha256)
    for part in parts:
        mac.update(part)
    return mac.digest()
