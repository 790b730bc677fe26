"""Response bodies of the HTTP API: the response models (the library's `Record`, wrapped), OpenAI-style
errors, the audio routes' response formats, SSE.

Plain functions from a record (`spokenlm.output.RunOutput.to_record`) to text or JSON; no Ray, no torch.
"""

from __future__ import annotations

import json
from typing import Any

from typing_extensions import TypedDict  # pydantic reads TypedDicts from typing_extensions on Python < 3.12

from spokenlm.output import RESULT_FIELD, Record

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
OPENAI_TASK = {"asr": "transcribe", "translate": "translate"}  # verbose_json's `task`


class BatchSize(TypedDict):
    encoder: int  # recordings in the encoder forward pass this request ran in
    llm: int  # requests in its LLM batch


class Result(Record):
    """The answer of /v1/understand, /v1/summarize and /v1/qa (and the `done` event of their streams)."""

    object: str  # "spokenlm.result"
    model: str
    batch_size: BatchSize


class RecordWithBatch(Record):
    batch_size: BatchSize


class Segment(TypedDict):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class Transcription(TypedDict):
    """OpenAI's json response format (text and srt / vtt come as plain text)."""

    text: str


class VerboseTranscription(TypedDict):
    """OpenAI's verbose_json, plus the whole record under `spokenlm`."""

    task: str
    language: str
    duration: float
    text: str
    segments: list[Segment]
    spokenlm: RecordWithBatch


class ErrorDetail(TypedDict):
    message: str
    type: str  # invalid_request_error | server_overloaded | timeout | server_error
    param: str | None  # the offending form field, when there is one
    code: str | None  # e.g. model_not_found


class ErrorBody(TypedDict):
    """Every error response, as OpenAI shapes them."""

    error: ErrorDetail


class APIError(Exception):
    """An error the client should see: HTTP status, OpenAI error type, message and offending param."""

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:  # fmt: skip
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def transcription_body(record: Record, response_format: str, *, batch_size: BatchSize) -> tuple[Any, str]:
    """(body, media type) of /v1/audio/transcriptions or /translations in `response_format`: the
    transcript or the translation, in English ("english") or the target language."""
    text = record[RESULT_FIELD[record["task"]]] or ""
    duration = record["duration_s"]
    if response_format == "json":
        return {"text": text}, "application/json"
    if response_format == "text":
        return text, "text/plain; charset=utf-8"
    if response_format == "verbose_json":
        body: VerboseTranscription = {
            "task": OPENAI_TASK[record["task"]],
            "language": record["target_lang"] or "english",
            "duration": duration,
            "text": text,
            "segments": [_segment(text, duration)],
            "spokenlm": {**record, "batch_size": batch_size},
        }
        return body, "application/json"
    if response_format == "srt":
        return f"1\n{_timestamp(0.0, ',')} --> {_timestamp(duration, ',')}\n{text}\n\n", "text/plain; charset=utf-8"
    if response_format == "vtt":
        return f"WEBVTT\n\n{_timestamp(0.0, '.')} --> {_timestamp(duration, '.')}\n{text}\n\n", "text/vtt; charset=utf-8"
    raise ValueError(f"unknown response_format {response_format!r}")


def _segment(text: str, duration: float) -> dict:
    # One segment for the whole recording: the LLM writes one text, not timed segments.
    return {"id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text, "tokens": [], "temperature": 0.0,
            "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0}  # fmt: skip


def _timestamp(seconds: float, decimal: str) -> str:
    ms = round(seconds * 1000)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def sse(event: dict | str) -> str:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n"
