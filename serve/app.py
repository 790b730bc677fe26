"""The spokenlm Ray Serve application: an HTTP ingress over the Encoder and LLM deployments.

    Ingress (FastAPI, validation, formats) ──> Encoder (@serve.batch) ──> LLM (@serve.batch)

Routes (FastAPI only here, at the edge; the models live in serve/deployments.py):
- OpenAI-compatible `POST /v1/audio/transcriptions` and `POST /v1/audio/translations` (multipart
  `file`, `model`, `language`, `prompt`, `response_format` json|text|verbose_json|srt|vtt,
  `temperature`, `stream`). Any `model` name is accepted (clients send "whisper-1"); `prompt` is
  accepted and ignored (the model takes no text context). Translations go into
  `target_language` (es|fr|de, an extra form field; default es), not into English as OpenAI's do.
- `POST /v1/understand` (task ner|sentiment|dialog-act), `/v1/summarize`, `/v1/qa` (question):
  the library's record (`spokenlm.output.Record`, what `spokenlm run --json` prints), with entities'
  char spans in `text` and time spans in the audio, in `{"object", "model", "batch_size"}`;
  verbose_json carries the same record under `spokenlm` (serve/routes.py has the table).
- `stream=true` on any POST route: server-sent events, one per decoded piece of text, then the
  result, then `data: [DONE]` (transcriptions use OpenAI's `transcript.text.delta` / `.done` events).
  The stream is the library's `stream_speech`: the same tokens as the answer without it.
- `GET /healthz` (process up), `/readyz` (both model deployments answer), `/v1/models`, `/openapi.json`.

Errors are `{"error": {"message", "type", "param", "code"}}` with a 4xx for anything the client
sent wrong, 413 over the upload limit, and 503 + Retry-After once `max_inflight` requests are in
the ingress or a model deployment's queue is full (`max_queued_requests`): overload is refused
early instead of queueing without bound.

Run: `serve run serve/config.yaml` or `serve_main(model_dir)` (what `spokenlm serve` calls).
"""


