"""The server under hostile but fair clients, bad input and a dying replica (issue 18), on one real app:
stalled and slow-drip uploads over raw sockets, a chunked gigabyte, a megabyte question, six 10-min
uploads beside a 3-s clip, deadlines, a client that disconnects, hypothesis fuzz of the request
parsing, schemathesis against the app's own schema, then (last: they break the app for a while) real
kills of the LLM and the ingress replicas, with the recovery time measured."""

import io
import json
import os
import socket
import threading
import time

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st

pytestmark = pytest.mark.slow

APP = "test-hostile"
TRANSCRIBE = "/v1/audio/transcriptions"
IDLE_S, UPLOAD_S = 6, 10  # upload_idle_timeout_s, upload_timeout_s
QUEUE_WAIT_S, DEADLINE_S = 3, 8  # max_queue_wait_s, request_timeout_s
MAX_UPLOAD = 25 * 1024 * 1024  # the default max_upload_mb; the proxy's limit (serve/edge.py) is the same
SETTINGS = {"upload_idle_timeout_s": IDLE_S, "upload_timeout_s": UPLOAD_S, "max_uploads": 100, "max_inflight": 16,
            "max_long_audio_s": 600, "max_queue_wait_s": QUEUE_WAIT_S, "request_timeout_s": DEADLINE_S,
            "max_new_tokens": 8, "retry_after_s": 2}  # fmt: skip
# Fuzz sizes: a few hundred requests in the default run; SPOKENLM_NIGHTLY=1 sends 10,000 (and 1,000 per
# operation of the schema).
FUZZ_EXAMPLES = 10_000 if os.environ.get("SPOKENLM_NIGHTLY") == "1" else 200


@pytest.fixture(scope="module")
def server(tiny_bundle, serve_app):
    with serve_app(tiny_bundle, APP, **SETTINGS) as url:
        yield url


@pytest.fixture(scope="module")
def clip(example_clips) -> bytes:
    return example_clips[0].read_bytes()  # 2.99 s


def _noise_wav(seconds: float, sample_rate: int = 8_000) -> bytes:
    """Noise as 8-bit WAV at 8 kHz: a 10-min recording in 4.8 MB, under the 25 MB upload limit."""
    import soundfile as sf

    samples = np.random.default_rng(0).uniform(-0.3, 0.3, int(seconds * sample_rate)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, samples, sample_rate, format="WAV", subtype="PCM_U8")
    return buf.getvalue()


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _open_upload(url: str, headers: str, first: bytes) -> socket.socket:
    s = socket.create_connection(_address(url))
    s.sendall(f"POST {TRANSCRIBE} HTTP/1.1\r\nHost: test\r\nContent-Type: multipart/form-data; boundary=b\r\n"
              f"{headers}\r\n".encode() + first)  # fmt: skip
    return s


