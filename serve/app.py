"""The spokenlm Ray Serve application: an HTTP ingress over the Encoder and LLM deployments.

    Ingress (FastAPI, validation, formats) ──> Encoder (@serve.batch) ──> LLM (@serve.batch)

Routes (FastAPI only here, at the edge; the models live in serve/deployments.py):
- OpenAI-compatible `POST /v1/audio/transcriptions` and `POST /v1/audio/translations` (multipart
  `file`, `model`, `language`, `prompt`, `response_format` json|text|verbose_json|srt|vtt,
  `temperature`, `stream`). `model` must be one /v1/models lists (`model_name` and its
  `model_aliases`, "whisper-1" by default, the name OpenAI clients send); another is a 404
  `model_not_found`. `prompt` is accepted and ignored (the model takes no text context).
  Translations go into `target_language` (es|fr|de, an extra form field; default es), not into
  English as OpenAI's do.
- `POST /v1/understand` (task ner|sentiment|dialog-act), `/v1/summarize`, `/v1/qa` (question):
  the library's record (`spokenlm.output.Record`, what `spokenlm run --json` prints), with entities'
  char spans in `text` and time spans in the audio, in `{"object", "model", "batch_size"}`;
  verbose_json carries the same record under `spokenlm` (serve/routes.py has the table).
- `stream=true` on any POST route: server-sent events, one per decoded piece of text, then the
  result, then `data: [DONE]` (transcriptions use OpenAI's `transcript.text.delta` / `.done` events).
  The stream is the library's `stream_speech`: the same tokens as the answer without it.
- `GET /healthz` (process up), `/readyz` (both model deployments answer and none is stuck),
  `/v1/models`, `/openapi.json`.

Errors are `{"error": {"message", "type", "param", "code"}}` (serve.formats.ErrorBody), never a
traceback, an actor id or a pid. Limits, each named in its refusal (SECURITY.md lists the defaults):
- the request body is read in full before a request counts as work (`_Limits`): streamed to a
  spooled file and refused with 413 the moment it passes `max_upload_mb` (with or without a
  Content-Length), cut off with 408 when it stalls for `upload_idle_timeout_s` or is still arriving
  after `upload_timeout_s` (503 + Retry-After when not a byte arrived: see _Body.read); at most
  `max_uploads` bodies arrive at once (then 503). A slow or stalled upload holds no slot of `max_inflight`.
- every text field is at most `max_text_chars` characters (400); recordings last at most
  `max_duration_s` (400), and recordings over LONG_AUDIO_S wait (at most `max_queue_wait_s`, then
  503 + Retry-After) until `max_long_audio_s` seconds of long audio are in the models, and run unbatched:
  they never hold up short ones. `max_inflight` requests at work, then 503 + Retry-After; a full
  model queue (`max_queued_requests`) is a 503 too.
- model work has a deadline (`request_timeout_s`; 504 past it) and stops when the client
  disconnects; a replica that dies mid-request gives a 503 + Retry-After, and Serve restarts it.

Run: `serve run serve/config.yaml` or `serve_main(model_dir)` (what `spokenlm serve` calls).
"""


import asyncio
import functools
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.deployments import LLM, LONG_AUDIO_S, STUCK_AFTER_S, Encoder, WorkStopped
from serve.formats import (
    RESPONSE_FORMATS,
    APIError,
    ErrorBody,
    Result,
    Transcription,
    VerboseTranscription,
    error_body,
    sse,
    transcription_body,
)
from serve.routes import QA, SUMMARIZE, TRANSCRIPTIONS, TRANSLATIONS, UNDERSTAND, UNDERSTAND_TASKS

if TYPE_CHECKING:
    from ray.serve import Application
    from ray.serve.handle import DeploymentHandle

