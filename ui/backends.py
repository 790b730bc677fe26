"""Where the demo's answers come from: the library in this process, or the Serve API over HTTP.

Both backends take one recording (a file path, as gr.Audio hands it over) and one `TaskRequest`, and
return a `UIResult` whose `record` has the fields of `spokenlm.cli.output_record` (the JSON the Serve
API returns too), so the page renders either the same way. Neither imports gradio.

Serve API contract used by `ApiBackend` (serve/, issue 6 point 2), multipart bodies with a `file`:
    asr         POST /v1/audio/transcriptions   model, response_format=verbose_json
    translate   POST /v1/audio/translations     model, response_format=verbose_json, target_lang
    ner | sentiment | dialog-act   POST /v1/understand   task
    summarize   POST /v1/summarize
    qa          POST /v1/qa                     question
Errors come back as 4xx/5xx with an OpenAI-style body {"error": {"message", "type", "param"}}.
"""

from __future__ import annotations

import mimetypes
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from spokenlm.audio import SAMPLE_RATE, load_audio
from spokenlm.tasks import TaskRequest

# The keys of spokenlm.cli.output_record, each null where the task does not apply.
RECORD_KEYS = ("task", "text", "entities", "sentiment", "dialog_acts", "translation", "answer", "summary",
               "tokens_per_second", "timing_ms")  # fmt: skip


@dataclass(frozen=True)
class UIResult:
    """One answer, ready to render."""

    record: dict  # output_record fields: text, entities, sentiment, ... , timing_ms
    wave: np.ndarray  # (S,) float32 at SAMPLE_RATE, for the waveform plot
    spans_s: list[tuple[float, float]] | None  # one per compressed speech token; None if unknown
    ctc_text: str | None = None  # the compressor's CTC transcript, where it has a CTC head
    notes: list[str] = field(default_factory=list)  # shown above the results (untrained model, ...)


class Backend(Protocol):
    description: str  # one line for the page header

    def run(self, audio_path: str, request: TaskRequest, generation) -> UIResult: ...


class ApiError(RuntimeError):
    """The Serve API could not be reached or refused the request; the message is shown as is."""


# --- in process ----------------------------------------------------------------------------------


class LocalBackend:
    """Runs a bundle in this process, stage by stage, to keep the token spans for the plot."""

    def __init__(self, model_dir: str | os.PathLike):
        from spokenlm.model import load_bundle

        self.model = load_bundle(model_dir)
        self.model_dir = str(model_dir)
        trained = "" if self.model.info.trained else " (UNTRAINED: outputs are noise)"
        self.description = f"in-process model `{self.model_dir}`{trained}"

    def run(self, audio_path: str, request: TaskRequest, generation) -> UIResult:
        import torch

        from spokenlm.cli import output_record
        from spokenlm.model import decode_requests, run_outputs

        request.validate()  # before any work, as SpeechLM.run does
        t0 = time.perf_counter()
        wav = load_audio(audio_path)
        # The body of SpeechLM.run, kept open so that speech.spans_s reaches the plot.
        with torch.inference_mode():
            t1 = time.perf_counter()
            speech = self.model.encode_recordings([wav])
            t2 = time.perf_counter()
            projected = self.model.adapter(speech.embeddings)
            t3 = time.perf_counter()
            results = decode_requests(
                self.model.llm, [request], projected, speech.lengths, generation,
                char_times=speech.char_times, draft=self.model.draft,
            )  # fmt: skip
            t4 = time.perf_counter()
        timing = {"load_audio": t1 - t0, "encode_compress": t2 - t1, "adapter": t3 - t2, "llm": t4 - t3}
        output = run_outputs([request], results, speech, {k: v * 1e3 for k, v in timing.items()})[0]
        notes = [] if self.model.info.trained else [UNTRAINED_NOTE]
        return UIResult(
            record=output_record(Path(audio_path).name, output),
            wave=wav.numpy(),
            spans_s=list(speech.spans_s[0]),
            ctc_text=speech.transcripts[0] if speech.transcripts is not None else None,
            notes=notes,
        )


