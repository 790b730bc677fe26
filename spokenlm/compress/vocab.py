"""The character vocabulary of the CTC compressor's head (Speech-LLaMA, Wu et al., 2023, §2.2).

Id 0 is the CTC blank; alphabet character ``i`` has id ``i + 1``. This file holds the vocabulary and
text normalisation only; the head and the CTC loss live in ``ctc.py``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

BLANK = 0
DEFAULT_ALPHABET = "abcdefghijklmnopqrstuvwxyz '"  # SLUE normalized_text: lowercase, spelled-out numbers

_SPACES = re.compile(r" +")


@dataclass(frozen=True)
class CharVocab:
    """Characters for CTC: ``size = len(alphabet) + 1`` ids, blank = 0.

    ``encode`` normalises text before mapping it to ids, in this order:
      1. lowercase;
      2. any whitespace (tab, newline, ...) becomes a space;
      3. a character outside the alphabet is replaced by its accent-free form when that is in the
         alphabet ("é" -> "e", via Unicode NFKD), otherwise dropped ("-", "!", "7" with the default
         alphabet; so "well-known" -> "wellknown");
      4. runs of spaces collapse to one and leading/trailing spaces are stripped.
    ``decode(encode(t)) == normalize(t)``.
    """

    alphabet: str = DEFAULT_ALPHABET
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.alphabet:
            raise ValueError("alphabet must not be empty")
        duplicates = sorted({c for c in self.alphabet if self.alphabet.count(c) > 1})
        if duplicates:
            raise ValueError(f"alphabet has duplicate characters: {''.join(duplicates)!r}")
        if self.alphabet != self.alphabet.lower():
            # encode() lowercases first, so an uppercase character could never be produced
            raise ValueError(f"alphabet must be lowercase, got {self.alphabet!r}")
        object.__setattr__(self, "_ids", {c: i + 1 for i, c in enumerate(self.alphabet)})

    @property
    def size(self) -> int:
        """Number of ids including the blank: the CTC head's output dimension."""
        return len(self.alphabet) + 1

    def normalize(self, text: str) -> str:
        """The text ``encode`` sees: see the class docstring for the rules."""
        chars = []
        for c in text.lower():
            if c.isspace():
                c = " "
            if c in self._ids:
                chars.append(c)
            else:
                chars.extend(d for d in unicodedata.normalize("NFKD", c) if d in self._ids)
        return _SPACES.sub(" ", "".join(chars)).strip(" ")

    def encode(self, text: str) -> list[int]:
        """Normalised text -> ids in [1, size); may be empty (e.g. text of punctuation only)."""
        return [self._ids[c] for c in self.normalize(text)]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Ids -> text, blanks skipped; repeats are kept (use ``ctc_decode`` for a CTC path)."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        bad = [i for i in ids if not 0 <= i < self.size]
        if bad:
            raise ValueError(f"ids out of range [0, {self.size}): {bad}")
        return "".join(self.alphabet[i - 1] for i in ids if i != BLANK)

    def ctc_decode(self, ids: Sequence[int] | Tensor) -> str:
        """A frame-level CTC path -> text: collapse runs of the same id, then drop blanks."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        collapsed = [i for t, i in enumerate(ids) if t == 0 or i != ids[t - 1]]
        return self.decode(collapsed)

    def to_json(self) -> str:
        return json.dumps({"alphabet": self.alphabet, "blank": BLANK})

    @classmethod
    def from_json(cls, text: str) -> CharVocab:
        data = json.loads(text)
        if data.get("blank", BLANK) != BLANK:
            raise ValueError(f"CharVocab expects blank = {BLANK}, got {data['blank']!r}")
        return cls(alphabet=data["alphabet"])
