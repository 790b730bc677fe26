"""Bad input and overload: every bad request gets a 4xx with an OpenAI-style error body naming the
problem, overload gets 503 + Retry-After, and the server keeps answering good requests afterwards."""

import io
import threading

import numpy as np
import pytest

pytestmark = pytest.mark.slow

MAX_UPLOAD_MB = 0.25  # a 3 s 16-bit clip is ~96 KB
MAX_DURATION_S = 3.1  # examples/*0880.wav (2.99 s) fits, *0930.wav (3.29 s) does not
MAX_INFLIGHT = 2


@pytest.fixture(scope="module")
def server(tiny_bundle, serve_app):
    settings = {"max_upload_mb": MAX_UPLOAD_MB, "max_duration_s": MAX_DURATION_S, "max_inflight": MAX_INFLIGHT,
                "max_new_tokens": 8, "retry_after_s": 2}  # fmt: skip
    with serve_app(tiny_bundle, "test-errors", **settings) as url:
        yield url


@pytest.fixture(scope="module")
def clips(example_clips) -> dict[str, bytes]:
    return {p.name.rsplit("-", 1)[1]: p.read_bytes() for p in example_clips}  # "0880.wav", "0930.wav"


def _wav(samples: np.ndarray, sr: int = 16_000, subtype: str | None = None) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def _bad_requests(clips: dict[str, bytes]) -> list[tuple[str, str, dict, str | None, str]]:
    """(method, path, httpx kwargs, expected param, expected message fragment)."""
    good = clips["0880.wav"]
    t = "/v1/audio/transcriptions"
    model = {"model": "whisper-1"}
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 16_000 * 10).astype(np.float32)
    nan = np.full(16_000, np.nan, dtype=np.float32)
    return [
        ("POST", t, {"data": model}, "file", "missing required parameter 'file'"),
        ("POST", t, {"files": {"file": ("a.wav", b"")}, "data": model}, "file", "empty audio input: 0 bytes"),
        ("POST", t, {"files": {"file": ("a.wav", b"garbage!")}, "data": model}, "file", "not a recognised audio format"),
        ("POST", t, {"files": {"file": ("a.txt", b"hello world, not audio " * 20)}, "data": model}, "file", "could not use file 'a.txt'"),
        ("POST", t, {"files": {"file": ("a.png", b"\x89PNG\r\n\x1a\n" + bytes(200))}, "data": model}, "file", "could not use file"),
        ("POST", t, {"files": {"file": ("a.wav", good[:44])}, "data": model}, "file", "could not use file"),
        ("POST", t, {"files": {"file": ("a.wav", good[:30])}, "data": model}, "file", "could not use file"),
        ("POST", t, {"files": {"file": ("a.mp3", bytes(range(256)) * 4)}, "data": model}, "file", "could not use file"),
        ("POST", t, {"files": {"file": ("a.wav", _wav(nan, subtype="FLOAT"))}, "data": model}, "file", "could not use file"),
        ("POST", t, {"files": {"file": ("a.wav", _wav(np.zeros(80, np.float32)))}, "data": model}, "file", "too short"),
        ("POST", t, {"files": {"file": ("a.avi", b"RIFF" + good[4:8] + b"AVI " + good[12:])}, "data": model}, "file", "could not use file"),
        ("POST", t, {"files": {"file": ("a.wav", _wav(np.zeros(100, np.float32), sr=200))}, "data": model}, "file", "could not use file"),
        ("POST", t, {"files": {"file": ("a.wav", clips["0930.wav"])}, "data": model}, "file", "audio too long: 3.290 s, maximum is 3.100 s"),
        ("POST", t, {"files": {"file": ("big.wav", _wav(noise))}, "data": model}, "file", "upload too large"),
        ("POST", t, {"data": {"file": "not a file", **model}}, "file", "invalid value for 'file'"),
        ("POST", t, {"json": {"file": "x", "model": "whisper-1"}}, "file", "missing required parameter 'file'"),
        ("POST", t, {"files": {"file": ("a.wav", good)}}, "model", "missing required parameter 'model'"),
        ("POST", t, {"files": {"file": ("a.wav", good)}, "data": {**model, "response_format": "xml"}}, "response_format", "unsupported response_format 'xml'"),
        ("POST", t, {"files": {"file": ("a.wav", good)}, "data": {**model, "temperature": "hot"}}, "temperature", "invalid value for 'temperature'"),
        ("POST", t, {"files": {"file": ("a.wav", good)}, "data": {**model, "temperature": "5"}}, "temperature", "temperature must be within [0, 1], got 5.0"),
        ("POST", t, {"files": {"file": ("a.wav", good)}, "data": {**model, "temperature": "-0.5"}}, "temperature", "temperature must be within [0, 1]"),
        ("POST", t, {"files": {"file": ("a.wav", good)}, "data": {**model, "temperature": "nan"}}, "temperature", "temperature must be within [0, 1]"),
        ("POST", t, {"files": {"file": ("a.wav", good)}, "data": {**model, "language": "fr"}}, "language", "unsupported language 'fr'"),
        ("POST", t, {"files": {"file": ("a.wav", good)}, "data": {**model, "stream": "maybe"}}, "stream", "invalid value for 'stream'"),
        ("POST", t, {"content": b"--xyz\r\nnot a form", "headers": {"content-type": "multipart/form-data; boundary=xyz"}}, None, ""),
        ("POST", "/v1/audio/translations", {"files": {"file": ("a.wav", good)}, "data": {**model, "target_language": "tlh"}}, "target_language", "unsupported target language 'tlh'"),
        ("POST", "/v1/audio/translations", {"data": model}, "file", "missing required parameter 'file'"),
        ("POST", "/v1/understand", {"files": {"file": ("a.wav", good)}}, "task", "missing required parameter 'task'"),
        ("POST", "/v1/understand", {"files": {"file": ("a.wav", good)}, "data": {"task": "asr"}}, "task", "unsupported task 'asr'; expected one of ner, sentiment, dialog-act"),
        ("POST", "/v1/understand", {"files": {"file": ("a.wav", b"RIFF\x00\x00")}, "data": {"task": "ner"}}, "file", "could not use file"),
        ("POST", "/v1/qa", {"files": {"file": ("a.wav", good)}}, "question", "missing required parameter 'question'"),
        ("POST", "/v1/qa", {"files": {"file": ("a.wav", good)}, "data": {"question": "   "}}, "question", "task 'qa' needs a non-empty question"),
        ("POST", "/v1/summarize", {"files": {"file": ("a.ogg", b"OggS" + bytes(100))}}, "file", "could not use file"),
        ("GET", t, {}, None, "method GET not allowed on /v1/audio/transcriptions"),
        ("POST", "/v1/chat/completions", {"json": {}}, None, "no route POST /v1/chat/completions"),
        ("GET", "/v1/models/gpt-4", {}, "model", "model 'gpt-4' not found"),
        ("POST", t, {"files": {"file": ("a.wav", good)}, "data": {"model": "gpt-4o-transcribe"}}, "model", "model 'gpt-4o-transcribe' not found; this server serves 'spokenlm', 'whisper-1'"),
        ("POST", "/v1/audio/translations", {"files": {"file": ("a.wav", good)}, "data": {"model": "m"}}, "model", "model 'm' not found"),
        ("POST", t, {"files": {"file": ("a.wav", good)}, "data": {**model, "prompt": "p" * 1001}}, "prompt", "'prompt' too long: 1001 characters, maximum is 1000"),
        ("POST", "/v1/qa", {"files": {"file": ("a.wav", good)}, "data": {"question": "q" * 5000}}, "question", "'question' too long: 5000 characters, maximum is 1000"),
        ("POST", "/v1/understand", {"files": {"file": ("a.wav", good)}, "data": {"task": "n" * 2000}}, "task", "'task' too long: 2000 characters, maximum is 1000"),
        ("POST", t, {"files": {"file": ("a.wav", _wav(np.full(16_000, 1e30, np.float32), subtype="FLOAT"))}, "data": model}, "file", "audio samples reach 1e+30, far outside [-1, 1]"),
        ("POST", t, {"files": {"file": ("a.wav", good[: len(good) // 2])}, "data": model}, "file", "truncated WAV data: the data chunk declares"),
    ]  # fmt: skip


def test_bad_requests_get_4xx_and_the_server_keeps_serving(http, clips):
    corpus = _bad_requests(clips)
    assert len(corpus) >= 30
    for method, path, kwargs, param, fragment in corpus:
        r = http.request(method, path, **kwargs)
        assert 400 <= r.status_code < 500, (path, kwargs.get("data"), r.status_code, r.text)
        error = r.json()["error"]
        assert set(error) >= {"message", "type", "param"}, r.text
        assert error["type"] == "invalid_request_error"
        assert fragment in error["message"], (fragment, error)
        if param is not None:
            assert error["param"] == param, (param, error)
        assert error["code"] == ("model_not_found" if "model '" in fragment else None), error
    status = {"upload too large": 413, "not allowed": 405, "no route": 404, "not found": 404}
    for method, path, kwargs, _, fragment in corpus:  # the status codes that are not plain 400
        for key, code in status.items():
            if key in fragment:
                assert http.request(method, path, **kwargs).status_code == code
    ok = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", clips["0880.wav"])}, data={"model": "whisper-1"})
    assert ok.status_code == 200 and "text" in ok.json()
    assert http.get("/healthz").status_code == 200


def test_overload_gets_503_with_retry_after_then_recovers(http, clips):
    responses: list = []
    lock = threading.Lock()

    def one():
        r = http.post("/v1/summarize", files={"file": ("a.wav", clips["0880.wav"])})
        with lock:
            responses.append(r)

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in responses)
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2"
            assert r.json()["error"]["type"] == "server_overloaded"
    ok = http.post("/v1/summarize", files={"file": ("a.wav", clips["0880.wav"])})
    assert ok.status_code == 200 and ok.json()["task"] == "summarize"
