"""Tasks: what the LLM is asked, what it is trained to answer, and how its answer is read back.

One `TaskSpec` per task (asr, translate, ner, sentiment, dialog-act, qa, summarize). Each gives
  - `prompt(request)`   the instruction, with the `<audio>` marker where the speech tokens go;
  - `target(labels)`    the training target text built from SLUE-style labels;
  - `parse(text, ...)`  the typed result. Parsers never raise on malformed model output: a tiny or
                        half-trained model writes anything, and the server must still answer.
Label sets follow SLUE (Shon et al., 2022): 18 OntoNotes entity tags with the "combined" grouping,
VoxCeleb sentiment (Negative/Neutral/Positive), HVB dialog acts (multi-label).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Literal

AUDIO_TOKEN = "<audio>"  # the prompt's place of the speech: the adapter's embeddings replace it

TaskName = Literal["asr", "translate", "ner", "sentiment", "dialog-act", "qa", "summarize"]
TASK_NAMES: tuple[str, ...] = ("asr", "translate", "ner", "sentiment", "dialog-act", "qa", "summarize")

NER_TAGS: tuple[str, ...] = (
    "CARDINAL", "DATE", "EVENT", "FAC", "GPE", "LANGUAGE", "LAW", "LOC", "MONEY",
    "NORP", "ORDINAL", "ORG", "PERCENT", "PERSON", "PRODUCT", "QUANTITY", "TIME", "WORK_OF_ART",
)  # fmt: skip
# SLUE's "combined" tag set: coarser groups; tags not listed here are dropped.
COMBINED_TAGS: dict[str, str] = {
    "DATE": "WHEN", "TIME": "WHEN",
    "CARDINAL": "QUANT", "ORDINAL": "QUANT", "QUANTITY": "QUANT", "MONEY": "QUANT", "PERCENT": "QUANT",
    "GPE": "PLACE", "LOC": "PLACE",
    "NORP": "NORP", "ORG": "ORG", "LAW": "LAW", "PERSON": "PERSON",
}  # fmt: skip
SENTIMENTS: tuple[str, ...] = ("Negative", "Neutral", "Positive")
DIALOG_ACTS: tuple[str, ...] = (
    "acknowledge", "answer_agree", "answer_dis", "answer_general", "apology", "backchannel",
    "disfluency", "other", "question_check", "question_general", "question_repeat", "self",
    "statement_close", "statement_general", "statement_instruct", "statement_open",
    "statement_problem", "thanks",
)  # fmt: skip
TARGET_LANGUAGES: dict[str, str] = {"es": "Spanish", "fr": "French", "de": "German"}
TRANSCRIPT_HINT = "Recognizer transcript (may contain errors): "  # the hybrid prompt's text line


# --- typed results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entity:
    tag: str  # one of NER_TAGS
    text: str
    start_char: int  # [start_char, end_char) in the result's text
    end_char: int
    start_s: float | None = None  # where in the audio, when the pipeline could align it
    end_s: float | None = None


@dataclass(frozen=True)
class Transcript:
    text: str
    raw: str = ""  # the model's output as generated


@dataclass(frozen=True)
class Translation:
    text: str
    target_lang: str
    raw: str = ""


@dataclass(frozen=True)
class Entities:
    text: str  # the transcript with the tags removed
    entities: tuple[Entity, ...]
    raw: str = ""


@dataclass(frozen=True)
class Sentiment:
    label: str | None  # one of SENTIMENTS, None when the output named none
    raw: str = ""


@dataclass(frozen=True)
class DialogActs:
    acts: tuple[str, ...]  # subset of DIALOG_ACTS, in DIALOG_ACTS order
    raw: str = ""


@dataclass(frozen=True)
class Answer:
    text: str
    question: str
    raw: str = ""
    start_s: float | None = None  # where in the audio the answer is spoken, when the pipeline could align it
    end_s: float | None = None


@dataclass(frozen=True)
class Summary:
    text: str
    raw: str = ""


TaskResult = Transcript | Translation | Entities | Sentiment | DialogActs | Answer | Summary


# --- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TaskRequest:
    """One task to run on one recording, with its parameters."""

    task: str  # one of TASK_NAMES
    question: str | None = None  # qa only
    target_lang: str | None = None  # translate only; key of TARGET_LANGUAGES

    def validate(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(TASK_NAMES)}")
        if self.task == "qa" and not (self.question and self.question.strip()):
            raise ValueError("task 'qa' needs a non-empty question")
        if self.task == "translate":
            if self.target_lang not in TARGET_LANGUAGES:
                raise ValueError(
                    f"unsupported target language {self.target_lang!r}; "
                    f"expected one of {', '.join(TARGET_LANGUAGES)}"
                )
        if self.question is not None and self.task != "qa":
            raise ValueError(f"a question only applies to task 'qa', not {self.task!r}")
        if self.target_lang is not None and self.task != "translate":
            raise ValueError(f"a target language only applies to task 'translate', not {self.task!r}")


# --- NER inline tagging --------------------------------------------------------------------------
# Targets tag entities inline: "i met [PERSON john smith] in [GPE paris]". The LLM writes transcript
# and entities in one pass, and character offsets follow from the untagged text.

_ENTITY = re.compile(r"\[([A-Z_]+) ([^\[\]]*?)\]")


def tag_entities(text: str, entities: list[tuple[str, int, int]]) -> str:
    """Inline-tag `text` given SLUE-style (tag, start_char, length) triples."""
    pieces, cursor = [], 0
    for tag, start, length in sorted(entities, key=lambda e: e[1]):
        if tag not in NER_TAGS:
            raise ValueError(f"unknown entity tag {tag!r}")
        if start < cursor or start + length > len(text) or length <= 0:
            raise ValueError(f"entity ({tag}, {start}, {length}) overlaps another or lies outside the text")
        pieces += [text[cursor:start], f"[{tag} {text[start:start + length]}]"]
        cursor = start + length
    pieces.append(text[cursor:])
    return "".join(pieces)


def parse_entities(tagged: str) -> Entities:
    """Read inline tags back; unknown tags are kept as plain text, stray brackets are dropped."""
    out, entities, cursor = [], [], 0
    for match in _ENTITY.finditer(tagged):
        out.append(tagged[cursor : match.start()])
        tag, phrase = match.group(1), match.group(2).strip()
        start = sum(len(p) for p in out)
        out.append(phrase)
        if tag in NER_TAGS and phrase:
            entities.append(Entity(tag=tag, text=phrase, start_char=start, end_char=start + len(phrase)))
        cursor = match.end()
    out.append(tagged[cursor:])
    text = "".join(out)
    if "[" in text or "]" in text:  # unbalanced or nested brackets: drop them, keep offsets right
        text, entities = _drop_brackets(text, entities)
    return Entities(text=text, entities=tuple(entities), raw=tagged)


def _drop_brackets(text: str, entities: list[Entity]) -> tuple[str, list[Entity]]:
    keep = [i for i, c in enumerate(text) if c not in "[]"]
    new_index = {old: new for new, old in enumerate(keep)}
    new_index[len(text)] = len(keep)

    def remap(i: int) -> int:
        while i not in new_index:  # a bracket position: move to the next kept character
            i += 1
        return new_index[i]

    clean = "".join(text[i] for i in keep)
    moved = []
    for e in entities:
        s, t = remap(e.start_char), remap(e.end_char)
        if t > s:
            moved.append(Entity(tag=e.tag, text=clean[s:t], start_char=s, end_char=t))
    return clean, moved


def combined_tag(tag: str) -> str | None:
    """SLUE's combined tag for an OntoNotes tag, or None where the combined set drops it."""
    return COMBINED_TAGS.get(tag)