REPO_ROOT = Path(__file__).resolve().parents[1]
ENGLISH = ("en", "eng", "english")
MULTIPART_SLACK = 64 * 1024  # form boundaries and part headers around the file, on top of max_upload_mb
BODY_CHUNK = 64 * 1024  # bytes per message when the buffered body is handed to the app
LARGE_UPLOAD_BYTES = 1 << 20  # ~30 s of 16-bit 16 kHz WAV: larger uploads decode one at a time
log = logging.getLogger("ray.serve")


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """Limits and names of one deployment of the API (serve/config.yaml `args`)."""

    model_dir: str
    """The spokenlm bundle every replica loads."""

    model_name: str = "spokenlm"
    """The id /v1/models lists first."""

    model_aliases: tuple[str, ...] = ("whisper-1",)
    """Other names the audio routes accept for the same model (OpenAI clients send "whisper-1")."""

    max_upload_mb: float = 25.0
    """Largest accepted upload (OpenAI's limit); more is a 413, counted as the body streams in."""

    upload_idle_timeout_s: float = 10.0
    """An upload that sends nothing for this long is cut off with a 408."""

    upload_timeout_s: float = 60.0
    """A request body still arriving after this long is cut off with a 408 (slow-drip uploads)."""

    max_uploads: int = 192
    """Request bodies being received at once; the next one gets 503 + Retry-After."""

    max_text_chars: int = 1000
    """Longest text form field (question, prompt, model, ...); more is a 400 naming the field."""

    max_duration_s: float = 600.0
    """Longest accepted recording after decoding; more is a 400 naming the duration."""

    max_long_audio_s: float = 1200.0
    """Seconds of long recordings (over LONG_AUDIO_S) at work at once, per ingress replica: admission by
    cost. A long recording that does not fit waits up to max_queue_wait_s; short ones never wait for it."""

    max_queue_wait_s: float = 10.0
    """Longest wait for admission (long audio); then 503 + Retry-After instead of a minutes-long wait."""

    max_inflight: int = 64
    """Requests one ingress replica works on at once (bodies complete); the next one gets 503 + Retry-After."""

    request_timeout_s: float = 60.0
    """Deadline of one request's model work (encoding and decoding); past it a 504, and the work stops."""

    max_new_tokens: int = 128
    """Generated tokens per request."""

    retry_after_s: int = 1
    """Retry-After sent with a 503."""

    default_target_language: str = "es"
    """Target of /v1/audio/translations when the client names none."""

    threads: int | None = None
    """Intra-op threads of each model replica (torch and CTranslate2). None: Ray's OMP_NUM_THREADS for the
    replica's num_cpus, which is 1 for the fractional CPUs of serve/config.yaml; a CPU-only node whose
    replicas take turns (a batch encodes while the last one decodes) can give each of them every core."""

    def validate(self) -> None:
        for name in ("max_upload_mb", "upload_idle_timeout_s", "upload_timeout_s", "max_duration_s",
                     "max_long_audio_s", "max_queue_wait_s", "request_timeout_s"):  # fmt: skip
            if not getattr(self, name) > 0:  # also rejects NaN
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_inflight < 1 or self.max_new_tokens < 1 or self.retry_after_s < 0:
            raise ValueError(
                f"max_inflight and max_new_tokens must be >= 1 and retry_after_s >= 0, "
                f"got {self.max_inflight}, {self.max_new_tokens}, {self.retry_after_s}"
            )
        if self.threads is not None and not (isinstance(self.threads, int) and self.threads >= 1):
            raise ValueError(f"threads must be an int >= 1 (or None), got {self.threads!r}")
        if self.max_uploads < 1 or self.max_text_chars < 1:
            raise ValueError(f"max_uploads and max_text_chars must be >= 1, got {self.max_uploads}, {self.max_text_chars}")
        if self.max_long_audio_s < self.max_duration_s:
            raise ValueError(
                f"max_long_audio_s ({self.max_long_audio_s}) must be >= max_duration_s ({self.max_duration_s}), "
                "else the longest accepted recording could never start"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.model_name, *self.model_aliases)

    @property
    def stuck_after_s(self) -> float:
        """Work running this long is stuck (it should have stopped at its deadline): the replica's health
        check fails, /readyz says not ready, and Serve replaces the replica."""
        return max(STUCK_AFTER_S, 2 * self.request_timeout_s)


api = FastAPI(
    title="spokenlm",
    description="Speech understanding: transcription, translation, NER, sentiment, dialog acts, QA, summaries.",
    version="0.1.0",
)


# --- errors: every failure leaves as {"error": {...}} ---------------------------------------------


@api.exception_handler(APIError)
async def _api_error(_: Request, e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
    first = e.errors()[0] if e.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "form")]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        message = f"missing required parameter '{param}'"
    else:
        message = f"invalid value for '{param}': {first.get('msg', 'invalid')} (got {_short(first.get('input'))})"
    return JSONResponse(error_body(message, param=param), status_code=400)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    message = {404: f"no route {request.method} {request.url.path}", 405: f"method {request.method} not allowed on {request.url.path}"}
    return JSONResponse(error_body(message.get(e.status_code, str(e.detail))), status_code=e.status_code)


