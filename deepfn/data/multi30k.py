"""Multi30k task 1 (image-caption translation) from its gzipped raw text files.

Each split is a pair of files ``{split}.{lang}.gz``, one sentence per line, line ``i`` of
one language translating line ``i`` of the other. The files come from the public dataset
repository (github.com/multi30k/dataset, ``data/task1/raw/``). Nothing is downloaded
unless asked (``download=True``); downloads are checked against SHA-256 digests fixed
here (``SHA256``) and written whole or not at all.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from ._download import check_digest, data_home, fetch_verified

__all__ = ["BASE_URL", "BASE_URL_ENV", "SHA256", "SPLITS", "multi30k"]

SPLITS = ("train", "val", "test_2016_flickr")
#: Where ``download=True`` fetches ``{split}.{lang}.gz`` from (the dataset repository's raw files).
BASE_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
#: Environment variable that replaces ``BASE_URL`` (a mirror, or a local server in tests).
BASE_URL_ENV = "DEEPFN_MULTI30K_URL"
#: SHA-256 of the published German and English task-1 files (read-only).
SHA256: Mapping[str, str] = MappingProxyType({
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
})
OWNER = "deepfn.data.multi30k"


def _read_lines(path: Path) -> list[str]:
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    # Split on "\n" only: str.splitlines would also break at U+2028 or U+0085 inside a
    # caption and shift every later line against its translation.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _download_missing(root: Path, paths: list[Path], base_url: str, digests: Mapping[str, str]) -> None:
    """Verify present files and fetch the missing ones, each against ``digests``."""
    for path in paths:
        if path.name not in digests:
            raise ValueError(f"{OWNER}: no SHA-256 digest is known for {path.name}; download=True fetches "
                             f"only {sorted(digests)} (pass digests= to add others)")
    base = base_url if base_url.endswith("/") else base_url + "/"
    for path in paths:
        if path.is_file():
            check_digest(path, digests[path.name], OWNER)   # never trust a damaged file
            continue
        url = base + path.name
        hint = f"without a network, download {url} elsewhere and copy it to {path}"
        fetch_verified(url, path, digests[path.name], OWNER, manual_hint=hint)


def multi30k(root: str | Path | None = None, split: str | None = None, src: str = "de", tgt: str = "en",
             download: bool = False, *, base_url: str | None = None,
             digests: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Sentence pairs of one Multi30k split.

    Args:
        root: folder holding ``{split}.{lang}.gz`` files; None is the per-user folder,
            ``$DEEPFN_DATA_DIR/multi30k`` or else ``~/.cache/deepfn/data/multi30k``.
        split: ``"train"`` (29,000 pairs), ``"val"`` (1,014) or ``"test_2016_flickr"`` (1,000).
        src: source language code, the file suffix (``"de"``).
        tgt: target language code (``"en"``).
        download: fetch this split's missing files into ``root`` from ``base_url``. Files
            already there are checked against ``digests`` first, and a mismatch raises
            (delete the file to fetch it again). With False (the default) nothing is
            fetched and the files in ``root`` are read as they are.
        base_url: where the files are fetched from; default ``$DEEPFN_MULTI30K_URL`` or
            else ``BASE_URL``.
        digests: file name -> hex SHA-256 for ``download=True``; default ``SHA256``, the
            published files' digests.

    Returns:
        A list of ``(source, target)`` strings, in file order, without the newline.

    Raises:
        ValueError: unknown ``split``, ``src == tgt``, the two files differ in line count, or
            (``download=True``) a file's SHA-256 differs from ``digests`` (both are named)
            or no digest is known for a needed file.
        TypeError: ``download`` is not a bool.
        FileNotFoundError: a file is missing and ``download`` is False (the message gives
            its path and suggests ``download=True``).
        OSError: ``download=True`` and the server cannot be reached (the message names the
            URL and where to copy the file by hand).
    """
    if split not in SPLITS:
        raise ValueError(f"{OWNER}: split must be one of {list(SPLITS)}; got {split!r}")
    for name, lang in (("src", src), ("tgt", tgt)):
        if not isinstance(lang, str) or not lang.isalpha():
            raise ValueError(f"{OWNER}: {name} must be a language code such as 'de'; got {lang!r}")
    if src == tgt:
        raise ValueError(f"{OWNER}: src and tgt must differ; got {src!r} twice")
    if not isinstance(download, bool):
        raise TypeError(f"{OWNER}: download must be a bool; got {download!r}")
    root = data_home("multi30k") if root is None else Path(root).expanduser()
    paths = [root / f"{split}.{lang}.gz" for lang in (src, tgt)]
    if download:
        url = base_url or os.environ.get(BASE_URL_ENV) or BASE_URL
        _download_missing(root, paths, url, SHA256 if digests is None else digests)
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{OWNER}: {path} not found; root must hold the gzipped Multi30k files "
                                    f"(pass download=True to fetch them into {root})")
    source, target = (_read_lines(path) for path in paths)
    if len(source) != len(target):
        raise ValueError(
            f"{OWNER}: {paths[0].name} has {len(source)} lines but {paths[1].name} has "
            f"{len(target)}; the files must be line-aligned translations"
        )
    return list(zip(source, target, strict=True))