UNTRAINED_NOTE = (
    "This bundle is **untrained** (random weights): the outputs are noise. They show the whole graph "
    "running (audio → encoder → compressor → adapter → LLM → task parser), not speech understanding."
)


# --- over HTTP -----------------------------------------------------------------------------------


class ApiBackend:
    """Calls a running Serve API (`spokenlm serve`); decodes the audio here only to validate and plot it."""

    def __init__(self, url: str, *, timeout_s: float = 120.0, model: str = "spokenlm"):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--api expects an http:// or https:// URL, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.model = model
        self.description = f"Serve API at {self.url}"

    def route(self, request: TaskRequest) -> tuple[str, dict[str, str]]:
        """The path and form fields (besides `file`) for `request`."""
        task = request.task
        if task == "asr":
            return "/v1/audio/transcriptions", {"model": self.model, "response_format": "verbose_json"}
        if task == "translate":
            fields = {"model": self.model, "response_format": "verbose_json", "target_lang": request.target_lang}
            return "/v1/audio/translations", fields
        if task in ("ner", "sentiment", "dialog-act"):
            return "/v1/understand", {"task": task}
        if task == "summarize":
            return "/v1/summarize", {}
        if task == "qa":
            return "/v1/qa", {"question": request.question or ""}
        raise ValueError(f"unknown task {task!r}")

    def run(self, audio_path: str, request: TaskRequest, generation=None) -> UIResult:
        import httpx

        request.validate()
        t0 = time.perf_counter()
        wav = load_audio(audio_path)  # the same AudioError the server would give, without a round trip
        path, fields = self.route(request)
        name = Path(audio_path).name
        mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
        t1 = time.perf_counter()
        try:
            with open(audio_path, "rb") as f:
                response = httpx.post(
                    self.url + path, data=fields, files={"file": (name, f, mime)}, timeout=self.timeout_s
                )
        except httpx.HTTPError as e:
            raise ApiError(f"cannot reach the Serve API at {self.url}: {type(e).__name__}: {e}") from e
        t2 = time.perf_counter()
        if response.status_code >= 400:
            raise ApiError(f"the Serve API answered {response.status_code} to {path}: {_error_message(response)}")
        try:
            body = response.json()
        except ValueError as e:
            raise ApiError(f"the Serve API sent {path} a non-JSON answer: {response.text[:200]!r}") from e
        if not isinstance(body, dict):
            raise ApiError(f"the Serve API sent {path} a JSON {type(body).__name__}, expected an object")
        record = record_from_response(request, body)
        server_stages = {f"server/{stage}": ms for stage, ms in record["timing_ms"].items()}  # inside round_trip
        record["timing_ms"] = {
            "load_audio": round((t1 - t0) * 1e3, 1),
            **server_stages,
            "round_trip": round((t2 - t1) * 1e3, 1),
        }
        return UIResult(record=record, wave=wav.numpy(), spans_s=_spans_from_response(body))


def record_from_response(request: TaskRequest, body: dict) -> dict:
    """An output_record-shaped dict from an API answer; OpenAI transcription/translation bodies
    ({"text": ...}) put their text where output_record would."""
    record: dict = {key: body.get(key) for key in RECORD_KEYS}
    record["task"] = request.task
    if request.task == "translate" and record["translation"] is None:
        record["translation"], record["text"] = body.get("text"), None
    if not isinstance(record["timing_ms"], dict):
        record["timing_ms"] = {}
    return record


def _spans_from_response(body: dict) -> list[tuple[float, float]] | None:
    """Token spans if the API sends them (`spans_s`), else verbose_json segments, else None."""
    try:
        if isinstance(body.get("spans_s"), list):
            return [(float(s), float(e)) for s, e in body["spans_s"]]
        if isinstance(body.get("segments"), list):
            return [(float(seg["start"]), float(seg["end"])) for seg in body["segments"]]
    except (TypeError, ValueError, KeyError):
        return None  # malformed spans only cost the overlay, not the answer
    return None


def _error_message(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if body.get("detail"):  # FastAPI's default error body
            return str(body["detail"])
    return str(body)[:300]


def duration_s(wave: np.ndarray) -> float:
    return wave.shape[-1] / SAMPLE_RATE
