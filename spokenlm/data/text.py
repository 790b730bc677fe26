"""Speakable text: numbers as words, a normalized transcript with a character map, the text corpora.

The corpus builder speaks *raw* text (cased, punctuated, every number already written in words, so
the voice says exactly what the transcript holds) and labels the *normalized* text the way SLUE
VoxPopuli does (lower case, no punctuation, single spaces). Entity and answer offsets are produced
over the raw text and carried to the normalized text with `normalize_with_map`.

- `number_words`, `ordinal_words`, `year_words`, `time_words`: integers → English words.
- `speakable`: raw sentence → raw sentence a TTS reads as written (digits, $, %, abbreviations), or
  None when it cannot be made safe (Roman numerals, symbols, non-Latin letters).
- `normalize_with_map`, `normalize`, `map_span`: raw → normalized text and offsets.
- `load_text_sources`: the openly licensed sentence sets in ../shared/data/text.

It does not synthesize audio and has no third-party dependency.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path


class TextDataError(ValueError):
    """The shared text data is missing or malformed."""


# --- numbers -------------------------------------------------------------------------------------

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip


def number_words(n: int) -> str:
    """`123` → "one hundred twenty three" (no "and"; spaces, not hyphens, between words)."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            head, rest = divmod(n, scale)
            return f"{number_words(head)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def ordinal_words(n: int) -> str:
    """`21` → "twenty first"."""
    words = number_words(n).split()
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        words[-1] = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def year_words(year: int) -> str:
    """How a year is read: 1998 → "nineteen ninety eight", 2005 → "two thousand five",
    1905 → "nineteen oh five", 1900 → "nineteen hundred", 2024 → "twenty twenty four"."""
    if not 1000 <= year <= 2099:
        return number_words(year)
    if 2000 <= year <= 2009:
        return number_words(year)
    head, tail = divmod(year, 100)
    if tail == 0:
        return f"{number_words(head)} hundred"
    if tail < 10:
        return f"{number_words(head)} oh {_ONES[tail]}"
    return f"{number_words(head)} {number_words(tail)}"


def time_words(hour: int, minute: int) -> str:
    """`(10, 30)` → "ten thirty", `(7, 0)` → "seven o'clock", `(9, 5)` → "nine oh five"."""
    if minute == 0:
        return f"{number_words(hour)} o'clock"
    if minute < 10:
        return f"{number_words(hour)} oh {_ONES[minute]}"
    return f"{number_words(hour)} {number_words(minute)}"


def _decade_words(year: int) -> str:  # 1930 → "nineteen thirties"
    words = year_words(year).split()
    last = words[-1]
    words[-1] = last[:-1] + "ies" if last.endswith("y") else last + "s"
    return " ".join(words)


# --- making raw text speakable -------------------------------------------------------------------

# Abbreviations a TTS expands on its own; written out so the transcript says what the voice says.
_ABBREVIATIONS = {
    "Mr.": "Mister", "Mrs.": "Missus", "Messrs.": "Messieurs", "Dr.": "Doctor", "Jr.": "Junior",
    "Sr.": "Senior", "Capt.": "Captain", "Col.": "Colonel", "Gen.": "General", "Lt.": "Lieutenant",
    "Gov.": "Governor", "Rev.": "Reverend", "Prof.": "Professor", "Hon.": "Honorable",
    "Sgt.": "Sergeant", "Co.": "Company", "Mt.": "Mount", "Ft.": "Fort", "vs.": "versus",
    "etc.": "et cetera", "e.g.": "for example", "i.e.": "that is", "OK": "okay", "Ok": "okay",
}  # fmt: skip
_ABBREV_RE = re.compile(
    r"(?<![A-Za-z])(" + "|".join(re.escape(a) for a in sorted(_ABBREVIATIONS, key=len, reverse=True)) + r")(?![A-Za-z])"
)
_PUNCT_MAP = {
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": " - ", "\u2014": ", ",
    "\u2026": "...", "\u00a0": " ", "&": " and ",
}  # fmt: skip
_ROMAN = re.compile(r"\b[IVXLCDM]{2,}\b")  # "Henry VIII": TTS says "roman eight"; drop such text
_ALLOWED = re.compile(r"[A-Za-z .,;:!?'\"()\-]*")