# --- the task table ------------------------------------------------------------------------------


def _normalise_space(text: str) -> str:
    return " ".join(text.split())


def _parse_sentiment(text: str) -> Sentiment:
    words = re.findall(r"[a-z]+", text.lower())
    for word in words:
        for label in SENTIMENTS:
            if word == label.lower():
                return Sentiment(label=label, raw=text)
    return Sentiment(label=None, raw=text)


def _parse_dialog_acts(text: str) -> DialogActs:
    found = {w for w in re.split(r"[\s,;]+", text.strip().lower()) if w}
    return DialogActs(acts=tuple(a for a in DIALOG_ACTS if a in found), raw=text)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    instruction: str  # may hold {lang} / {question}
    target: Callable[[dict], str] = field(repr=False)  # labels of one example -> target text
    parse: Callable[[str, TaskRequest], TaskResult] = field(repr=False)
    opens_with_transcript: bool = False  # the answer starts as the transcript does (a speculative draft's opening)

    def prompt(self, request: TaskRequest, transcript: str | None = None) -> str:
        lang = TARGET_LANGUAGES.get(request.target_lang or "", "")
        heard = "" if transcript is None else f"{TRANSCRIPT_HINT}{_normalise_space(transcript)}\n"
        return f"{AUDIO_TOKEN}\n{heard}" + self.instruction.format(lang=lang, question=request.question or "")


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="asr",
            instruction="Transcribe the speech.",
            target=lambda labels: labels["text"],
            parse=lambda text, _: Transcript(text=_normalise_space(text), raw=text),
            opens_with_transcript=True,
        ),
        TaskSpec(
            name="translate",
            instruction="Translate the speech into {lang}.",
            target=lambda labels: labels["translation"],
            parse=lambda text, req: Translation(
                text=_normalise_space(text), target_lang=req.target_lang or "", raw=text
            ),
        ),
        TaskSpec(
            name="ner",
            instruction="Transcribe the speech and tag the named entities.",
            target=lambda labels: tag_entities(labels["text"], labels.get("entities") or []),
            parse=lambda text, _: parse_entities(_normalise_space(text)),
        ),
        TaskSpec(
            name="sentiment",
            instruction="What is the sentiment of the speech? Answer Negative, Neutral or Positive.",
            target=lambda labels: labels["sentiment"],
            parse=lambda text, _: _parse_sentiment(text),
        ),
        TaskSpec(
            name="dialog-act",
            instruction="Which dialog acts does the speech perform?",
            target=lambda labels: ", ".join(a for a in DIALOG_ACTS if a in labels["dialog_acts"]),
            parse=lambda text, _: _parse_dialog_acts(text),
        ),
        TaskSpec(
            name="qa",
            instruction="Answer the question about the speech. Question: {question}",
            target=lambda labels: labels["answer"],
            parse=lambda text, req: Answer(text=_normalise_space(text), question=req.question or "", raw=text),
        ),
        TaskSpec(
            name="summarize",
            instruction="Summarize the speech.",
            target=lambda labels: labels["summary"],
            parse=lambda text, _: Summary(text=_normalise_space(text), raw=text),
        ),
    )
}


def build_prompt(request: TaskRequest, transcript: str | None = None) -> str:
    """The instruction for `request`, the speech at the `<audio>` marker. With `transcript` (the
    hybrid prompt, as DeSTA2 gives its LLM the recognizer's words): the CTC compressor's transcript
    follows the speech as text, so the LLM reads both what was heard and a first guess at the words."""
    request.validate()
    return TASKS[request.task].prompt(request, transcript)


def parse_output(request: TaskRequest, text: str) -> TaskResult:
    """The typed result of `request` from generated `text`; never raises on odd text."""
    return TASKS[request.task].parse(text if isinstance(text, str) else "", request)