@api.exception_handler(Exception)
async def _server_error(_: Request, e: Exception) -> JSONResponse:
    return JSONResponse(internal_error(e), status_code=500)


def internal_error(e: BaseException) -> dict:
    """A generic error body for a failure inside the server; the details go to the replica's log under an
    id the body gives, never to the client (no exception text, actor ids or pids)."""
    incident = uuid.uuid4().hex[:12]
    log.error("spokenlm: incident %s: %s", incident, e, exc_info=e)
    return error_body(f"internal server error (incident {incident}); the details are in the server log",
                      type="server_error")  # fmt: skip


class _Refusal(Exception):
    """A request refused while its body was arriving: status and message of the reply."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type, param
        self.headers = headers or {}


class _ClientLeft(Exception):
    """The client disconnected before its body was complete: nothing to answer."""


class _Body:
    """A request body, spooled (memory up to 1 MiB, then a temporary file), handed to the app afterwards."""

    def __init__(self):
        self.file = tempfile.SpooledTemporaryFile(max_size=1 << 20)
        self.size = 0

    async def read(self, receive, settings: ServeSettings) -> None:
        """Read the whole body from `receive`; raise _Refusal past a limit, _ClientLeft on disconnect."""
        limit = settings.max_upload_bytes + MULTIPART_SLACK
        started = time.monotonic()
        while True:
            left = settings.upload_timeout_s - (time.monotonic() - started)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, min(settings.upload_idle_timeout_s, left)))
            except TimeoutError:
                if self.size == 0:
                    # Not a byte: a client that sent its headers and stalled, or a request Serve sent again
                    # to a new replica after the one that had read its body died (Ray retries a request
                    # whose replica died before it reported taking it, and the proxy hands a body out only
                    # once). The ingress cannot tell the two apart, and only a retry helps either.
                    raise _Refusal(503, f"no request body arrived in {settings.upload_idle_timeout_s:g} s "
                                        f"(upload_idle_timeout_s): if it was sent, it was lost when the server "
                                        f"replica that first took the request stopped; send it again, retry "
                                        f"after {settings.retry_after_s} s", type="server_error",
                                   headers={"Retry-After": str(settings.retry_after_s)})  # fmt: skip
                if left <= settings.upload_idle_timeout_s:
                    raise _Refusal(408, f"upload too slow: {self.size} bytes in {settings.upload_timeout_s:g} s "
                                        f"(upload_timeout_s), the body is still incomplete") from None  # fmt: skip
                raise _Refusal(408, f"upload stalled: no data for {settings.upload_idle_timeout_s:g} s "
                                    f"(upload_idle_timeout_s) after {self.size} bytes") from None  # fmt: skip
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > limit:  # refused now, whatever Content-Length said (or did not say)
                raise _Refusal(413, f"upload too large: more than {settings.max_upload_bytes} bytes received, "
                                    f"maximum is {settings.max_upload_bytes} bytes ({settings.max_upload_mb:g} MB)",
                               param="file")  # fmt: skip
            self.file.write(chunk)
            if not message.get("more_body", False):
                return

    def receive(self, receive):
        """An ASGI receive that replays the body, then waits on the client's (for http.disconnect)."""
        self.file.seek(0)
        sent = 0

        async def replay() -> dict:
            nonlocal sent
            if sent >= self.size and sent > 0:
                return await receive()
            chunk = self.file.read(BODY_CHUNK)
            sent += max(len(chunk), 1)  # an empty body is one empty message
            return {"type": "http.request", "body": chunk, "more_body": sent < self.size}

        return replay

    def close(self) -> None:
        self.file.close()


