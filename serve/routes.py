"""The Serve API's routes per task and the form a request takes: one table for the server
(serve/app.py) and its clients (ui/backends.py), and where the library's record sits in an answer.

Multipart bodies with a `file`:
    asr         POST /v1/audio/transcriptions   model, response_format=verbose_json
    translate   POST /v1/audio/translations     model, response_format=verbose_json, target_language
    ner | sentiment | dialog-act   POST /v1/understand   task
    summarize   POST /v1/summarize
    qa          POST /v1/qa                     question
The record (`spokenlm.output.Record`) is the answer itself on the spokenlm routes, inside
`{"object", "model", "batch_size"}`, and verbose_json's `spokenlm` object on the OpenAI routes.
Imports nothing heavy (no Ray, FastAPI or torch): a client imports it too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spokenlm.tasks import TaskRequest

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
UNDERSTAND = "/v1/understand"
SUMMARIZE = "/v1/summarize"
QA = "/v1/qa"

UNDERSTAND_TASKS = ("ner", "sentiment", "dialog-act")
TASK_ROUTES = {"asr": TRANSCRIPTIONS, "translate": TRANSLATIONS, **dict.fromkeys(UNDERSTAND_TASKS, UNDERSTAND),
               "summarize": SUMMARIZE, "qa": QA}  # fmt: skip
ENVELOPE_KEYS = ("object", "model", "batch_size")  # what the API adds around a record


def request_form(request: TaskRequest, *, model: str = "spokenlm") -> tuple[str, dict[str, str]]:
    """The path and form fields (besides `file`) that ask the API for `request`, record included."""
    task = request.task
    if task not in TASK_ROUTES:
        raise ValueError(f"unknown task {task!r}")
    if task == "asr":
        return TRANSCRIPTIONS, {"model": model, "response_format": "verbose_json"}
    if task == "translate":
        return TRANSLATIONS, {"model": model, "response_format": "verbose_json", "target_language": request.target_lang}
    if task in UNDERSTAND_TASKS:
        return UNDERSTAND, {"task": task}
    if task == "qa":
        return QA, {"question": request.question or ""}
    return SUMMARIZE, {}


def record_of(body: dict) -> dict:
    """The record in an API answer (verbose_json's `spokenlm`, else the answer), envelope removed."""
    inner = body.get("spokenlm", body) if isinstance(body, dict) else body
    if not isinstance(inner, dict):
        return inner
    return {k: v for k, v in inner.items() if k not in ENVELOPE_KEYS}
