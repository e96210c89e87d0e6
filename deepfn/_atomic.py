"""Replace a file atomically: a crash leaves the previous file (or none), never a torn one."""

from __future__ import annotations

import os
import tempfile


def write_atomically(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Write ``data`` to ``path``: a temporary ``.<name>.<random>.tmp`` in the same directory,
    flushed and fsynced, renamed over ``path`` (``os.replace``), then the directory fsynced.
    Parent directories are created; the temporary file is removed if anything fails.

    Args:
        path: the file to (re)place.
        data: its whole content.
        mode: the file's permission bits. ``None`` follows the process umask, as ``open()``
            does (``0o666 & ~umask``); an int (e.g. ``0o600`` for a private file) is set
            exactly, before the rename, so the file is never visible with other bits.

    Raises:
        TypeError: ``data`` is not bytes, or ``mode`` is not an int or None.
        ValueError: ``mode`` has bits outside ``0o7777``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_atomically: data must be bytes; got {type(data).__name__}")
    if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int)):
        raise TypeError(f"write_atomically: mode must be an int such as 0o600, or None; got {type(mode).__name__}")
    if mode is not None and not 0 <= mode <= 0o7777:
        raise ValueError(f"write_atomically: mode must be within 0o0..0o7777; got {mode:#o}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # mkstemp creates 0600 whatever the umask; set the bits the file should end with.
    bits = 0o666 & ~current_umask() if mode is None else mode
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:     # closes fd, whatever fails below
            os.fchmod(fd, bits)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def current_umask() -> int:
    """The process umask, read without changing it where ``/proc/self/status`` says it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere only os.umask reads it, by setting it: restore it at once. The umask is
    # process-wide, so another thread creating a file in between would get 0o077.
    old = os.umask(0o077)
    os.umask(old)
    return old


def _fsync_dir(directory: str) -> None:
    # The rename itself is durable only once the directory entry is flushed (POSIX).
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