class _Limits:
    """Admission at the ingress (see the module docstring): a POST counts against max_uploads while its
    body arrives, and against max_inflight only once the body is complete and within the limits.

    A plain ASGI middleware: `@app.middleware("http")` (Starlette's BaseHTTPMiddleware) would run every
    request through extra tasks and memory streams, a per-request cost the ingress pays at full load."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        state = scope["app"].state if scope["type"] == "http" else None
        settings: ServeSettings | None = getattr(state, "settings", None)
        if settings is None or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if length.isdigit() and int(length) > settings.max_upload_bytes + MULTIPART_SLACK:
            body = error_body(_too_large(int(length), settings), param="file")
            return await JSONResponse(body, status_code=413)(scope, receive, send)
        if state.uploads >= settings.max_uploads:
            return await _overloaded(settings, f"{state.uploads} uploads in progress")(scope, receive, send)
        body = _Body()
        try:
            state.uploads += 1
            try:
                await body.read(receive, settings)
            finally:
                state.uploads -= 1
            if state.inflight >= settings.max_inflight:
                return await _overloaded(settings, f"{state.inflight} requests in progress")(scope, receive, send)
            state.inflight += 1
            try:
                await self.app(scope, body.receive(receive), send)
            finally:
                state.inflight -= 1
        except _Refusal as e:
            reply = JSONResponse(error_body(e.message, type=e.type, param=e.param), status_code=e.status,
                                 headers={"Connection": "close", **e.headers})  # fmt: skip
            await reply(scope, receive, send)
        except _ClientLeft:
            pass
        finally:
            body.close()


api.add_middleware(_Limits)


def _overloaded(settings: ServeSettings, why: str) -> JSONResponse:
    return JSONResponse(_overload_error(settings, why).body(), status_code=503,
                        headers={"Retry-After": str(settings.retry_after_s)})  # fmt: skip


def _overload_error(settings: ServeSettings, why: str) -> APIError:
    return APIError(503, f"server overloaded ({why}); retry after {settings.retry_after_s} s",
                    type="server_overloaded", headers={"Retry-After": str(settings.retry_after_s)})  # fmt: skip


def _too_large(size: int, settings: ServeSettings) -> str:
    return f"upload too large: {size} bytes, maximum is {settings.max_upload_bytes} bytes ({settings.max_upload_mb:g} MB)"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _request(task: str, *, question: str | None = None, target_lang: str | None = None, param: str | None = None):
    from spokenlm.tasks import TaskRequest

    request = TaskRequest(task=task, question=question, target_lang=target_lang)
    try:
        request.validate()
    except ValueError as e:
        raise APIError(400, str(e), param=param) from None
    return request


@dataclass(frozen=True)
class _Upload:
    """An uploaded recording, decoded: what the model deployments get, and what the record says of it."""

    wav: Any  # (S,) float32 mono at 16 kHz
    name: str | None  # the upload's file name: the record's `path`
    load_ms: float  # decoding it (the record's timing_ms["load_audio"])

    @property
    def duration_s(self) -> float:
        from spokenlm.audio import SAMPLE_RATE

        return self.wav.shape[-1] / SAMPLE_RATE

    @property
    def long(self) -> bool:
        return self.duration_s > LONG_AUDIO_S

    def named(self, output):
        return output.with_audio(path=self.name, load_ms=self.load_ms)


class _AudioBudget:
    """Seconds of long audio at work at once (admission by cost): `admit` waits for room, up to a timeout."""

    def __init__(self, capacity_s: float):
        self.capacity_s, self.used_s = capacity_s, 0.0
        self._room: asyncio.Condition | None = None  # made on first use, in the replica's event loop

    async def admit(self, seconds: float, timeout_s: float) -> bool:
        self._room = self._room or asyncio.Condition()
        async with self._room:
            try:
                await asyncio.wait_for(self._room.wait_for(lambda: self.used_s + seconds <= self.capacity_s), timeout_s)
            except TimeoutError:
                return False
            self.used_s += seconds
            return True

    async def release(self, seconds: float) -> None:
        async with self._room:
            self.used_s -= seconds
            self._room.notify_all()


# Responses every POST route may give besides its 200; FastAPI's 422 is replaced (see _openapi).
_ERRORS = {
    400: "invalid request: a missing or bad field, or audio that cannot be used",
    404: "unknown model (code model_not_found)",
    408: "the upload stalled or was too slow",
    413: "upload too large",
    500: "internal server error (generic message; details in the server log)",
    503: "overloaded or a model replica unavailable: retry after Retry-After seconds",
    504: "the model work passed its deadline (request_timeout_s) and was stopped",
}
_POST_RESPONSES: dict = {code: {"model": ErrorBody, "description": text} for code, text in _ERRORS.items()}
_TEXT_200 = {"text/plain": {"schema": {"type": "string"}}, "text/event-stream": {"schema": {"type": "string"}}}
_AUDIO_RESPONSES: dict = {**_POST_RESPONSES, 200: {"content": _TEXT_200}}
_TASK_RESPONSES: dict = {**_POST_RESPONSES, 200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}}}


async def _awaited(response):
    return await response


def _openapi() -> dict:
    """FastAPI's schema with the 400 our validation handler answers in place of its 422."""
    from fastapi.openapi.utils import get_openapi

    if api.openapi_schema is None:
        schema = get_openapi(title=api.title, version=api.version, description=api.description, routes=api.routes)
        for path in schema["paths"].values():
            for operation in path.values():
                operation["responses"].pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        api.openapi_schema = schema
    return api.openapi_schema


