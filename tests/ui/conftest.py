"""Fixtures for the demo's tests: the launched app on a free loopback port, and the real Serve app for
the API mode (tests/conftest.py's `serve_app` on the tiny bundle).

The API-mode tests talk to the Serve app the server tests run, not to a stand-in: a field the UI reads
and the server does not send, or a form field the server does not read, fails them.
"""

import os
import socket
from pathlib import Path

import pytest

from spokenlm.demo import EXAMPLES

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SERVE_MAX_NEW_TOKENS = 16  # the Serve app's generation length; API-mode comparisons use the same
SERVE_MAX_DURATION_S = 3.1  # examples/*0880.wav (2.99 s) fits, *0930.wav (3.29 s) the server refuses

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


OUTPUTS = ("status", "transcript", "ctc", "entities", "sentiment", "dialog_acts", "translation", "answer",
           "plot", "timing", "record")  # fmt: skip


@pytest.fixture(scope="session")
def predict():
    """predict(url, audio, task=..., ...) -> {output name: value}: one click of Run, through
    gradio_client, as a remote program (or a user's script) sees the page; one client per app."""
    from gradio_client import Client, handle_file

    clients: dict = {}

    def _predict(url: str, audio, task="asr", question="", target_lang="es", strategy="greedy",
                 max_new_tokens=16) -> dict:  # fmt: skip
        if url not in clients:
            clients[url] = Client(url, verbose=False, download_files=False)
        values = clients[url].predict(
            handle_file(str(audio)), task, question, target_lang, strategy, max_new_tokens, api_name="/run"
        )
        return dict(zip(OUTPUTS, values))

    yield _predict
    for client in clients.values():
        client.close()


@pytest.fixture(scope="session")
def local_app_url(tiny_bundle, launch) -> str:
    """The demo running the tiny untrained bundle in process."""
    from ui.app import build_app

    return launch(build_app(model_dir=tiny_bundle))


@pytest.fixture(scope="module")
def serve_api_url(tiny_bundle, serve_app) -> str:
    """The real Serve app on the tiny bundle (greedy, SERVE_MAX_NEW_TOKENS), one per test module."""
    settings = {"max_new_tokens": SERVE_MAX_NEW_TOKENS, "max_duration_s": SERVE_MAX_DURATION_S}
    with serve_app(tiny_bundle, "test-ui", **settings) as url:
        yield url


@pytest.fixture(scope="session")
def serve_generation():
    """The GenerationConfig the Serve app decodes with (greedy, temperature 0): the same for a reference."""
    from spokenlm.lm import GenerationConfig

    return GenerationConfig(max_new_tokens=SERVE_MAX_NEW_TOKENS)


@pytest.fixture(scope="session")
def bad_audio_file(tmp_path_factory) -> Path:
    """Text bytes under a .wav name: what a user uploads by mistake."""
    path = tmp_path_factory.mktemp("bad") / "notes.wav"
    path.write_bytes(b"these are meeting notes, not audio\n" * 20)
    return path
