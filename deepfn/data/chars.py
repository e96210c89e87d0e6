"""A character-level vocabulary: text to int64 ids and back, with one id for unknown characters.

Built from a training text only (``CharVocab.from_text``), so validation or test text may hold
characters it has never seen: those map to ``UNK_ID`` (0) rather than raising, as a word
vocabulary maps unseen words to ``<unk>``. Known characters take ids ``1..n`` in code-point
order, so the same text always gives the same vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .._checks import describe

__all__ = ["UNK_ID", "CharVocab"]

#: The id of every character the vocabulary does not know.
UNK_ID = 0
_OWNER = "deepfn.data.CharVocab"


@dataclass(frozen=True)
class CharVocab:
    """Character <-> id table: ``UNK_ID`` (0) is ``<unk>``, ``chars[i]`` has id ``i + 1``.

    Attributes:
        chars: the known characters, each once, in increasing code-point order.

    Examples:
        >>> vocab = CharVocab.from_text("abca")
        >>> vocab.size, vocab.encode("cab!").tolist()
        (4, [3, 1, 2, 0])
        >>> vocab.decode([3, 1, 2, 0])
        'cab\\ufffd'
    """

    chars: str

    def __post_init__(self) -> None:
        if not isinstance(self.chars, str):
            raise TypeError(f"{_OWNER}: chars must be a str of the known characters; got {describe(self.chars)}")
        if list(self.chars) != sorted(set(self.chars)):
            raise ValueError(f"{_OWNER}: chars must hold each character once, in increasing code-point order "
                             f"(use CharVocab.from_text); got {self.chars[:40]!r}")

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The vocabulary of every distinct character of ``text`` (e.g. the training split).

        Raises:
            TypeError: ``text`` is not a str.
        """
        _check_text("from_text", text)
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        """The number of ids, ``<unk>`` included: a model's ``vocab_size``."""
        return len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        """``text`` as ids: ``int64 [len(text)]``, unknown characters as ``UNK_ID``.

        Raises:
            TypeError: ``text`` is not a str.
        """
        _check_text("encode", text)
        if not text:
            return torch.zeros(0, dtype=torch.int64)
        # One code point per 4 bytes; surrogatepass keeps a lone surrogate a character of its own.
        codes = torch.frombuffer(bytearray(text.encode("utf-32-le", "surrogatepass")), dtype=torch.int32).long()
        table = torch.tensor([ord(c) for c in self.chars], dtype=torch.int64)
        if table.numel() == 0:
            return torch.full_like(codes, UNK_ID)
        pos = torch.searchsorted(table, codes).clamp(max=table.numel() - 1)
        return torch.where(table[pos] == codes, pos + 1, UNK_ID)

    def decode(self, ids: torch.Tensor | Sequence[int], unknown: str = "\ufffd") -> str:
        """The text of ``ids`` (``[n]`` integer tensor or ints); ``UNK_ID`` becomes ``unknown``.

        Raises:
            TypeError: ``ids`` is not a 1-d integer tensor or a sequence of ints, or
                ``unknown`` is not a str.
            ValueError: an id outside ``[0, size)``.
        """
        if isinstance(ids, torch.Tensor):
            if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
                raise TypeError(f"{_OWNER}.decode: ids must be a 1-d integer tensor [n]; got {describe(ids)}")
            ids = ids.tolist()
        elif not isinstance(ids, Sequence) or isinstance(ids, str) or \
                any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            raise TypeError(f"{_OWNER}.decode: ids must be a 1-d integer tensor or a sequence of ints; "
                            f"got {describe(ids)}")
        bad = [i for i in ids if not 0 <= i < self.size]
        if bad:
            raise ValueError(f"{_OWNER}.decode: ids must lie in [0, {self.size}) (size, <unk> included); "
                             f"got {bad[0]}")
        if not isinstance(unknown, str):
            raise TypeError(f"{_OWNER}.decode: unknown must be a str; got {describe(unknown)}")
        table = [unknown, *self.chars]
        return "".join(table[i] for i in ids)


def _check_text(method: str, text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{_OWNER}.{method}: text must be a str; got {describe(text)}")
