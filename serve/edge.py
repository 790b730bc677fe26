"""The Serve HTTP proxy's part of the API: a body limit where the bytes arrive, and JSON errors.

Ray Serve's proxy reads a request body from the socket as fast as the client sends it and queues it
for the ingress replica, so a limit checked only in the ingress lets a fast client push tens of MB
more before the refusal lands. `BodyLimit` counts the bytes as the proxy reads them and answers 413 the
moment they pass the limit (env SPOKENLM_MAX_UPLOAD_MB, the app's `max_upload_mb`, plus the multipart
slack): the proxy stops reading, the request to the ingress is cancelled, the connection closes.

When the ingress replica dies mid-request, or the proxy times a request out or finds no replica, the
proxy answers on its own: a plain-text 500 ("Internal Server Error"), or its own text for 503 and 408,
some naming Ray's request id. `JSONErrors` turns every such non-JSON error response into
`{"error": {"message", "type", "param", "code"}}` with a generic message (serve.formats.error_body),
keeping the status and any Retry-After. The app's own errors are JSON already and pass through
unchanged, as do its successful text responses (response_format=text, SSE).

Ray installs both in every proxy through the environment variable
RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve.edge:proxy_middlewares, which serve.app.start_ray sets
for the Ray it starts (a cluster sets it in its own environment). Imports no Ray, torch or FastAPI.
"""

from __future__ import annotations

import os

from serve.formats import error_body

CALLBACK = "serve.edge:proxy_middlewares"
MAX_UPLOAD_ENV = "SPOKENLM_MAX_UPLOAD_MB"  # the proxy's body limit; serve_main sets it from max_upload_mb
DEFAULT_MAX_UPLOAD_MB = 25.0  # serve.app.ServeSettings.max_upload_mb
MULTIPART_SLACK = 64 * 1024  # serve.app.MULTIPART_SLACK: form boundaries and part headers

MESSAGES = {
    404: ("not found", "invalid_request_error"),
    408: ("request timed out in the HTTP proxy", "timeout"),
    500: ("internal server error: the request failed inside the server; retry later", "server_error"),
    503: ("service unavailable: no replica can take the request now; retry later", "server_overloaded"),
}


def proxy_middlewares() -> list:
    """What Ray's proxy calls (RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH): Starlette middlewares."""
    from starlette.middleware import Middleware

    max_upload_mb = float(os.environ.get(MAX_UPLOAD_ENV) or DEFAULT_MAX_UPLOAD_MB)
    return [Middleware(BodyLimit, max_upload_mb=max_upload_mb), Middleware(JSONErrors)]  # outermost first


class BodyLimit:
    """Pure ASGI middleware: a request body that passes `max_upload_mb` (+ slack) is answered 413 at once,
    and the app below sees the client disconnect (the proxy then cancels the request it forwarded)."""

    def __init__(self, app, *, max_upload_mb: float):
        self.app = app
        self.max_upload_mb = max_upload_mb
        self.max_bytes = int(max_upload_mb * 1024 * 1024)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        received, refused, responded = 0, False, False

        async def limited_receive() -> dict:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            received += len(message.get("body", b""))
            if message["type"] == "http.request" and received > self.max_bytes + MULTIPART_SLACK:
                refused = True
                if not responded:
                    text = (f"upload too large: more than {self.max_bytes} bytes received, maximum is "
                            f"{self.max_bytes} bytes ({self.max_upload_mb:g} MB)")  # fmt: skip
                    await _send_error(send, 413, [(b"connection", b"close")], message=text, param="file")
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal responded
            if refused:  # our 413 went out instead
                return
            responded = responded or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, limited_receive, guarded_send)


class JSONErrors:
    """Pure ASGI middleware: non-JSON error responses, and no response at all, become JSON errors."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False
        replaced: dict | None = None  # the response start whose body is being replaced

        async def send_json_errors(message: dict) -> None:
            nonlocal started, replaced
            if message["type"] == "http.response.start":
                started = True
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and not content_type.startswith(b"application/json"):
                    replaced = message
                    return
            elif replaced is not None and message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await _send_error(send, replaced["status"], replaced.get("headers", []))
                return
            await send(message)

        try:
            await self.app(scope, receive, send_json_errors)
        except Exception:
            if started:
                raise
            await _send_error(send, 500, [])
            return
        if not started:  # the proxy gave up without answering (a dead ingress): uvicorn would say 500 in text
            await _send_error(send, 500, [])


async def _send_error(send, status: int, headers: list, *, message: str | None = None, param: str | None = None) -> None:
    import json

    generic, type = MESSAGES.get(status, (f"HTTP error {status}", "server_error" if status >= 500 else "invalid_request_error"))
    body = json.dumps(error_body(message or generic, type=type, param=param)).encode()
    keep = [(k, v) for k, v in headers if k.lower() in (b"retry-after", b"connection")]
    out = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *keep]
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body, "more_body": False})
