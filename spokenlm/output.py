"""`RunOutput`: what one task request on one recording gives, and its one wire form, the record.

`SpeechLM.run` / `stream` return RunOutputs; every surface shows one through `to_record()`: the CLI
prints it (`--json`), Serve returns it (its response models extend `Record`), the UI renders it (and
reads the Serve API's answers back with `from_record`), the SLUE job stores one per task. `Record`
(a TypedDict, so pydantic and FastAPI read its field types) is the one declaration of that shape:

    path        where the audio came from (a file, an upload's name), when the caller knows
    task, question, target_lang   the request
    text        the transcript: the LLM's for asr (the prompt's transcript where the bundle answers ASR
                with it) and ner, else the CTC compressor's (or null)
    ctc_text    the CTC compressor's greedy transcript, where the bundle has a CTC head
    entities | sentiment | dialog_acts | translation | answer | summary
                the task's result; null for every task that is not this one
    answer_span_s   [start, end] in seconds where the answer is spoken (qa), where the CTC alignment found it
    duration_s  of the recording
    spans_s     [start, end] in seconds of each compressed speech token the LLM read
    tokens_per_second   compressed tokens per second of audio
    timing_ms   per stage: load_audio (where the caller decoded a file), encoder, transcriber (where the
                bundle has one: Whisper reading the audio for the prompt), compress, adapter, llm

Entities carry their character span in `text` and, where the CTC alignment placed them (as it places
answers), their time in the audio. Numbers are rounded for the wire (seconds to the millisecond, timing to 0.1 ms).
Not here: how a surface wraps the record (Serve's `object` / `model` / `batch_size` envelope).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from typing_extensions import TypedDict  # pydantic reads TypedDicts from typing_extensions on Python < 3.12

from spokenlm.tasks import (
    Answer,
    DialogActs,
    Entities,
    Entity,
    Sentiment,
    Summary,
    TaskRequest,
    TaskResult,
    Transcript,
    Translation,
)

TIMING_STAGES = ("load_audio", "encoder", "transcriber", "compress", "adapter", "llm")  # the order of timing_ms

# the record field that holds each task's result (asr and ner: the transcript in `text`)
RESULT_FIELD = {"asr": "text", "translate": "translation", "ner": "entities", "sentiment": "sentiment",
                "dialog-act": "dialog_acts", "qa": "answer", "summarize": "summary"}  # fmt: skip


class EntityRecord(TypedDict):
    tag: str
    text: str
    start_char: int  # [start_char, end_char) in the record's text
    end_char: int
    start_s: float | None  # in the audio, where the CTC alignment placed it
    end_s: float | None


class Record(TypedDict):
    """The wire form of a RunOutput (module docstring); every key present, null where it does not apply."""

    path: str | None
    task: Literal["asr", "translate", "ner", "sentiment", "dialog-act", "qa", "summarize"]
    question: str | None
    target_lang: str | None
    text: str | None
    ctc_text: str | None
    entities: list[EntityRecord] | None
    sentiment: str | None
    dialog_acts: list[str] | None
    translation: str | None
    answer: str | None
    answer_span_s: list[float] | None
    summary: str | None
    duration_s: float
    spans_s: list[list[float]]
    tokens_per_second: float
    timing_ms: dict[str, float]


RECORD_KEYS: tuple[str, ...] = tuple(Record.__annotations__)


class RecordError(ValueError):
    """A dict that is not a record (from_record), naming what is wrong with it."""


@dataclass(frozen=True)
class RunOutput:
    """One request on one recording: the typed result and what the pipeline knows around it."""

    request: TaskRequest
    result: TaskResult
    transcript: str | None  # the CTC transcript of the speech, where there is a CTC head
    duration_s: float  # of the recording
    spans_s: tuple[tuple[float, float], ...]  # per compressed speech token: seconds in the recording
    tokens_per_second: float  # compressed tokens per second of audio fed to the LLM
    timing_ms: dict[str, float]  # per stage (TIMING_STAGES), for the batch the request ran in
    path: str | None = None  # where the audio came from, when the caller knows (a file, an upload)

    def with_audio(self, *, path: str | None, load_ms: float | None = None) -> RunOutput:
        """This output with where its audio came from and, first in timing_ms, how long decoding
        that audio took (the caller decoded it: `SpeechLM.run` takes waveforms)."""
        timing = self.timing_ms if load_ms is None else {"load_audio": load_ms, **self.timing_ms}
        return dataclasses.replace(self, path=path, timing_ms=timing)

    def to_record(self) -> Record:
        """The record (module docstring): every field present, null where the task does not apply."""
        result, task = self.result, self.request.task
        record: Record = {
            "path": self.path,
            "task": task,  # type: ignore[typeddict-item]
            "question": self.request.question,
            "target_lang": self.request.target_lang,
            "text": self.transcript,
            "ctc_text": self.transcript,
            "entities": None,
            "sentiment": None,
            "dialog_acts": None,
            "translation": None,
            "answer": None,
            "answer_span_s": None,
            "summary": None,
            "duration_s": round(self.duration_s, 3),
            "spans_s": [[round(s, 3), round(e, 3)] for s, e in self.spans_s],
            "tokens_per_second": round(self.tokens_per_second, 3),
            "timing_ms": {k: round(v, 1) for k, v in self.timing_ms.items()},
        }
        if isinstance(result, Transcript):
            record["text"] = result.text
        elif isinstance(result, Entities):
            record["text"] = result.text
            record["entities"] = [
                {"tag": e.tag, "text": e.text, "start_char": e.start_char, "end_char": e.end_char,
                 "start_s": e.start_s, "end_s": e.end_s}
                for e in result.entities
            ]  # fmt: skip
        elif isinstance(result, Sentiment):
            record["sentiment"] = result.label
        elif isinstance(result, DialogActs):
            record["dialog_acts"] = list(result.acts)
        elif isinstance(result, Translation):
            record["translation"] = result.text
        elif isinstance(result, Answer):
            record["answer"] = result.text
            if result.start_s is not None and result.end_s is not None:
                record["answer_span_s"] = [result.start_s, result.end_s]
        elif isinstance(result, Summary):
            record["summary"] = result.text
        return record

    @classmethod
    def from_record(cls, record: dict) -> RunOutput:
        """The RunOutput a record describes (results lose only `raw`, which records do not carry).
        RecordError names missing or unknown keys and a task whose field is missing."""
        if not isinstance(record, dict):
            raise RecordError(f"a record is a JSON object, got {type(record).__name__}")
        missing = [k for k in RECORD_KEYS if k not in record]
        unknown = sorted(set(record) - set(RECORD_KEYS))
        if missing or unknown:
            raise RecordError(f"not a spokenlm record: missing keys {missing}, unknown keys {unknown}")
        request = TaskRequest(task=record["task"], question=record["question"], target_lang=record["target_lang"])
        try:
            request.validate()
        except ValueError as e:
            raise RecordError(f"record of an invalid request: {e}") from None
        field = RESULT_FIELD[request.task]
        if request.task != "sentiment" and record[field] is None:
            raise RecordError(f"a {request.task} record needs {field!r}, got null")
        return cls(
            request=request,
            result=_result(request, record),
            transcript=record["ctc_text"],
            duration_s=float(record["duration_s"]),
            spans_s=tuple((float(s), float(e)) for s, e in record["spans_s"]),
            tokens_per_second=float(record["tokens_per_second"]),
            timing_ms={str(k): float(v) for k, v in record["timing_ms"].items()},
            path=record["path"],
        )

    def describe(self) -> str:
        """One human-readable line: the result as `spokenlm run` prints it."""
        record = self.to_record()
        if self.request.task == "ner":
            tags = ", ".join(f"{e['tag']}: {e['text']}" for e in record["entities"] or ()) or "no entities"
            return f"{record['text']!r} [{tags}]"
        return repr(record[RESULT_FIELD[self.request.task]])


def _result(request: TaskRequest, record: dict) -> TaskResult:
    task = request.task
    if task == "asr":
        return Transcript(text=record["text"])
    if task == "translate":
        return Translation(text=record["translation"], target_lang=request.target_lang or "")
    if task == "ner":
        entities = tuple(
            Entity(tag=e["tag"], text=e["text"], start_char=int(e["start_char"]), end_char=int(e["end_char"]),
                   start_s=e["start_s"], end_s=e["end_s"])
            for e in record["entities"]
        )  # fmt: skip
        return Entities(text=record["text"] or "", entities=entities)
    if task == "sentiment":
        return Sentiment(label=record["sentiment"])
    if task == "dialog-act":
        return DialogActs(acts=tuple(record["dialog_acts"]))
    if task == "qa":
        start, end = record["answer_span_s"] or (None, None)
        return Answer(text=record["answer"], question=request.question or "", start_s=start, end_s=end)
    return Summary(text=record["summary"])
