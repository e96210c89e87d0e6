"""Multi30k task 1 (image-caption translation) from its gzipped raw text files.

Each split is a pair of files ``{split}.{lang}.gz``, one sentence per line, line ``i`` of
one language translating line ``i`` of the other. Nothing is downloaded: ``root`` must
hold the files (a copy lives in ``../shared/data/multi30k`` beside this repository).
"""

from __future__ import annotations

import gzip
from pathlib import Path

SPLITS = ("train", "val", "test_2016_flickr")


def _read_lines(path: Path) -> list[str]:
    text = gzip.decompress(path.read_bytes()).decode("utf-8")
    # Split on "\n" only: str.splitlines would also break at U+2028 or U+0085 inside a
    # caption and shift every later line against its translation.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def multi30k(root: str | Path, split: str, src: str = "de", tgt: str = "en") -> list[tuple[str, str]]:
    """Sentence pairs of one Multi30k split.

    Args:
        root: folder holding ``{split}.{lang}.gz`` files.
        split: ``"train"`` (29,000 pairs), ``"val"`` (1,014) or ``"test_2016_flickr"`` (1,000).
        src: source language code, the file suffix (``"de"``).
        tgt: target language code (``"en"``).

    Returns:
        A list of ``(source, target)`` strings, in file order, without the newline.

    Raises:
        ValueError: unknown ``split``, ``src == tgt``, or the two files differ in line count.
        FileNotFoundError: a file is missing (the message gives its path).
    """
    if split not in SPLITS:
        raise ValueError(f"deepfn.data.multi30k: split must be one of {list(SPLITS)}; got {split!r}")
    for name, lang in (("src", src), ("tgt", tgt)):
        if not isinstance(lang, str) or not lang.isalpha():
            raise ValueError(f"deepfn.data.multi30k: {name} must be a language code such as 'de'; got {lang!r}")
    if src == tgt:
        raise ValueError(f"deepfn.data.multi30k: src and tgt must differ; got {src!r} twice")
    root = Path(root).expanduser()
    paths = [root / f"{split}.{lang}.gz" for lang in (src, tgt)]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"deepfn.data.multi30k: {path} not found; root must hold the gzipped Multi30k files")
    source, target = (_read_lines(path) for path in paths)
    if len(source) != len(target):
        raise ValueError(
            f"deepfn.data.multi30k: {paths[0].name} has {len(source)} lines but {paths[1].name} has "
            f"{len(target)}; the files must be line-aligned translations"
        )
    return list(zip(source, target, strict=True))