# Serve pickles the ingress class, and with it `api`, when @serve.deployment runs: whatever the class
# uses must exist before it.
api.openapi = _openapi


# --- the ingress -----------------------------------------------------------------------------------


@serve.deployment(
    max_ongoing_requests=320,  # above max_uploads + max_inflight, so overload is answered by _Limits with a 503
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(api)
class Ingress:
    def __init__(self, encoder: "DeploymentHandle", llm: "DeploymentHandle", settings: dict):
        self.settings = ServeSettings(**settings)
        self.settings.validate()
        self.encoder, self.llm = encoder, llm
        api.state.settings, api.state.inflight, api.state.uploads = self.settings, 0, 0
        self.long_audio = _AudioBudget(self.settings.max_long_audio_s)
        self.large_decodes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="large-decode")
        self.started = int(time.time())

    # ---- probes and metadata

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {"model": ErrorBody, "description": "a model deployment is down or stuck"}})
    async def readyz(self) -> JSONResponse:
        try:
            reasons = await asyncio.wait_for(asyncio.gather(self.encoder.ready.remote(), self.llm.ready.remote()), 5)
        except Exception as e:  # noqa: BLE001 — any failure means not ready
            return JSONResponse(error_body(f"not ready: {type(e).__name__}", type="server_error"), status_code=503)
        for name, reason in zip(("encoder", "LLM"), reasons):
            if reason is not None:
                return JSONResponse(error_body(f"not ready: the {name} replica: {reason}", type="server_error"), 503)
        return JSONResponse({"status": "ready", "model": self.settings.model_name})

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [self._model_card(name) for name in self.settings.model_names]}

    @api.get("/v1/models/{model}", responses={404: {"model": ErrorBody, "description": "unknown model"}})
    async def model(self, model: str) -> dict:
        self._check_model(model)
        return self._model_card(model)

    def _model_card(self, name: str) -> dict:
        return {"id": name, "object": "model", "created": self.started, "owned_by": "spokenlm"}

    def _check_model(self, model: str) -> None:
        if model not in self.settings.model_names:
            raise APIError(404, f"model {_short(model)} not found; this server serves {', '.join(map(repr, self.settings.model_names))}",
                           param="model", code="model_not_found")  # fmt: skip

    # ---- OpenAI audio routes

    @api.post(TRANSCRIPTIONS, response_model=Transcription | VerboseTranscription, responses=_AUDIO_RESPONSES)
    async def transcriptions(
        self,
        file: UploadFile = File(..., description="audio: WAV, FLAC, OGG, MP3, M4A or WebM"),
        model: str = Form(..., description="a model /v1/models lists"),
        language: str | None = Form(None, description="ISO-639-1 code of the speech; only 'en' is supported"),
        prompt: str | None = Form(None, description="accepted and ignored"),
        response_format: str = Form("json"),
        temperature: float = Form(0.0),
        stream: bool = Form(False),
    ) -> Response:
        self._texts(model=model, language=language, prompt=prompt, response_format=response_format)
        self._check_model(model)
        if language and language.strip().lower() not in ENGLISH:
            raise APIError(400, f"unsupported language {language!r}: this model transcribes English ('en')", param="language")
        return await self._audio_route(file, response_format, temperature, stream, _request("asr"))

    @api.post(TRANSLATIONS, response_model=Transcription | VerboseTranscription, responses=_AUDIO_RESPONSES)
    async def translations(
        self,
        file: UploadFile = File(...),
        model: str = Form(..., description="a model /v1/models lists"),
        prompt: str | None = Form(None, description="accepted and ignored"),
        response_format: str = Form("json"),
        temperature: float = Form(0.0),
        target_language: str | None = Form(None, description="es | fr | de (default es)"),
        stream: bool = Form(False),
    ) -> Response:
        self._texts(model=model, prompt=prompt, response_format=response_format, target_language=target_language)
        self._check_model(model)
        lang = target_language or self.settings.default_target_language
        request = _request("translate", target_lang=lang, param="target_language")
        return await self._audio_route(file, response_format, temperature, stream, request)

    async def _audio_route(self, file, response_format, temperature, stream, request) -> Response:
        if response_format not in RESPONSE_FORMATS:
            raise APIError(
                400, f"unsupported response_format {response_format!r}; expected one of {', '.join(RESPONSE_FORMATS)}",
                param="response_format",
            )  # fmt: skip
        generation = self._generation(temperature)
        audio = await self._audio(file)
        if stream:
            return await self._stream(audio, request, generation, openai=True)
        output, batch_size = await self._run(audio, request, generation)
        body, media_type = transcription_body(output.to_record(), response_format, batch_size=batch_size)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    # ---- spoken language understanding

    @api.post(UNDERSTAND, response_model=Result, responses=_TASK_RESPONSES)
    async def understand(
        self,
        file: UploadFile = File(...),
        task: str = Form(..., description="ner | sentiment | dialog-act"),
        temperature: float = Form(0.0),
        stream: bool = Form(False),
    ) -> Response:
        self._texts(task=task)
        if task not in UNDERSTAND_TASKS:
            raise APIError(400, f"unsupported task {task!r}; expected one of {', '.join(UNDERSTAND_TASKS)}", param="task")
        return await self._task_route(file, _request(task), temperature, stream)

    @api.post(SUMMARIZE, response_model=Result, responses=_TASK_RESPONSES)
    async def summarize(
        self, file: UploadFile = File(...), temperature: float = Form(0.0), stream: bool = Form(False)
    ) -> Response:
        return await self._task_route(file, _request("summarize"), temperature, stream)

    @api.post(QA, response_model=Result, responses=_TASK_RESPONSES)
    async def qa(
        self,
        file: UploadFile = File(...),
        question: str = Form(..., description="at most max_text_chars characters"),
        temperature: float = Form(0.0),
        stream: bool = Form(False),
    ) -> Response:
        self._texts(question=question)
        return await self._task_route(file, _request("qa", question=question, param="question"), temperature, stream)

    async def _task_route(self, file, request, temperature, stream) -> Response:
        generation = self._generation(temperature)
        audio = await self._audio(file)
        if stream:
            return await self._stream(audio, request, generation)
        output, batch_size = await self._run(audio, request, generation)
        return JSONResponse(self._result(output, batch_size))

    def _result(self, output, batch_size: dict) -> Result:
        envelope = {"object": "spokenlm.result", "model": self.settings.model_name, "batch_size": batch_size}
        return envelope | output.to_record()

    # ---- shared steps

    def _texts(self, **fields: str | None) -> None:
        """Every text field within max_text_chars, checked before any audio is decoded."""
        for name, value in fields.items():
            if value is not None and len(value) > self.settings.max_text_chars:
                raise APIError(400, f"'{name}' too long: {len(value)} characters, maximum is {self.settings.max_text_chars}",
                               param=name)  # fmt: skip

    def _generation(self, temperature: float):
        from spokenlm.lm import GenerationConfig

        if not 0.0 <= temperature <= 1.0:  # also rejects NaN
            raise APIError(400, f"temperature must be within [0, 1], got {temperature}", param="temperature")
        if temperature == 0.0:
            return GenerationConfig(strategy="greedy", max_new_tokens=self.settings.max_new_tokens)
        return GenerationConfig(strategy="sample", temperature=temperature, max_new_tokens=self.settings.max_new_tokens)

    async def _audio(self, file: UploadFile) -> "_Upload":
        from spokenlm.audio import AudioError, load_audio

        if not isinstance(file, StarletteUploadFile):  # a plain form field named "file"
            raise APIError(400, "'file' must be an uploaded file (multipart/form-data)", param="file")
        data = await file.read(self.settings.max_upload_bytes + 1)
        if len(data) > self.settings.max_upload_bytes:
            raise APIError(413, _too_large(len(data), self.settings), param="file")
        try:
            t0 = time.perf_counter()
            # Large uploads (long recordings) decode one at a time, beside the small ones: six 10-min files
            # must not take every core from a 3-s clip's decode.
            pool = self.large_decodes if len(data) > LARGE_UPLOAD_BYTES else None
            decode = functools.partial(load_audio, data, max_duration_s=self.settings.max_duration_s)
            wav = await asyncio.get_running_loop().run_in_executor(pool, decode)
        except AudioError as e:
            raise APIError(400, f"could not use file {_short(file.filename)}: {e}", param="file") from None
        return _Upload(wav=wav, name=file.filename, load_ms=(time.perf_counter() - t0) * 1e3)

    async def _admit(self, audio: "_Upload") -> None:
        """Long recordings wait for room in the long-audio budget, at most max_queue_wait_s."""
        if audio.long and not await self.long_audio.admit(audio.duration_s, self.settings.max_queue_wait_s):
            raise _overload_error(
                self.settings, f"{self.long_audio.used_s:.0f} of {self.settings.max_long_audio_s:g} s of long audio "
                f"at work; waited {self.settings.max_queue_wait_s:g} s",
            )  # fmt: skip

    async def _run(self, audio: "_Upload", request, generation):
        """(RunOutput, batch sizes) of `request` on the uploaded audio, within request_timeout_s."""
        await self._admit(audio)
        timeout = self.settings.request_timeout_s
        deadline = time.time() + timeout
        encode, decode = (self.encoder.encode_long, self.llm.decode_long) if audio.long else (self.encoder.encode, self.llm.decode)
        encoded = encode.remote(audio.wav, deadline)
        answer = decode.remote(encoded, request, generation, deadline)
        try:
            output, batch_size = await asyncio.wait_for(_awaited(answer), timeout)
            return audio.named(output), batch_size
        except TimeoutError:
            raise APIError(504, f"request timed out: the model work took longer than {timeout:g} s "
                                "(request_timeout_s) and was stopped", type="timeout") from None  # fmt: skip
        except BaseException as e:
            raise self._model_error(e) from None
        finally:  # stops the work when the client left (CancelledError) or the deadline passed
            encoded.cancel()
            answer.cancel()
            if audio.long:
                await self.long_audio.release(audio.duration_s)

    def _model_error(self, e: BaseException) -> BaseException:
        """The client's view of a failed model call: overload and dead replicas are a 503 to retry, a stopped
        call a 504; the rest goes to the 500 handler. A cancelled call stays cancelled."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        if isinstance(e, (asyncio.CancelledError, APIError)):
            return e
        if isinstance(e, BackPressureError):
            return _overload_error(self.settings, "model queue full")
        cause = e.cause if isinstance(e, RayTaskError) else e
        if isinstance(cause, WorkStopped):
            return APIError(504, f"request timed out: the model work passed its deadline "
                                 f"({self.settings.request_timeout_s:g} s, request_timeout_s) and was stopped",
                            type="timeout")  # fmt: skip
        if isinstance(cause, (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)):
            log.warning("spokenlm: a model replica failed during a request: %s", e)
            return APIError(503, f"a model replica stopped while working on this request; it restarts by itself, "
                                 f"retry after {self.settings.retry_after_s} s", type="server_error",
                            headers={"Retry-After": str(self.settings.retry_after_s)})  # fmt: skip
        return e

    async def _stream(self, audio: "_Upload", request, generation, *, openai: bool = False) -> StreamingResponse:
        from spokenlm.output import RESULT_FIELD

        await self._admit(audio)
        deadline = time.time() + self.settings.request_timeout_s
        encode = self.encoder.encode_long if audio.long else self.encoder.encode
        encoded = encode.remote(audio.wav, deadline)
        chunks = self.llm.options(stream=True).stream.remote(encoded, request, generation, deadline)

        async def events():
            try:
                async for chunk in chunks:
                    if isinstance(chunk, str):
                        yield sse({"type": "transcript.text.delta" if openai else "delta", "delta": chunk})
                        continue
                    output, batch_size = chunk
                    result = self._result(audio.named(output), batch_size)
                    if openai:
                        yield sse({"type": "transcript.text.done", "text": result[RESULT_FIELD[request.task]] or ""})
                    else:
                        yield sse({"type": "done"} | result)
            except Exception as e:  # noqa: BLE001 — headers are sent: report in the stream
                error = self._model_error(e)
                body = error.body() if isinstance(error, APIError) else internal_error(error)
                yield sse({"type": "error", "error": body["error"]})
            finally:  # the client left, or the stream ended: stop the work either way
                encoded.cancel()
                chunks.cancel()
                if audio.long:
                    await self.long_audio.release(audio.duration_s)
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# --- building and running ---------------------------------------------------------------------------


def resolve_model_dir(model_dir: str | None) -> str:
    """The bundle to serve: the argument, else $SPOKENLM_MODEL, else the library's default bundle
    (models/default, else the best trained part, else an untrained demo bundle: its outputs are noise;
    it shows the service working)."""
    from spokenlm.demo import default_bundle, default_bundle_note

    model_dir = model_dir or os.environ.get("SPOKENLM_MODEL")
    if model_dir:
        return str(Path(model_dir).resolve())

    def say(path: Path) -> None:
        print(f"spokenlm serve: no model given; building an UNTRAINED demo bundle in {path}", file=sys.stderr)

    path = default_bundle(on_build=say)
    note = default_bundle_note(path)
    if note is not None:
        print(f"spokenlm serve: no model given; {note}", file=sys.stderr)
    return str(path)


def build_app(args: dict) -> "Application":
    """The application `serve run serve/config.yaml` builds (Serve builders take one dict): `args` are
    ServeSettings fields, model_dir optional (see resolve_model_dir)."""
    return bind_app(args)


def bind_app(args: dict | None = None, *, gpus: bool = False, batching: dict | None = None) -> "Application":
    """`Ingress.bind(Encoder.bind(...), LLM.bind(...))` for ServeSettings `args`. `gpus` reserves GPU
    fractions for the model deployments; `batching` ({"max_batch_size", "batch_wait_timeout_s"})
    replaces their user_config."""
    from spokenlm.model import read_bundle_meta

    args = dict(args or {})
    known = {f.name for f in fields(ServeSettings)}
    if unknown := set(args) - known:
        raise ValueError(f"unknown serve args {sorted(unknown)}; expected some of {sorted(known)}")
    settings = ServeSettings(**(args | {"model_dir": resolve_model_dir(args.get("model_dir"))}))
    settings.validate()
    read_bundle_meta(settings.model_dir)  # fail here, not in every replica
    encoder, llm = Encoder, LLM
    if gpus:  # serve/config.yaml sets these for `serve run`; serve_main when the machine has a GPU
        encoder = Encoder.options(ray_actor_options={"num_cpus": 0.25, "num_gpus": 0.25})
        llm = LLM.options(ray_actor_options={"num_cpus": 0.25, "num_gpus": 0.5})
    if batching is not None:
        encoder, llm = encoder.options(user_config=batching), llm.options(user_config=batching)
    stuck, threads = settings.stuck_after_s, settings.threads
    return Ingress.bind(encoder.bind(settings.model_dir, stuck, threads), llm.bind(settings.model_dir, stuck, threads),
                        asdict(settings))  # fmt: skip


# Ray Serve's throughput mode (Ray >= 2.56): user code and the router on the replica's own event loop
# (no thread hop per request), gRPC between replicas, buffered request logs, GC frozen after startup.
# Direct ingress stays off: the HTTP proxy keeps serving every app under its route prefix on one port.
# The proxy callback gives the proxy's own errors (a dead ingress) our JSON shape (serve/edge.py).
# Set for the Ray that start_ray starts; a cluster sets them itself (k8s/rayservice.yaml does).
SERVE_THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0",
                        "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve.edge:proxy_middlewares"}  # fmt: skip


def start_ray(num_cpus: int | None = None, *, log_to_driver: bool = True) -> bool:
    """Join $RAY_ADDRESS, else start a private local Ray whose workers can import serve/ (the repo
    root is put on their PYTHONPATH) and run Serve in its throughput mode (SERVE_THROUGHPUT_ENV, unless
    the environment sets those variables). True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init()
        return True
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {k: os.environ.get(k, v) for k, v in SERVE_THROUGHPUT_ENV.items()}
    saved = dict(os.environ)
    os.environ.update(env)  # the raylet starts now and passes its environment on to every worker
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=log_to_driver,
            runtime_env={"env_vars": {"PYTHONPATH": path, **env}},
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return True