_MONEY = re.compile(r"\$(\d[\d,]*)(?:\.(\d\d))?(?:\s+(million|billion|thousand))?")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s?%")
_TIME = re.compile(r"\b(\d{1,2}):(\d\d)\b")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_DECADE = re.compile(r"\b(1[1-9]\d0|20[0-9]0)'?s\b")
_YEAR = re.compile(r"(?<![\d,.$])\b(1[1-9]\d\d|20\d\d)\b(?![\d,.]\d)")
_DECIMAL = re.compile(r"\b(\d+)\.(\d+)\b")
_DIGIT = re.compile(r"\d")
_INTEGER = re.compile(r"\b\d{1,3}(?:,\d{3})+\b|\b\d+\b")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def _money(m: re.Match) -> str:
    dollars, cents, scale = _int(m.group(1)), m.group(2), m.group(3)
    if scale:
        return f"{number_words(dollars)} {scale} dollars"
    words = f"{number_words(dollars)} dollar{'s' if dollars != 1 else ''}"
    if cents and int(cents):
        words += f" and {number_words(int(cents))} cent{'s' if int(cents) != 1 else ''}"
    return words


def _spell_numbers(text: str) -> str:
    text = _MONEY.sub(_money, text)
    text = _PERCENT.sub(lambda m: _spell_decimal(m.group(1)) + " percent", text)
    text = _TIME.sub(lambda m: time_words(int(m.group(1)), int(m.group(2))), text)
    text = _ORDINAL.sub(lambda m: ordinal_words(int(m.group(1))), text)
    text = _DECADE.sub(lambda m: _decade_words(int(m.group(1))), text)
    text = _YEAR.sub(lambda m: year_words(int(m.group(1))), text)
    text = _DECIMAL.sub(lambda m: _spell_decimal(m.group(0)), text)
    return _INTEGER.sub(lambda m: number_words(_int(m.group(0))), text)


def _spell_decimal(text: str) -> str:
    whole, _, frac = text.partition(".")
    words = number_words(int(whole))
    return words + (" point " + " ".join(_ONES[int(d)] for d in frac) if frac else "")


def speakable(text: str) -> str | None:
    """Raw text a TTS reads exactly as written, or None when it cannot be made so.

    Folds typographic quotes and accents to ASCII, spells out numbers, money, percentages, times and
    common abbreviations, and rejects what a voice would read differently from the transcript
    (Roman numerals, symbols such as / + @ #, digits glued to letters like "MP3").
    """
    if not text.isascii() or "&" in text:
        for src, dst in _PUNCT_MAP.items():
            text = text.replace(src, dst)
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
        if not text.isascii():
            return None
    if _ROMAN.search(text):
        return None
    text = _ABBREV_RE.sub(lambda m: _ABBREVIATIONS[m.group(1)], text)
    if _DIGIT.search(text):
        text = _spell_numbers(text)
    text = re.sub(r"\s+([,.;:!?])", r"\1", " ".join(text.split()))
    if not text or not _ALLOWED.fullmatch(text) or not any(c.isalpha() for c in text):
        return None
    return text


# --- normalized text -----------------------------------------------------------------------------


_ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_ALNUM = _ALPHA | frozenset("0123456789")
_LONE_APOSTROPHE = re.compile(r"(?<![A-Za-z])'|'(?![A-Za-z])")
_NOT_WORD = re.compile(r"[^A-Za-z0-9']+")


