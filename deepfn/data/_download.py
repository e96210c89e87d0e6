"""Where dataset files live by default, and fetching one file checked against a SHA-256 digest.

Only the standard library (``urllib``); a download lands in place only whole and verified
(``deepfn._atomic.write_atomically``), so a crash or a wrong byte never leaves a file that a
later call would trust.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from .._atomic import write_atomically

#: Environment variable naming the folder that holds every dataset's folder.
DATA_DIR_ENV = "DEEPFN_DATA_DIR"
#: Seconds without an answer before a download gives up.
TIMEOUT_S = 60.0


def data_home(dataset: str) -> Path:
    """The per-user folder of ``dataset``: ``$DEEPFN_DATA_DIR/<dataset>`` when that variable
    is set and not empty, else ``~/.cache/deepfn/data/<dataset>``. Nothing is created."""
    base = os.environ.get(DATA_DIR_ENV) or os.path.join("~", ".cache", "deepfn", "data")
    return Path(base).expanduser() / dataset


def sha256_of(path: Path) -> str:
    """Hex SHA-256 digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_digest(path: Path, expected: str, owner: str) -> None:
    """Raise ``ValueError`` naming ``path`` and both digests unless the file's SHA-256 is ``expected``."""
    actual = sha256_of(path)
    if actual != expected:
        raise ValueError(
            f"{owner}: {path} has SHA-256 {actual}, expected {expected}; the file is damaged or "
            f"not the published one: delete it to download it again"
        )


def fetch_verified(url: str, path: Path, expected: str, owner: str, *, manual_hint: str) -> None:
    """Download ``url`` to ``path``, writing it only if its SHA-256 is ``expected``.

    Args:
        url: an ``http(s)://`` (or ``file://``) address.
        path: where the file goes; its folder is created.
        expected: lower-case hex SHA-256 of the published file.
        owner: the public function's name, which starts every message.
        manual_hint: how to place the file by hand, appended to the network error.

    Raises:
        ValueError: the downloaded bytes have another digest (nothing is written).
        OSError: the address cannot be reached or answers with an error (nothing is written).
    """
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            body = response.read()
    # HTTPException: a connection cut mid-transfer (IncompleteRead) is not an OSError.
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise OSError(f"{owner}: could not download {url} ({_describe(err)}); {manual_hint}") from err
    actual = hashlib.sha256(body).hexdigest()
    if actual != expected:
        raise ValueError(
            f"{owner}: {url} gave a file with SHA-256 {actual}, expected {expected} for {path.name}; "
            f"nothing was written to {path}"
        )
    write_atomically(path, body)


def _describe(err: BaseException) -> str:
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        err = err.reason if isinstance(err.reason, BaseException) else err
    return f"{type(err).__name__}: {err}"
