"""The limits' machinery without a Ray cluster: the ingress's body reader (size while streaming, stalls,
slow drips), the proxy middlewares (413 where the bytes arrive, JSON for the proxy's own errors), the
replicas' stop hooks and stuck-work check, and the settings' checks. tests/serve/test_hostile.py runs
the same limits through a real server."""

import asyncio
import json

import pytest
import torch

from serve.app import MULTIPART_SLACK, ServeSettings, _Body, _Refusal
from serve.deployments import WorkStopped, _Stop, _stoppable, _Work
from serve.edge import BodyLimit, JSONErrors

MB = 1024 * 1024


def _settings(**kw) -> ServeSettings:
    return ServeSettings(model_dir="unused", **kw)


def _receiver(chunks, *, delay_s: float = 0.0, then_stall: bool = False):
    """An ASGI receive giving `chunks` (more_body until the last), each after `delay_s`; then, with
    `then_stall`, never anything again."""
    queue = list(chunks)

    async def receive() -> dict:
        if not queue:
            await asyncio.sleep(3600) if then_stall else None
            return {"type": "http.disconnect"}
        await asyncio.sleep(delay_s)
        chunk = queue.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue) or then_stall}

    return receive


def test_body_is_refused_the_moment_it_passes_the_limit():
    settings = _settings(max_upload_mb=1)
    sent = 0

    def endless():
        nonlocal sent
        while True:
            sent += 64 * 1024
            yield b"x" * (64 * 1024)

    body = _Body()
    gen = endless()

    async def receive():
        return {"type": "http.request", "body": next(gen), "more_body": True}

    with pytest.raises(_Refusal) as info:
        asyncio.run(body.read(receive, settings))
    assert info.value.status == 413
    assert info.value.message == "upload too large: more than 1048576 bytes received, maximum is 1048576 bytes (1 MB)"
    assert sent <= MB + MULTIPART_SLACK + 64 * 1024  # one message past the limit, not the rest of the stream


def test_a_stalled_body_gets_408_after_the_idle_timeout():
    settings = _settings(upload_idle_timeout_s=0.2, upload_timeout_s=5)
    body = _Body()
    with pytest.raises(_Refusal) as info:
        asyncio.run(body.read(_receiver([b"a" * 100], then_stall=True), settings))
    assert (info.value.status, info.value.message) == (
        408, "upload stalled: no data for 0.2 s (upload_idle_timeout_s) after 100 bytes")


def test_a_body_that_never_starts_gets_503_to_retry_not_408():
    # What the ingress sees when Serve sends a request again to a new replica after the one that had
    # read its body died: not a byte, ever. It is no client's fault, so no 408.
    settings = _settings(upload_idle_timeout_s=0.2, upload_timeout_s=5, retry_after_s=2)
    body = _Body()
    with pytest.raises(_Refusal) as info:
        asyncio.run(body.read(_receiver([], then_stall=True), settings))
    assert (info.value.status, info.value.type, info.value.headers) == (503, "server_error", {"Retry-After": "2"})
    assert info.value.message == (
        "no request body arrived in 0.2 s (upload_idle_timeout_s): if it was sent, it was lost when the server "
        "replica that first took the request stopped; send it again, retry after 2 s")


def test_a_slow_drip_gets_408_after_the_upload_timeout():
    settings = _settings(upload_idle_timeout_s=0.2, upload_timeout_s=0.5)
    body = _Body()
    with pytest.raises(_Refusal) as info:  # a byte every 0.1 s: never idle for 0.2 s, never done
        asyncio.run(body.read(_receiver([b"a"] * 100, delay_s=0.1), settings))
    assert info.value.status == 408
    assert info.value.message.startswith("upload too slow: ") and info.value.message.endswith(
        " bytes in 0.5 s (upload_timeout_s), the body is still incomplete")


def test_a_complete_body_is_replayed_unchanged_then_the_client_is_heard():
    chunks = [bytes([i]) * 70_000 for i in range(5)]  # more than 1 MiB in all: spooled to disk

    async def run():
        body = _Body()
        await body.read(_receiver(chunks), _settings())
        receive = body.receive(_receiver([]))
        got, more = b"", True
        while more:
            message = await receive()
            got += message["body"]
            more = message["more_body"]
        return got, await receive()

    got, after = asyncio.run(run())
    assert got == b"".join(chunks)
    assert after == {"type": "http.disconnect"}