def normalize_with_map(raw: str) -> tuple[str, list[int]]:
    """SLUE-style normalized text and, for every raw character, its index there (-1 if dropped).

    Lower case; ASCII letters and digits kept; an apostrophe kept only between two letters
    ("don't"); every other character is a word break; runs of breaks become one space.
    """
    out: list[str] = []
    index = [-1] * len(raw)
    pending_space = False
    for i, c in enumerate(raw):
        keep = c in _ALNUM or (c == "'" and 0 < i < len(raw) - 1 and raw[i - 1] in _ALPHA and raw[i + 1] in _ALPHA)
        if not keep:
            pending_space = bool(out)
            continue
        if pending_space:
            out.append(" ")
            pending_space = False
        index[i] = len(out)
        out.append(c.lower())
    return "".join(out), index


def normalize(raw: str) -> str:
    """`normalize_with_map(raw)[0]`, faster (it keys every sentence of the corpora)."""
    text = _LONE_APOSTROPHE.sub(" ", raw)
    return " ".join(_NOT_WORD.sub(" ", text).split()).lower()


def map_span(index: list[int], start: int, length: int) -> tuple[int, int] | None:
    """A raw (start, length) span → (start, length) in the normalized text, None if nothing is left."""
    kept = [j for j in index[start : start + length] if j >= 0]
    if not kept:
        return None
    return kept[0], kept[-1] + 1 - kept[0]


# --- the shared text corpora ---------------------------------------------------------------------

TEXT_FILES = {
    "ljspeech": "ljspeech_sentences.txt",
    "harvard": "harvard.txt",
    "arctic": "arctic_prompts.txt",
    "tatoeba": "tatoeba_eng_spa.tsv",
}


@dataclass(frozen=True)
class SourceSentence:
    """One distinct sentence of a text corpus, made speakable."""

    text: str  # raw, speakable
    translations: tuple[str, ...] = ()  # Spanish, for Tatoeba pairs; all given translations


def default_data_dir() -> Path:
    """`<repo>/../shared/data`, where <repo> holds the spokenlm package."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def text_dir(data_dir: Path | str | None) -> Path:
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    folder = root / "text"
    if not folder.is_dir():
        raise TextDataError(
            f"shared text data not found at {folder}; pass --data-dir pointing at the shared data "
            "folder (the one holding text/ljspeech_sentences.txt and LICENSE-NOTES.md)"
        )
    return folder


def load_text_source(name: str, data_dir: Path | str | None = None) -> tuple[SourceSentence, ...]:
    """Distinct speakable sentences of one corpus, in file order; duplicates (after normalization)
    are merged, and Tatoeba's several Spanish translations of one English sentence are kept together."""
    if name not in TEXT_FILES:
        raise TextDataError(f"unknown text source {name!r}; expected one of {', '.join(TEXT_FILES)}")
    path = text_dir(data_dir) / TEXT_FILES[name]
    if not path.is_file():
        raise TextDataError(f"missing text file {path}")
    stat = path.stat()
    return _load(name, path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)  # parsing Tatoeba takes seconds; a file that changes gets a new key
def _load(name: str, path: Path, size: int, mtime_ns: int) -> tuple[SourceSentence, ...]:
    by_key: dict[str, tuple[str, list[str]]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            translation = None
            if name == "arctic":  # arctic_a0001<TAB>text
                line = line.split("\t", 1)[-1]
            elif name == "tatoeba":
                if "\t" not in line:
                    raise TextDataError(f"{path}:{line_no}: expected english<TAB>translation")
                line, translation = line.split("\t", 1)
            raw = speakable(line)
            if raw is None:
                continue
            key = normalize(raw)
            if key not in by_key:
                by_key[key] = (raw, [])
            if translation and translation.strip() and translation.strip() not in by_key[key][1]:
                by_key[key][1].append(translation.strip())
    return tuple(SourceSentence(text=raw, translations=tuple(tr)) for raw, tr in by_key.values())
