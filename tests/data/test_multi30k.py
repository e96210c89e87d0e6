"""deepfn.data.multi30k on the shared copy of Multi30k and on small files written here."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from deepfn.data import multi30k

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "multi30k"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared Multi30k copy absent at {SHARED}")


@needs_shared
@pytest.mark.parametrize("split, n", [("train", 29000), ("val", 1014), ("test_2016_flickr", 1000)])
def test_real_splits(split, n):
    pairs = multi30k(SHARED, split)
    assert len(pairs) == n
    assert all(isinstance(s, str) and isinstance(t, str) for s, t in pairs)
    assert not any("\n" in s or "\n" in t for s, t in pairs)
    with gzip.open(SHARED / f"{split}.en.gz", "rt", encoding="utf-8") as f:
        first_en = f.readline().rstrip("\n")
    assert pairs[0][1] == first_en


@needs_shared
def test_real_val_content_and_direction():
    de_en = multi30k(SHARED, "val")
    en_de = multi30k(SHARED, "val", src="en", tgt="de")
    assert de_en[0][0].startswith("Eine Gruppe von Männern")
    assert en_de == [(t, s) for s, t in de_en]


def _write(root: Path, name: str, lines: list[str], trailing_newline: bool = True) -> None:
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    (root / name).write_bytes(gzip.compress(text.encode("utf-8")))


def test_small_files_line_by_line(tmp_path):
    _write(tmp_path, "val.de.gz", ["Ein Hund.", "  Zwei\u2028Katzen ", ""])
    _write(tmp_path, "val.en.gz", ["A dog.", "  Two cats ", "Three"], trailing_newline=False)
    # only the newline goes; other whitespace, an empty line and U+2028 stay
    assert multi30k(tmp_path, "val") == [("Ein Hund.", "A dog."), ("  Zwei\u2028Katzen ", "  Two cats "), ("", "Three")]


def test_mismatched_line_counts(tmp_path):
    _write(tmp_path, "train.de.gz", ["a", "b", "c"])
    _write(tmp_path, "train.en.gz", ["a", "b"])
    with pytest.raises(ValueError, match=r"deepfn\.data\.multi30k: train\.de\.gz has 3 lines but train\.en\.gz has 2"):
        multi30k(tmp_path, "train")


def test_bad_split(tmp_path):
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'val', 'test_2016_flickr'\]; got 'test'"):
        multi30k(tmp_path, "test")


def test_missing_file(tmp_path):
    _write(tmp_path, "val.de.gz", ["a"])
    with pytest.raises(FileNotFoundError, match=r"deepfn\.data\.multi30k: .*val\.en\.gz not found"):
        multi30k(tmp_path, "val")


def test_same_language_twice(tmp_path):
    with pytest.raises(ValueError, match=r"src and tgt must differ; got 'de' twice"):
        multi30k(tmp_path, "val", src="de", tgt="de")


def test_bad_language_code(tmp_path):
    with pytest.raises(ValueError, match=r"tgt must be a language code such as 'de'; got '../en'"):
        multi30k(tmp_path, "val", tgt="../en")