def _reply(s: socket.socket, timeout_s: float) -> tuple[int, dict]:
    """Status and JSON body of the one response on `s`."""
    s.settimeout(timeout_s)
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _content_length(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _content_length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 1 << 30


def _stats(deployment: str) -> dict:
    from ray import serve

    return serve.get_deployment_handle(deployment, app_name=APP).stats.remote().result()


def _wait_idle(timeout_s: float = 30) -> dict:
    """The model replicas' stats once neither runs any work."""
    end = time.monotonic() + timeout_s
    while True:
        stats = {name: _stats(name) for name in ("Encoder", "LLM")}
        if all(s["running"] == 0 for s in stats.values()) or time.monotonic() > end:
            return stats
        time.sleep(0.2)


# --- limits enforced early ------------------------------------------------------------------------------


def test_stalled_uploads_leave_good_requests_their_normal_latency(server, http, clip):
    def good() -> float:
        t0 = time.perf_counter()
        r = http.post(TRANSCRIBE, files={"file": ("a.wav", clip)}, data={"model": "spokenlm"})
        assert r.status_code == 200, r.text
        return time.perf_counter() - t0

    normal = max(good() for _ in range(4))
    opened = time.monotonic()
    part = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n" + b"x" * 900
    stalled = [_open_upload(server, "Content-Length: 200000\r\n", part) for _ in range(64)]
    drip = _open_upload(server, "Content-Length: 200000\r\n", part)  # then a byte a second: never idle
    dripping = threading.Event()

    def keep_dripping():
        while not dripping.wait(1.0):
            try:
                drip.sendall(b"x")
            except OSError:
                return

    threading.Thread(target=keep_dripping, daemon=True).start()
    during = [good() for _ in range(4)]
    assert time.monotonic() - opened < IDLE_S, "the stalled uploads were cut off before the good requests ran"
    assert max(during) <= 2 * normal + 0.5, (normal, during)
    assert http.get("/readyz").status_code == 200

    size = len(part)
    for s in stalled:  # each is cut off with a 408 that names the stall
        status, body = _reply(s, IDLE_S + 15)
        assert status == 408
        assert body["error"]["message"] == f"upload stalled: no data for {IDLE_S} s (upload_idle_timeout_s) after {size} bytes"
        s.close()
    status, body = _reply(drip, UPLOAD_S + 15)
    dripping.set()
    drip.close()
    assert status == 408 and body["error"]["message"].startswith("upload too slow: ")
    assert body["error"]["message"].endswith(f" bytes in {UPLOAD_S} s (upload_timeout_s), the body is still incomplete")


def test_a_chunked_gigabyte_is_refused_before_twice_the_limit(server):
    s = _open_upload(server, "Transfer-Encoding: chunked\r\n", b"")
    chunk = b"x" * (256 * 1024)
    sent, t0 = 0, time.perf_counter()
    try:
        while sent < 1 << 30:
            s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
    except OSError:  # the server closed the connection after its 413
        pass
    refused_after_s = time.perf_counter() - t0
    assert sent < 2 * MAX_UPLOAD, sent
    status, body = _reply(s, 10)
    s.close()
    assert status == 413
    assert body["error"] == {"message": f"upload too large: more than {MAX_UPLOAD} bytes received, maximum is {MAX_UPLOAD} "
                             "bytes (25 MB)", "type": "invalid_request_error", "param": "file", "code": None}  # fmt: skip
    print(f"chunked 1 GB upload: refused after {sent / 2**20:.1f} MiB sent, {refused_after_s:.3f} s")


def test_a_megabyte_question_is_refused_at_once(http, clip):
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = http.post("/v1/qa", files={"file": ("a.wav", clip)}, data={"question": "q" * 1_000_000})
        times.append(time.perf_counter() - t0)
        assert r.status_code == 400
        assert r.json()["error"] == {"message": "'question' too long: 1000000 characters, maximum is 1000",
                                     "type": "invalid_request_error", "param": "question", "code": None}  # fmt: skip
    print(f"1 MB question refused in {min(times) * 1e3:.0f} ms (best of 3)")
    assert min(times) < 0.1, times


def test_six_ten_minute_uploads_do_not_hold_up_a_three_second_clip(server, http, clip):
    long = _noise_wav(600)
    answers: list = []

    def post_long():
        t0 = time.perf_counter()
        r = http.post(TRANSCRIBE, files={"file": ("long.wav", long)}, data={"model": "spokenlm"})
        answers.append((r, time.perf_counter() - t0))

    threads = [threading.Thread(target=post_long) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(1.5)  # the uploads are in and decoded; one runs, five wait for room
    t0 = time.perf_counter()
    short = http.post(TRANSCRIBE, files={"file": ("a.wav", clip)}, data={"model": "spokenlm"})
    short_s = time.perf_counter() - t0
    for t in threads:
        t.join(timeout=60)
    assert short.status_code == 200, short.text
    print(f"3-s clip beside six 10-min uploads: {short_s:.2f} s; long: "
          f"{sorted((r.status_code, round(s, 1)) for r, s in answers)}")  # fmt: skip
    assert short_s <= 5.0
    codes = sorted(r.status_code for r, _ in answers)
    assert len(codes) == 6 and codes.count(503) >= 4 and set(codes) <= {200, 503, 504}, codes
    for r, seconds in answers:
        assert seconds <= QUEUE_WAIT_S + DEADLINE_S + 5, seconds  # none runs past its deadline
        error = r.json().get("error") if r.status_code != 200 else None
        if r.status_code == 503:
            assert r.headers["retry-after"] == "2"
            assert error["type"] == "server_overloaded"
            assert error["message"] == (f"server overloaded (600 of 600 s of long audio at work; waited {QUEUE_WAIT_S} s); "
                                        "retry after 2 s")  # fmt: skip
        if r.status_code == 504:
            assert error["type"] == "timeout" and "(request_timeout_s) and was stopped" in error["message"]
    if 504 in codes:  # the long one ran into its deadline: its work stopped there, not minutes later
        stats = _wait_idle(timeout_s=10)
        assert sum(s["stopped"]["deadline"] for s in stats.values()) >= 1, stats
        assert all(s["running"] == 0 for s in stats.values()), stats


def test_a_client_that_disconnects_stops_its_work(server):
    import httpx

    before = _wait_idle()
    sent = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):  # the client gives up after 3 s and closes the connection
        httpx.post(f"{server}{TRANSCRIBE}", files={"file": ("long.wav", _noise_wav(300))}, data={"model": "spokenlm"},
                   timeout=httpx.Timeout(3.0))  # fmt: skip
    left = time.monotonic()
    after = _wait_idle(timeout_s=30)
    stopped_s = time.monotonic() - left
    assert all(s["running"] == 0 for s in after.values()), after
    cancelled = sum(after[n]["stopped"]["cancelled"] - before[n]["stopped"]["cancelled"] for n in after)
    assert cancelled >= 1, (before, after)  # stopped because the client left, before the deadline
    assert left + stopped_s - sent < DEADLINE_S, stopped_s
    print(f"disconnect -> work stopped within {stopped_s:.1f} s")


# --- fuzz: request parsing, and the app against its own schema -----------------------------------------

ROUTES = [TRANSCRIBE, "/v1/audio/translations", "/v1/understand", "/v1/summarize", "/v1/qa"]
FIELDS = ["model", "language", "prompt", "response_format", "temperature", "stream", "task", "question",
          "target_language", "file", "x"]  # fmt: skip


VALID = {TRANSCRIBE: {"model": "spokenlm"}, "/v1/audio/translations": {"model": "whisper-1"},
         "/v1/understand": {"task": "ner"}, "/v1/summarize": {}, "/v1/qa": {"question": "who?"}}  # fmt: skip


@st.composite
def requests(draw, clip: bytes):
    """A route's valid form (half the time) with fields added, replaced or dropped, and a file that is
    missing, random, the clip, or the clip cut or spliced."""
    path = draw(st.sampled_from(ROUTES))
    fields = dict(VALID[path]) if draw(st.booleans()) else {}
    value = st.one_of(
        st.sampled_from(["spokenlm", "whisper-1", "en", "fr", "ner", "sentiment", "json", "text", "srt", "verbose_json",
                         "0.3", "true", "es", ""]),
        st.text(max_size=40), st.text(min_size=990, max_size=1100),
    )  # fmt: skip
    fields |= draw(st.dictionaries(st.sampled_from(FIELDS), value, max_size=3))
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=1)):
        fields.pop(name, None)
    file = draw(st.one_of(
        st.just(clip), st.just(clip), st.none(), st.binary(max_size=300),
        st.builds(lambda n: clip[:n], st.integers(0, len(clip))),
        st.builds(lambda head, n: head + clip[n:], st.binary(max_size=16), st.integers(0, 64)),
    ))  # fmt: skip
    return path, fields, file


