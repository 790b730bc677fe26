"""Answers held to the words that were heard.

The LLM writes NER's tagged transcript, QA's answer and a summary itself, and where the speech is
unlike its training passages (one line of a novel read on LibriVox) it invents: "[PERSON heather
bernstein] was not an old man" for "he was not an ill disposed young man", "Eric Johnson was not a
young man" as its summary. The prompt's transcript (the transcriber's reading, read far better than
the LLM rewrites it) says what was said, so a grounded bundle (`SpeechLLM.grounded`) holds each
answer to it:

- entities (`ground_entities`): each tagged phrase is looked up in the transcript, the word span
  most like it (character similarity, `MIN_SIMILARITY`); found, it takes that span's words and
  offsets; found nowhere, it is dropped. The result's text is the transcript.
- a QA answer (`ground_answer`): SLUE's answers are spans of the passage, so an answer like a span
  becomes that span. An answer like none ("hugh albert" for "who is the speaker talking about?"
  on "he was not an ill disposed young man") is replaced before that by the span the LLM itself
  finds likeliest as its reply to the same prompt (`answer_spans`, every run of at most
  `MAX_ANSWER_WORDS` words, each scored by `SpeechLLM.reply_log_probs`): extractive QA with the
  LLM as the scorer (`spokenlm.model.decode_speech`).
- a summary (`ground_summary`): a recording of one sentence (at most `SHORT_WORDS` words heard)
  has nothing to condense, so its summary is that sentence, restored (`transcript_sentence`); a
  passage's is the LLM's. (Holding a passage's summary to its transcript cost more than it saved:
  on the dev passages, replacing a summary whose names the transcript lacks, or snapping those
  names to the heard words, took ROUGE-L from 94.0 to 75.5 or 86.7. The LLM hears a name the
  transcript misspells: "Digital Housing Act" where Whisper read "did all housing act".)

Why not the library route: the matching is difflib's (the standard library's sequence matcher) over
word spans, which no metric library exposes as "best span for a phrase"; the rules are a few lines.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Callable

from spokenlm.tasks import Answer, Entities, Entity, Summary, TaskResult

MIN_SIMILARITY = 0.8
"""difflib ratio (2 * matches / total characters) a phrase needs with a transcript span to be that
span: "marina oswald" / "marina oswalt" 0.92, "indian ocean" / "the indian ocean" 0.86, "heather
bernstein" / "he was" 0.35 (its best span in "he was not an ill disposed young man")."""

SHORT_WORDS = 20
"""A transcript of at most this many words is one sentence, its own summary (English sentences average
~15-20 words; the LibriVox clips run 8-23, `make demo`'s two 8 each); the corpus's passages, several
sentences, run 25-58."""

MAX_ANSWER_WORDS = 6
"""The longest span `answer_spans` offers; the corpus's answers run 1-5 words ("one hundred eighty
nine feet")."""

_WORD = re.compile(r"\S+")


def _spans(transcript: str, words: int) -> list[tuple[int, int]]:
    """Character spans (start, end) of every run of `words` - 1 to `words` + 1 transcript words."""
    bounds = [(m.start(), m.end()) for m in _WORD.finditer(transcript)]
    out = []
    for length in range(max(1, words - 1), words + 2):
        for i in range(len(bounds) - length + 1):
            out.append((bounds[i][0], bounds[i + length - 1][1]))
    return out


def best_span(phrase: str, transcript: str) -> tuple[tuple[int, int], float] | None:
    """The transcript span most like `phrase` (case aside) and its similarity; the earliest of
    equals; None for an empty phrase or transcript."""
    phrase = " ".join(phrase.lower().split())
    if not phrase or not transcript.strip():
        return None
    lowered = transcript.lower()
    best = None
    for start, end in _spans(transcript, len(phrase.split())):
        ratio = difflib.SequenceMatcher(None, phrase, lowered[start:end], autojunk=False).ratio()
        if best is None or ratio > best[1]:
            best = ((start, end), ratio)
    return best


def answer_spans(transcript: str, max_words: int = MAX_ANSWER_WORDS) -> list[str]:
    """Every run of 1 to `max_words` words of `transcript`, each text once, in order of where it first starts."""
    words = transcript.split()
    runs = (" ".join(words[i : i + n]) for i in range(len(words)) for n in range(1, max_words + 1) if i + n <= len(words))
    return list(dict.fromkeys(runs))


def is_heard(phrase: str, transcript: str, min_similarity: float = MIN_SIMILARITY) -> bool:
    """Whether some transcript span is at least `min_similarity` like `phrase`."""
    match = best_span(phrase, transcript)
    return match is not None and match[1] >= min_similarity


def ground_entities(result: Entities, transcript: str, min_similarity: float = MIN_SIMILARITY) -> Entities:
    """`result`'s entities found in `transcript` (module docstring): its text is the transcript,
    each entity the span most like it, the most similar first where two would overlap; the others
    dropped. In transcript order."""
    found: list[tuple[float, int, Entity]] = []
    for order, entity in enumerate(result.entities):
        match = best_span(entity.text, transcript)
        if match is not None and match[1] >= min_similarity:
            (start, end), ratio = match
            found.append((ratio, order, Entity(tag=entity.tag, text=transcript[start:end], start_char=start, end_char=end)))
    kept: list[Entity] = []
    for _, _, entity in sorted(found, key=lambda f: (-f[0], f[1])):
        if all(entity.end_char <= k.start_char or k.end_char <= entity.start_char for k in kept):
            kept.append(entity)
    return dataclasses.replace(result, text=transcript, entities=tuple(sorted(kept, key=lambda e: e.start_char)))


def ground_answer(result: Answer, transcript: str, min_similarity: float = MIN_SIMILARITY) -> Answer:
    """`result` as the transcript span most like it, where one is at least `min_similarity` like it;
    else as it was."""
    match = best_span(result.text, transcript)
    if match is None or match[1] < min_similarity:
        return result
    (start, end), _ = match
    return dataclasses.replace(result, text=transcript[start:end])


def transcript_sentence(transcript: str, restore: Callable[[str], str] | None = None) -> str:
    """A normalized transcript written as a sentence: `restore`d (a truecaser: "i" -> "I"), its first
    letter capitalised, a full stop at its end."""
    text = " ".join(transcript.split())
    if restore is not None:
        text = restore(text)
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


def ground_summary(result: Summary, transcript: str, restore: Callable[[str], str] | None = None) -> Summary:
    """The transcript as a sentence where it is one (at most `SHORT_WORDS` words, not empty); else `result`."""
    if not 0 < len(transcript.split()) <= SHORT_WORDS:
        return result
    return dataclasses.replace(result, text=transcript_sentence(transcript, restore))


def ground(result: TaskResult, transcript: str | None, restore: Callable[[str], str] | None = None) -> TaskResult:
    """`result` held to `transcript` where its task writes words of its own (entities, an answer, a
    summary); any other result, or no transcript, as it is."""
    if transcript is None:
        return result
    if isinstance(result, Entities):
        return ground_entities(result, transcript)
    if isinstance(result, Answer):
        return ground_answer(result, transcript)
    if isinstance(result, Summary):
        return ground_summary(result, transcript, restore)
    return result