import asyncio
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from ray import serve
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.deployments import LLM, Encoder
from serve.formats import (
    RESPONSE_FORMATS,
    APIError,
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


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """Limits and names of one deployment of the API (serve/config.yaml `args`)."""

    model_dir: str
    """The spokenlm bundle every replica loads."""

    model_name: str = "spokenlm"
    """The id /v1/models lists."""

    max_upload_mb: float = 25.0
    """Largest accepted upload (OpenAI's limit); more is a 413."""

    max_duration_s: float = 600.0
    """Longest accepted recording after decoding; more is a 400 naming the duration."""

    max_inflight: int = 64
    """Requests one ingress replica works on at once; the next one gets 503 + Retry-After."""

    max_new_tokens: int = 128
    """Generated tokens per request."""

    retry_after_s: int = 1
    """Retry-After sent with a 503."""

    default_target_language: str = "es"
    """Target of /v1/audio/translations when the client names none."""

    def validate(self) -> None:
        if not self.max_upload_mb > 0:
            raise ValueError(f"max_upload_mb must be > 0, got {self.max_upload_mb}")
        if not self.max_duration_s > 0:
            raise ValueError(f"max_duration_s must be > 0, got {self.max_duration_s}")
        if self.max_inflight < 1 or self.max_new_tokens < 1 or self.retry_after_s < 0:
            raise ValueError(
                f"max_inflight and max_new_tokens must be >= 1 and retry_after_s >= 0, "
                f"got {self.max_inflight}, {self.max_new_tokens}, {self.retry_after_s}"
            )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


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
    return JSONResponse(error_body(f"internal error: {type(e).__name__}: {e}", type="server_error"), status_code=500)


class _Limits:
    """Refuse oversize uploads before reading them, and new work beyond max_inflight (503).

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
        if length.isdigit() and int(length) > settings.max_upload_bytes + 64 * 1024:
            body = error_body(_too_large(int(length), settings), param="file")
            return await JSONResponse(body, status_code=413)(scope, receive, send)
        if state.inflight >= settings.max_inflight:
            return await _overloaded(settings, f"{state.inflight} requests in progress")(scope, receive, send)
        state.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            state.inflight -= 1


api.add_middleware(_Limits)


def _overloaded(settings: ServeSettings, why: str) -> JSONResponse:
    message = f"server overloaded ({why}); retry after {settings.retry_after_s} s"
    return JSONResponse(
        error_body(message, type="server_overloaded"),
        status_code=503,
        headers={"Retry-After": str(settings.retry_after_s)},
    )


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

    def named(self, output):
        return output.with_audio(path=self.name, load_ms=self.load_ms)


# --- the ingress -----------------------------------------------------------------------------------


@serve.deployment(
    max_ongoing_requests=256,  # above max_inflight, so overload is answered by _limits with a 503
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(api)
class Ingress:
    def __init__(self, encoder: "DeploymentHandle", llm: "DeploymentHandle", settings: dict):
        self.settings = ServeSettings(**settings)
        self.settings.validate()
        self.encoder, self.llm = encoder, llm
        api.state.settings, api.state.inflight = self.settings, 0
        self.started = int(time.time())

    # ---- probes and metadata

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> JSONResponse:
        try:
            await asyncio.wait_for(asyncio.gather(self.encoder.ready.remote(), self.llm.ready.remote()), timeout=5)
        except Exception as e:  # noqa: BLE001 — any failure means not ready
            return JSONResponse(error_body(f"not ready: {type(e).__name__}", type="server_error"), status_code=503)
        return JSONResponse({"status": "ready", "model": self.settings.model_name})

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [self._model_card()]}

    @api.get("/v1/models/{model}")
    async def model(self, model: str) -> dict:
        if model != self.settings.model_name:
            raise APIError(404, f"model {model!r} not found; this server serves {self.settings.model_name!r}", param="model")
        return self._model_card()

    def _model_card(self) -> dict:
        return {"id": self.settings.model_name, "object": "model", "created": self.started, "owned_by": "spokenlm"}

    # ---- OpenAI audio routes

    @api.post(TRANSCRIPTIONS, response_model=Transcription | VerboseTranscription)
    async def transcriptions(
        self,
        file: UploadFile = File(..., description="audio: WAV, FLAC, OGG, MP3, M4A or WebM"),
        model: str = Form(...),
        language: str | None = Form(None, description="ISO-639-1 code of the speech; only 'en' is supported"),
        prompt: str | None = Form(None, description="accepted and ignored"),
        response_format: str = Form("json"),
        temperature: float = Form(0.0),
        stream: bool = Form(False),
    ) -> Response:
        if language and language.strip().lower() not in ENGLISH:
            raise APIError(400, f"unsupported language {language!r}: this model transcribes English ('en')", param="language")
        return await self._audio_route(file, response_format, temperature, stream, _request("asr"))

    @api.post(TRANSLATIONS, response_model=Transcription | VerboseTranscription)
    async def translations(
        self,
        file: UploadFile = File(...),
        model: str = Form(...),
        prompt: str | None = Form(None, description="accepted and ignored"),
        response_format: str = Form("json"),
        temperature: float = Form(0.0),
        target_language: str | None = Form(None, description="es | fr | de (default es)"),
        stream: bool = Form(False),
    ) -> Response:
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
            return self._stream(audio, request, generation, openai=True)
        output, batch_size = await self._run(audio, request, generation)
        body, media_type = transcription_body(output.to_record(), response_format, batch_size=batch_size)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    # ---- spoken language understanding

    @api.post(UNDERSTAND, response_model=Result)
    async def understand(
        self,
        file: UploadFile = File(...),
        task: str = Form(..., description="ner | sentiment | dialog-act"),
        temperature: float = Form(0.0),
        stream: bool = Form(False),
    ) -> Response:
        if task not in UNDERSTAND_TASKS:
            raise APIError(400, f"unsupported task {task!r}; expected one of {', '.join(UNDERSTAND_TASKS)}", param="task")
        return await self._task_route(file, _request(task), temperature, stream)

    @api.post(SUMMARIZE, response_model=Result)
    async def summarize(
        self, file: UploadFile = File(...), temperature: float = Form(0.0), stream: bool = Form(False)
    ) -> Response:
        return await self._task_route(file, _request("summarize"), temperature, stream)

    @api.post(QA, response_model=Result)
    async def qa(
        self,
        file: UploadFile = File(...),
        question: str = Form(...),
        temperature: float = Form(0.0),
        stream: bool = Form(False),
    ) -> Response:
        return await self._task_route(file, _request("qa", question=question, param="question"), temperature, stream)

    async def _task_route(self, file, request, temperature, stream) -> Response:
        generation = self._generation(temperature)
        audio = await self._audio(file)
        if stream:
            return self._stream(audio, request, generation)
        output, batch_size = await self._run(audio, request, generation)
        return JSONResponse(self._result(output, batch_size))

    def _result(self, output, batch_size: dict) -> Result:
        envelope = {"object": "spokenlm.result", "model": self.settings.model_name, "batch_size": batch_size}
        return envelope | output.to_record()

    # ---- shared steps

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
            wav = await asyncio.to_thread(load_audio, data, max_duration_s=self.settings.max_duration_s)
        except AudioError as e:
            raise APIError(400, f"could not use file {file.filename!r}: {e}", param="file") from None
        return _Upload(wav=wav, name=file.filename, load_ms=(time.perf_counter() - t0) * 1e3)

    async def _run(self, audio: "_Upload", request, generation):
        """(RunOutput, batch sizes) of `request` on the uploaded audio."""
        from ray.serve.exceptions import BackPressureError

        try:
            output, batch_size = await self.llm.decode.remote(self.encoder.encode.remote(audio.wav), request, generation)
            return audio.named(output), batch_size
        except BackPressureError:
            raise APIError(
                503, f"server overloaded (model queue full); retry after {self.settings.retry_after_s} s",
                type="server_overloaded", headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None  # fmt: skip

    def _stream(self, audio: "_Upload", request, generation, *, openai: bool = False) -> StreamingResponse:
        from spokenlm.output import RESULT_FIELD

        chunks = self.llm.options(stream=True).stream.remote(self.encoder.encode.remote(audio.wav), request, generation)

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
                yield sse({"type": "error", "error": error_body(f"{type(e).__name__}: {e}", type="server_error")["error"]})
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


# --- building and running ---------------------------------------------------------------------------


def resolve_model_dir(model_dir: str | None) -> str:
    """The bundle to serve: the argument, else $SPOKENLM_MODEL, else the library's default bundle
    (models/default, else an untrained demo bundle: its outputs are noise; it shows the service working)."""
    from spokenlm.demo import default_bundle

    model_dir = model_dir or os.environ.get("SPOKENLM_MODEL")
    if model_dir:
        return str(Path(model_dir).resolve())

    def say(path: Path) -> None:
        print(f"spokenlm serve: no model given; building an UNTRAINED demo bundle in {path}", file=sys.stderr)

    return str(default_bundle(on_build=say))


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
    return Ingress.bind(encoder.bind(settings.model_dir), llm.bind(settings.model_dir), asdict(settings))




# Ray Serve's throughput mode (Ray >= 2.56): user code and the router on the replica's own event loop
# (no thread hop per request), gRPC between replicas, buffered request logs, GC frozen after startup.
# Direct ingress stays off: the HTTP proxy keeps serving every app under its route prefix on one port.
# Set for the Ray that start_ray starts; a cluster sets them itself (k8s/rayservice.yaml does).
SERVE_THROUGHPUT_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}


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
    """`spokenlm serve`: start Ray, deploy the app on host:port (loopback by default), block until ^C."""
    import ray

    started = start_ray()
    try:
        serve.start(http_options={"host": host, "port": port})
        gpus = ray.cluster_resources().get("GPU", 0) >= 1
        serve.run(bind_app({"model_dir": model_dir, **settings}, gpus=gpus), name="spokenlm", route_prefix="/")
        print(f"spokenlm serve: listening on http://{host}:{port} (OpenAPI at /openapi.json); ^C stops", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        if started:
            ray.shutdown()