def _asgi_call(app, body_chunks=(), method="POST"):
    """Run an ASGI app on one HTTP request; the messages it sent."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/", "headers": []}
    asyncio.run(app(scope, _receiver(list(body_chunks)), send))
    return sent


def test_proxy_body_limit_answers_413_and_the_app_sees_a_disconnect():
    seen = []

    async def app(scope, receive, send):  # a proxy that reads everything, as Serve's does
        while (message := await receive())["type"] == "http.request":
            seen.append(len(message["body"]))
        seen.append(message["type"])

    limited = BodyLimit(app, max_upload_mb=0.25)
    sent = _asgi_call(limited, [b"x" * 100_000] * 50)
    assert seen[-1] == "http.disconnect" and sum(seen[:-1]) <= 0.25 * MB + MULTIPART_SLACK + 100_000
    start, body = sent
    assert start["status"] == 413 and (b"connection", b"close") in start["headers"]
    assert json.loads(body["body"]) == {"error": {
        "message": "upload too large: more than 262144 bytes received, maximum is 262144 bytes (0.25 MB)",
        "type": "invalid_request_error", "param": "file", "code": None}}  # fmt: skip


@pytest.mark.parametrize(
    "behaviour, status, message",
    [
        ("no response", 500, "internal server error: the request failed inside the server; retry later"),
        ("raises", 500, "internal server error: the request failed inside the server; retry later"),
        ("text 503", 503, "service unavailable: no replica can take the request now; retry later"),
    ],
)
def test_proxy_errors_become_json_without_internals(behaviour, status, message):
    async def app(scope, receive, send):  # what Serve's proxy does when the ingress dies or is busy
        if behaviour == "raises":
            raise RuntimeError("ActorDiedError: actor 8f3a... pid=1234")
        if behaviour == "text 503":
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"text/plain"), (b"retry-after", b"2")]})  # fmt: skip
            await send({"type": "http.response.body", "body": b"Request 1f2e... timed out", "more_body": False})

    start, body = _asgi_call(JSONErrors(app))
    assert start["status"] == status
    assert json.loads(body["body"])["error"]["message"] == message
    if behaviour == "text 503":
        assert (b"retry-after", b"2") in start["headers"]


def test_json_errors_leave_the_apps_own_answers_alone():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"a transcript", "more_body": False})

    start, body = _asgi_call(JSONErrors(app))
    assert (start["status"], body["body"]) == (200, b"a transcript")


def test_stop_hooks_stop_a_forward_pass_once_every_request_is_due():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ModuleList([torch.nn.Linear(4, 4)]))
    _stoppable(model)
    block = model[1][0]
    work = _Work(stuck_after_s=60)
    live, late = _Stop(deadline=float("inf")), _Stop(deadline=0.0)
    with work.running([live, late]):
        block(torch.zeros(1, 4))  # one request is still wanted: go on
    live.cancelled = True
    with pytest.raises(WorkStopped, match=r"^stopped: 2 request\(s\) cancelled or past their deadline$"):
        with work.running([live, late]):
            block(torch.zeros(1, 4))
    assert work.stopped == {"cancelled": 0, "deadline": 1}  # a passed deadline names the stop
    with pytest.raises(WorkStopped, match=r"^stopped: 1 request\(s\) cancelled or past their deadline$"):
        with work.running([live]):
            block(torch.zeros(1, 4))
    assert work.stopped == {"cancelled": 1, "deadline": 1}
    block(torch.zeros(1, 4))  # outside `running` (another thread's work, or none): no stop


def test_work_running_past_its_limit_is_stuck():
    now = [0.0]
    work = _Work(stuck_after_s=120, clock=lambda: now[0])
    assert work.stuck() is None
    with work.running([_Stop(deadline=float("inf"))]):
        now[0] = 100.0
        assert work.stuck() is None
        now[0] = 130.0
        assert work.stuck() == "work has run 130 s, over the 120 s limit"
    assert work.stuck() is None


def test_settings_are_checked():
    _settings().validate()
    with pytest.raises(ValueError, match="^upload_idle_timeout_s must be > 0, got 0$"):
        _settings(upload_idle_timeout_s=0).validate()
    with pytest.raises(ValueError, match=r"^max_long_audio_s \(300\) must be >= max_duration_s \(600.0\)"):
        _settings(max_long_audio_s=300).validate()
    with pytest.raises(ValueError, match="^max_uploads and max_text_chars must be >= 1, got 0, 1000$"):
        _settings(max_uploads=0).validate()
    with pytest.raises(ValueError, match=r"^threads must be an int >= 1 \(or None\), got 0$"):
        _settings(threads=0).validate()
    assert _settings(request_timeout_s=600).stuck_after_s == 1200