def test_fuzzed_requests_get_a_clean_answer(server, http, clip):
    seen: dict[int, int] = {}

    @hypothesis.settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))  # fmt: skip
    @hypothesis.given(requests(clip))
    def check(request):
        path, fields, file = request
        files = {"file": ("f.wav", file)} if file is not None else None
        data = {k: v for k, v in fields.items() if not (k == "file" and files)}
        r = http.post(path, data=data, files=files)
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (path, {k: v[:30] for k, v in data.items()}, r.status_code, r.text[:300])
        if r.status_code >= 400:
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], r.text
            assert "Traceback" not in error["message"] and "Error:" not in error["message"], r.text

    check()
    print(f"fuzzed requests by status: {dict(sorted(seen.items()))}")
    assert 200 in seen and 400 in seen  # the strategy reaches both the models and the validation


def test_schemathesis_no_server_errors_and_responses_match_the_schema(server):
    """Every operation of /openapi.json, with schemathesis-generated requests: no 5xx, and each status,
    content type and body is one the schema documents. (Driven by hand: schemathesis' pytest plugin
    does not run under pytest 9.)"""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9  # 5 POST routes, /healthz, /readyz, /v1/models, /v1/models/{model}
    calls = 0
    for operation in operations:

        @hypothesis.settings(max_examples=max(10, FUZZ_EXAMPLES // 10), deadline=None, derandomize=True,
                             database=None, suppress_health_check=list(HealthCheck))  # fmt: skip
        @hypothesis.given(operation.as_strategy())
        def check(case):
            nonlocal calls
            calls += 1
            case.call_and_validate(base_url=server, checks=checks, timeout=60)

        check()
    print(f"schemathesis: {calls} requests over {len(operations)} operations")


# --- faults: real replica kills (last: they break the app for a while) -----------------------------------


def _replica(deployment: str):
    import ray

    (name,) = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["name"].startswith(f"SERVE_REPLICA::{APP}#{deployment}#")]  # fmt: skip
    return ray.get_actor(name, namespace="serve")


