"""Fixtures for the demo's tests: the launched app on a free loopback port, and a fake Serve API.

The fake API follows the contract in ui/backends.py (serve/ is built separately); it answers with
fixed, known text so the API-mode tests check what the page shows, not what an untrained model says.
"""

import os
import socket
import threading
import time
from pathlib import Path

import pytest

from spokenlm.demo import EXAMPLES

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FAKE_TRANSCRIPT = "he was not an ill disposed young man"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def unused_port():
    """A function giving a loopback port that nothing listens on, right now."""
    return free_port


@pytest.fixture(scope="session")
def launch():
    """launch(blocks) -> its URL; every app launched is closed at the end of the session."""
    launched = []

    def _launch(blocks) -> str:
        port = free_port()
        blocks.queue(default_concurrency_limit=1)
        blocks.launch(
            server_name="127.0.0.1",
            server_port=port,
            prevent_thread_lock=True,
            quiet=True,
            allowed_paths=[str(EXAMPLES)],
        )  # allowed_paths as ui.app.main has it
        launched.append(blocks)
        return f"http://127.0.0.1:{port}/"

    yield _launch
    for blocks in launched:
        blocks.close()


@pytest.fixture(scope="session")
def local_app_url(tiny_bundle, launch) -> str:
    """The demo running the tiny untrained bundle in process."""
    from ui.app import build_app

    return launch(build_app(model_dir=tiny_bundle))


def fake_serve_api():
    """A FastAPI app with the Serve API's routes and fixed answers; 400 with an OpenAI-style error
    body for a file that is not RIFF/WAVE, as the real server does for undecodable audio."""
    from typing import Annotated

    from fastapi import FastAPI, File, Form, UploadFile
    from fastapi.responses import JSONResponse

    api = FastAPI()
    timing = {"encode_compress": 12.5, "adapter": 0.5, "llm": 40.0}

    def bad_audio(data: bytes):
        if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            return None
        message = "could not decode audio: not a WAV file"
        return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": "file"}}, 400)

    def record(task: str, **fields) -> dict:
        base = {"task": task, "text": FAKE_TRANSCRIPT, "entities": None, "sentiment": None, "dialog_acts": None,
                "translation": None, "answer": None, "summary": None, "tokens_per_second": 7.5,
                "timing_ms": timing}  # fmt: skip
        return base | fields

    @api.post("/v1/audio/transcriptions")
    async def transcriptions(
        file: Annotated[UploadFile, File()],
        model: Annotated[str, Form()],
        response_format: Annotated[str, Form()] = "json",
    ):
        if (error := bad_audio(await file.read())) is not None:
            return error
        return {"text": FAKE_TRANSCRIPT, "segments": [{"id": 0, "start": 0.0, "end": 1.5}, {"id": 1, "start": 1.5, "end": 2.9}],
                "timing_ms": timing}  # fmt: skip

    @api.post("/v1/audio/translations")
    async def translations(
        file: Annotated[UploadFile, File()], model: Annotated[str, Form()], target_lang: Annotated[str, Form()]
    ):
        if (error := bad_audio(await file.read())) is not None:
            return error
        return {"text": f"[{target_lang}] no era un joven malintencionado"}

    @api.post("/v1/understand")
    async def understand(file: Annotated[UploadFile, File()], task: Annotated[str, Form()]):
        if (error := bad_audio(await file.read())) is not None:
            return error
        if task == "ner":
            entity = {
                "tag": "PERSON",
                "text": "young man",
                "start_char": 27,
                "end_char": 36,
                "start_s": 2.1,
                "end_s": 2.8,
            }
            return record("ner", entities=[entity])
        if task == "sentiment":
            return record("sentiment", sentiment="Neutral")
        return record(task, dialog_acts=["statement_general"])

    @api.post("/v1/summarize")
    async def summarize(file: Annotated[UploadFile, File()]):
        if (error := bad_audio(await file.read())) is not None:
            return error
        return record("summarize", summary="a man is described")

    @api.post("/v1/qa")
    async def qa(file: Annotated[UploadFile, File()], question: Annotated[str, Form()]):
        if (error := bad_audio(await file.read())) is not None:
            return error
        return record("qa", answer=f"you asked: {question}", spans_s=[[0.0, 1.0], [1.0, 2.0]])

    return api


@pytest.fixture(scope="session")
def fake_api_url() -> str:
    """The fake Serve API on a free loopback port, served by uvicorn in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(fake_serve_api(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the fake Serve API did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def bad_audio_file(tmp_path_factory) -> Path:
    """Text bytes under a .wav name: what a user uploads by mistake."""
    path = tmp_path_factory.mktemp("bad") / "notes.wav"
    path.write_bytes(b"these are meeting notes, not audio\n" * 20)
    return path
