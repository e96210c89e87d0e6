"""deepfn.data.CharVocab: built from a text, round trip, unknown characters, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deepfn.data import CharVocab, multi30k
from deepfn.data.chars import UNK_ID

SAMPLE = Path(__file__).resolve().parent / "multi30k_sample"


def test_ids_follow_code_point_order_after_unk():
    vocab = CharVocab.from_text("hello world")
    assert vocab.chars == " dehlorw"
    assert vocab.size == len(vocab.chars) + 1
    assert vocab.encode("hello").tolist() == [4, 3, 5, 5, 6]
    assert vocab.encode("hello").dtype == torch.int64


def test_round_trip_on_the_multi30k_sample():
    train = "\n".join(en for _, en in multi30k(SAMPLE, "train"))
    vocab = CharVocab.from_text(train)
    ids = vocab.encode(train)
    assert ids.shape == (len(train),) and int(ids.min()) >= 1     # every training character is known
    assert vocab.decode(ids) == train
    assert vocab.decode(ids.tolist()) == train


def test_unknown_characters_map_to_unk_and_decode_as_replacement():
    vocab = CharVocab.from_text("abc")
    ids = vocab.encode("aéz€c\U0001F600")
    assert ids.tolist() == [1, UNK_ID, UNK_ID, UNK_ID, 3, UNK_ID]
    assert vocab.decode(ids) == "a\ufffd\ufffd\ufffdc\ufffd"
    assert vocab.decode(ids, unknown="<unk>") == "a<unk><unk><unk>c<unk>"


def test_characters_beyond_the_largest_known_one_and_below_the_smallest():
    vocab = CharVocab.from_text("mn")
    assert vocab.encode("amnz").tolist() == [UNK_ID, 1, 2, UNK_ID]


def test_empty_text_and_empty_vocabulary():
    assert CharVocab.from_text("ab").encode("").shape == (0,)
    empty = CharVocab.from_text("")
    assert empty.size == 1 and empty.encode("xy").tolist() == [UNK_ID, UNK_ID]


def test_the_same_text_gives_the_same_vocabulary_in_any_order():
    assert CharVocab.from_text("cab") == CharVocab.from_text("abcabc")


def test_rejects_chars_unsorted_or_repeated():
    with pytest.raises(ValueError, match="CharVocab: chars must hold each character once"):
        CharVocab("ba")
    with pytest.raises(ValueError, match="CharVocab: chars must hold each character once"):
        CharVocab("aab")


def test_rejects_chars_not_a_str():
    with pytest.raises(TypeError, match="CharVocab: chars must be a str"):
        CharVocab(["a", "b"])


def test_from_text_rejects_bytes():
    with pytest.raises(TypeError, match=r"CharVocab.from_text: text must be a str; got bytes"):
        CharVocab.from_text(b"abc")


def test_encode_rejects_a_list():
    with pytest.raises(TypeError, match=r"CharVocab.encode: text must be a str"):
        CharVocab.from_text("ab").encode(["a"])


def test_decode_rejects_ids_out_of_range():
    with pytest.raises(ValueError, match=r"CharVocab.decode: ids must lie in \[0, 3\).*got 3"):
        CharVocab.from_text("ab").decode([1, 3])
    with pytest.raises(ValueError, match=r"got -1"):
        CharVocab.from_text("ab").decode(torch.tensor([-1]))


def test_decode_rejects_float_and_2d_tensors():
    vocab = CharVocab.from_text("ab")
    with pytest.raises(TypeError, match=r"CharVocab.decode: ids must be a 1-d integer tensor"):
        vocab.decode(torch.tensor([1.0]))
    with pytest.raises(TypeError, match=r"CharVocab.decode: ids must be a 1-d integer tensor"):
        vocab.decode(torch.ones(2, 2, dtype=torch.int64))


def test_decode_rejects_a_str_and_non_int_items():
    vocab = CharVocab.from_text("ab")
    with pytest.raises(TypeError, match=r"CharVocab.decode: ids must be"):
        vocab.decode("12")
    with pytest.raises(TypeError, match=r"CharVocab.decode: ids must be"):
        vocab.decode([1, True])


def test_decode_rejects_unknown_not_a_str():
    with pytest.raises(TypeError, match=r"CharVocab.decode: unknown must be a str"):
        CharVocab.from_text("ab").decode([0], unknown=None)
