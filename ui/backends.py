"""Where the demo's answers come from: the library in this process, or the Serve API over HTTP.

Both backends take one recording (a file path, as gr.Audio hands it over) and one `TaskRequest`, and
return a `UIResult` around the library's `RunOutput`: `SpeechLM.run` gives it in process; over HTTP
it is read back from the API's record (`RunOutput.from_record`, the routes and the record's place in
an answer from serve/routes.py), so the page renders either the same way, and an answer that is not
a record is an error here, not a blank field. Neither imports gradio.

Errors come back from the API as 4xx/5xx with an OpenAI-style body {"error": {"message", "type", "param"}}.
"""

from __future__ import annotations

import mimetypes
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from serve.routes import record_of, request_form
from spokenlm.audio import SAMPLE_RATE, load_audio
from spokenlm.output import RecordError, RunOutput
from spokenlm.tasks import TaskRequest


@dataclass(frozen=True)
class UIResult:
    """One answer, ready to render."""

    output: RunOutput  # the library's typed answer: its record is what the page shows
    wave: np.ndarray  # (S,) float32 at SAMPLE_RATE, for the waveform plot
    client_timing_ms: dict[str, float] = field(default_factory=dict)  # this process's own stages (API: decode, round trip)
    notes: list[str] = field(default_factory=list)  # shown above the results (untrained model, ...)

    @property
    def record(self) -> dict:
        return self.output.to_record()

    @property
    def timing_ms(self) -> dict[str, float]:
        """The stages to show: the model's own, or, over the API, the server's (`server/<stage>`,
        inside `round_trip`) between this process's decoding and the round trip."""
        if not self.client_timing_ms:
            return dict(self.output.timing_ms)
        server = {f"server/{stage}": ms for stage, ms in self.output.timing_ms.items()}
        client = dict(self.client_timing_ms)
        return {"load_audio": client.pop("load_audio", 0.0), **server, **client}


class Backend(Protocol):
    description: str  # one line for the page header

    def run(self, audio_path: str, request: TaskRequest, generation) -> UIResult: ...


class ApiError(RuntimeError):
    """The Serve API could not be reached or refused the request; the message is shown as is."""


# --- in process ----------------------------------------------------------------------------------


class LocalBackend:
    """Runs a bundle in this process (`SpeechLM.run`)."""

    def __init__(self, model_dir: str | os.PathLike):
        from spokenlm.model import load_bundle

        self.model = load_bundle(model_dir)
        self.model_dir = str(model_dir)
        trained = "" if self.model.info.trained else " (UNTRAINED: outputs are noise)"
        self.description = f"in-process model `{self.model_dir}`{trained}"

    def run(self, audio_path: str, request: TaskRequest, generation) -> UIResult:
        request.validate()  # before any work, as SpeechLM.run does
        t0 = time.perf_counter()
        wav = load_audio(audio_path)
        load_ms = (time.perf_counter() - t0) * 1e3
        (output,) = self.model.run([wav], [request], generation)
        notes = [] if self.model.info.trained else [UNTRAINED_NOTE]
        return UIResult(output=output.with_audio(path=Path(audio_path).name, load_ms=load_ms), wave=wav.numpy(),
                        notes=notes)  # fmt: skip


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

    def run(self, audio_path: str, request: TaskRequest, generation=None) -> UIResult:
        import httpx

        request.validate()
        t0 = time.perf_counter()
        wav = load_audio(audio_path)  # the same AudioError the server would give, without a round trip
        path, fields = request_form(request, model=self.model)
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
        try:
            output = RunOutput.from_record(record_of(body))
        except RecordError as e:
            raise ApiError(f"the Serve API's answer to {path} is not a spokenlm record: {e}") from e
        if output.request != request:
            raise ApiError(f"the Serve API answered {path} for {output.request}, not for the request sent, {request}")
        timing = {"load_audio": (t1 - t0) * 1e3, "round_trip": (t2 - t1) * 1e3}
        return UIResult(output=output, wave=wav.numpy(), client_timing_ms=timing)


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