def serve_main(model_dir: str | None, host: str = "127.0.0.1", port: int = 8000, **settings: Any) -> None:
    """`spokenlm serve`: start Ray, deploy the app on host:port (loopback by default), block until ^C or
    SIGTERM; either way Serve and the Ray it started (raylet, GCS, dashboard and runtime-env agents)
    are shut down before it returns."""
    import ray

    from serve.edge import MAX_UPLOAD_ENV

    previous = signal.signal(signal.SIGTERM, _interrupt)  # a plain SIGTERM would skip the finally below
    started = False
    max_upload_mb = settings.get("max_upload_mb", ServeSettings.max_upload_mb)
    os.environ.setdefault(MAX_UPLOAD_ENV, str(max_upload_mb))  # the proxy's limit (serve/edge.py)
    try:
        started = start_ray()
        signal.signal(signal.SIGTERM, _interrupt)  # again: connecting to Ray installs its own (it aborts the process)
        serve.start(http_options={"host": host, "port": port})
        gpus = ray.cluster_resources().get("GPU", 0) >= 1
        serve.run(bind_app({"model_dir": model_dir, **settings}, gpus=gpus), name="spokenlm", route_prefix="/")
        print(f"spokenlm serve: listening on http://{host}:{port} (OpenAPI at /openapi.json); ^C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("spokenlm serve: stopping", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the shutdown short
        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            if started:
                ray.shutdown()
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
