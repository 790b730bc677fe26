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
  becomes that span; one like none is kept as written (the question may ask for what is not said).
- a summary (`unheard_names`): a name it gives (a capitalised phrase past a sentence's first word,
  or a run of two capitalised words anywhere) that the transcript does not hold is looked up as an
  entity is, with a lower bar (`NAME_SIMILARITY`: a name the LLM half-heard, "New Haven" for "new
  wayneview", takes the heard one's words); a name like nothing said makes the whole summary the
  transcript itself, restored as a sentence (`transcript_sentence`): nothing new rather than
  something false.

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
bernstein" / "he was not" 0.31."""

NAME_SIMILARITY = 0.6
"""The bar for a summary's name: "new haven" / "new wayneview" 0.64; "heather miller" / "amiable" 0.48,
"eric johnson" / "he was" 0.33 (invented names on `make demo`'s LibriVox clips)."""

_WORD = re.compile(r"\S+")
_NAME_WORD = re.compile(r"[A-Z][\w'-]*")


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


def unheard_names(summary: str, transcript: str) -> list[str]:
    """The names `summary` gives that `transcript` does not hold: runs of capitalised words (a lone
    one that opens a sentence is no name: "It", "The"; nor is "I") with a word the transcript lacks."""
    heard = {w.strip(".,!?;:\"'").lower() for w in transcript.split()}
    out = []
    for sentence in re.split(r"(?<=[.!?])\s+", summary.strip()):
        words = sentence.split()
        i = 0
        while i < len(words):
            if not _NAME_WORD.match(words[i]) or words[i].strip(".,!?;:\"'") == "I":
                i += 1
                continue
            j = i
            while j < len(words) and _NAME_WORD.match(words[j]) and words[j].strip(".,!?;:\"'") != "I":
                j += 1
            run = [w.strip(".,!?;:\"'") for w in words[i:j]]
            if (i > 0 or len(run) > 1) and any(re.sub(r"'s$", "", w).lower() not in heard for w in run):
                out.append(" ".join(run))
            i = j
    return out


def transcript_sentence(transcript: str, restore: Callable[[str], str] | None = None) -> str:
    """A normalized transcript written as a sentence: `restore`d (a truecaser: "i" -> "I"), its first
    letter capitalised, a full stop at its end."""
    text = " ".join(transcript.split())
    if restore is not None:
        text = restore(text)
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


def ground_summary(result: Summary, transcript: str, restore: Callable[[str], str] | None = None,
                   min_similarity: float = NAME_SIMILARITY) -> Summary:  # fmt: skip
    """`result` with each name the transcript lacks replaced by the heard words most like it
    (capitalised); the transcript as a sentence where one is like nothing heard."""
    names = unheard_names(result.text, transcript)
    if not names or not transcript.strip():
        return result
    text = result.text
    for name in names:
        match = best_span(name, transcript)
        if match is None or match[1] < min_similarity or name not in text:
            return dataclasses.replace(result, text=transcript_sentence(transcript, restore))
        (start, end), _ = match
        text = text.replace(name, " ".join(w[:1].upper() + w[1:] for w in transcript[start:end].split()), 1)
    return dataclasses.replace(result, text=text)


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