def _load_then_kill(server, clip, deployment: str) -> tuple[list, float]:
    """Eight clients send requests in a loop; one replica of `deployment` is killed under them. Every
    answer, and the seconds from the kill to the next 200."""
    import httpx
    import ray

    answers: list = []
    stop = threading.Event()
    killed_at: list[float] = []
    recovered_at: list[float] = []

    def client():
        with httpx.Client(base_url=server, timeout=DEADLINE_S + 30) as c:
            while not stop.is_set():
                t0, sent = time.perf_counter(), time.monotonic()
                r = c.post(TRANSCRIBE, files={"file": ("a.wav", clip)}, data={"model": "spokenlm"})
                answers.append((r.status_code, r.headers.get("content-type", ""), r.text, time.perf_counter() - t0))
                if r.status_code == 200 and killed_at and sent > killed_at[0] and not recovered_at:
                    recovered_at.append(time.monotonic())  # the first request sent after the kill that succeeds

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    victim = _replica(deployment)
    killed_at.append(time.monotonic())
    ray.kill(victim, no_restart=True)
    end = time.monotonic() + 90
    while not recovered_at and time.monotonic() < end:
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join(timeout=DEADLINE_S + 40)
    assert recovered_at, f"no request succeeded within 90 s of killing the {deployment} replica"
    return answers, recovered_at[0] - killed_at[0]


@pytest.mark.parametrize("deployment", ["LLM", "Ingress"])
def test_a_replica_killed_under_load_gives_clean_errors_and_recovers(server, clip, deployment):
    before = _replica(deployment)._actor_id
    answers, recovery_s = _load_then_kill(server, clip, deployment)
    assert _replica(deployment)._actor_id != before  # Serve started a new replica by itself
    counts = {status: sum(a[0] == status for a in answers) for status in sorted({a[0] for a in answers})}
    print(f"{deployment} replica killed under load: a request sent after the kill succeeded {recovery_s:.1f} s "
          f"after it; answers by status {counts}, slowest {max(a[3] for a in answers):.1f} s; errors "
          f"{sorted({(a[0], a[2][:160]) for a in answers if a[0] != 200})}")  # fmt: skip
    # None hangs past its timeout: a request caught on the dead replica ends in a 503, or a 504 at its
    # deadline (request_timeout_s) where Ray only notices the death then; on a dead ingress, a 500.
    assert all(seconds <= DEADLINE_S + 30 for *_, seconds in answers)
    for status, content_type, text, _ in answers:
        assert status in (200, 500, 503, 504), (status, text[:300])
        assert content_type.startswith("application/json"), (status, content_type, text[:300])
        if status != 200:
            error = json.loads(text)["error"]
            assert set(error) == {"message", "type", "param", "code"}
            for leak in ("Actor", "actor", "pid", "Traceback", "ray."):
                assert leak not in error["message"], error
