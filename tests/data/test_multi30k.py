"""deepfn.data.multi30k on the committed sample of Multi30k and on small files written here."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from deepfn.data import multi30k

# The first 300 lines of every real task-1 file (see its README).
SAMPLE = Path(__file__).resolve().parent / "multi30k_sample"


@pytest.mark.parametrize("split", ["train", "val", "test_2016_flickr"])
def test_sample_splits(split):
    pairs = multi30k(SAMPLE, split)
    assert len(pairs) == 300
    assert all(isinstance(s, str) and isinstance(t, str) and s and t for s, t in pairs)
    assert not any("\n" in s or "\n" in t for s, t in pairs)
    with gzip.open(SAMPLE / f"{split}.en.gz", "rt", encoding="utf-8") as f:
        first_en = f.readline().rstrip("\n")
    assert pairs[0][1] == first_en


def test_sample_val_content_and_direction():
    de_en = multi30k(str(SAMPLE), "val")
    en_de = multi30k(SAMPLE, "val", src="en", tgt="de")
    assert de_en[0] == ("Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen",
                        "A group of men are loading cotton onto a truck")
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
    with pytest.raises(FileNotFoundError, match=r"deepfn\.data\.multi30k: .*val\.en\.gz not found.*download=True"):
        multi30k(tmp_path, "val")


def test_same_language_twice(tmp_path):
    with pytest.raises(ValueError, match=r"src and tgt must differ; got 'de' twice"):
        multi30k(tmp_path, "val", src="de", tgt="de")


def test_bad_language_code(tmp_path):
    with pytest.raises(ValueError, match=r"tgt must be a language code such as 'de'; got '../en'"):
        multi30k(tmp_path, "val", tgt="../en")


def test_split_is_required(tmp_path):
    with pytest.raises(ValueError, match=r"split must be one of .*; got None"):
        multi30k(tmp_path)


def test_download_flag_type(tmp_path):
    with pytest.raises(TypeError, match=r"deepfn\.data\.multi30k: download must be a bool; got 'yes'"):
        multi30k(tmp_path, "val", download="yes")
