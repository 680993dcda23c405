"""The HTTP behaviour we add around BentoML's app, as ASGI middleware.

- One error shape: every JSON error response is `{"error": "<message>"}` (BentoML answers a list
  for its own 4xx and a pydantic error list under `detail`; the OpenAPI document declares the
  object with a string).
- Limits before BentoML parses a body: 413 over CAPSNET_MAX_REQUEST_BYTES; 400 for a text value in
  a file field (BentoML would take it for a URL and fetch it, or fail with a 500). Admission control
  sits in front of all of it (serving/bento/admission_gate.py).
- Requests BentoML would parse the wrong way get a 400: a JSON API sent a form (BentoML parses it
  as multipart and fails with a 500), an upload API sent anything but multipart (BentoML reads a
  JSON or form body as a URL to download).
- `/docs` redirects to the API docs BentoML serves at `/` (spec at `/docs.json`), and the spec says
  what BentoML leaves out: which request bodies are required, and the 413/503 answers.
- Read-only APIs (`/metadata`) are GETs: BentoML's APIs are all POSTs, so a GET is handed to the
  API as a POST of `{}` (a POST gets 405), and the spec documents the GET.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.staticfiles import StaticFiles

from serving.asgi import Receive, Scope, Send, header, media_type, read_body, replaying, send_error
from serving.bento.admission_gate import gate_in_front
from serving.bento.answers import error_message
from serving.bento.logs import install_log_filter
from serving.bento.openapi import READ_ONLY, complete_openapi

log = logging.getLogger(__name__)


class ErrorShape:
    """Rewrites every JSON error response (status >= 400) into `{"error": "<message>"}`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] | None = None
        chunks: list[bytes] = []

        async def reshaping_send(message: dict[str, Any]) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                content_type = dict(message.get("headers", [])).get(b"content-type", b"")
                if message["status"] >= 400 and content_type.startswith(b"application/json"):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    kept = {k.decode("latin-1"): v.decode("latin-1") for k, v in held.get("headers", [])
                            if k.lower() not in (b"content-length", b"content-type")}
                    await send_error(send, held["status"], error_message(held["status"], b"".join(chunks)), kept)
                return
            await send(message)

        await self.app(scope, receive, reshaping_send)


class BodySizeLimit:
    """413 for request bodies over `max_bytes`, before the body is parsed (a declared Content-Length
    over it, or more bytes than that arriving); the body read is handed on to the app."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header(scope, b"content-length")
        too_large = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        if not too_large:
            body, more = await read_body(receive, self.max_bytes)
            too_large = more or len(body) > self.max_bytes
        if too_large:
            reject = f"request body over {self.max_bytes} bytes (CAPSNET_MAX_REQUEST_BYTES)"
            log.warning("%s %s: 413 %s", scope["method"], scope["path"], reject)
            await send_error(send, 413, reject)
            return
        await self.app(scope, replaying(receive, body, more), send)


# Content types BentoML parses as something other than JSON (a form, or a pickle).
NON_JSON_BODIES = ("multipart/form-data", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle")


class RequestGuard:
    """400 for bodies BentoML would parse the wrong way, before it parses them.

    `uploads`: route -> its multipart field that must hold files. Those routes take multipart only,
    with a file in every value of that field: BentoML reads a text value, or a whole JSON or form
    body, as a URL and downloads it server-side (a request the client steers), or fails with a 500.
    Every other route takes JSON: a form or pickle content type would make BentoML fail with a 500.
    The body is read once here (its size is already capped by BodySizeLimit outside) and replayed.
    """

    def __init__(self, app: Any, uploads: dict[str, str]) -> None:
        self.app = app
        self.uploads = uploads

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        kind = media_type(scope)
        field = self.uploads.get(scope["path"])
        problem = None
        if field is None and kind in NON_JSON_BODIES:
            problem = f"Content-Type {kind} is not accepted here: send application/json"
        elif field is not None and kind != "multipart/form-data":
            problem = (f"send the files as multipart/form-data in the form field '{field}', "
                       f"got {kind or 'no Content-Type'}")
        elif field is not None:
            receive, problem = await self._check_files(scope, receive, field)
        if problem:
            log.warning("%s %s: 400 %s", scope["method"], scope["path"], problem)
            await send_error(send, 400, problem)
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _check_files(scope: Scope, receive: Any, field: str) -> tuple[Any, str | None]:
        """Read the body, check every value of `field` is a file; return a replaying receive and the problem."""
        body, more = await read_body(receive)
        replay = replaying(receive, body, more)
        try:
            async with Request(scope, replaying(receive, body, more)).form() as form:
                values = form.getlist(field)
        except Exception as e:  # starlette raises MultiPartException, KeyError, ... on malformed bodies
            return replay, f"malformed multipart body: {e}"
        if any(not isinstance(v, UploadFile) for v in values):
            return replay, f"form field '{field}' must hold files (PNG or JPEG), not text"
        return replay, None


class ApiDocs:
    """GET /docs -> 307 to `/`, where BentoML serves the Swagger UI (it has no /docs page); and the
    OpenAPI document at /docs.json completed by `complete_openapi`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
        elif scope["path"] in ("/docs", "/docs/"):
            await send({"type": "http.response.start", "status": 307,
                        "headers": [(b"location", b"/"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
        elif scope["path"] == "/docs.json":
            await self.app(scope, receive, BufferedJsonRewrite(send, complete_openapi))
        else:
            await self.app(scope, receive, send)


class ReadOnlyRoutes:
    """GET on a READ_ONLY route runs its BentoML API (a POST) with an empty JSON object; POST is 405."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in READ_ONLY:
            await self.app(scope, receive, send)
        elif scope["method"] == "GET":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() not in (b"content-type", b"content-length")]
            scope = {**scope, "method": "POST",
                     "headers": [*headers, (b"content-type", b"application/json"), (b"content-length", b"2")]}
            sent = False

            async def empty_object() -> dict[str, Any]:
                nonlocal sent
                if sent:  # later reads wait for the client to go away, as the real receive does
                    return await receive()
                sent = True
                return {"type": "http.request", "body": b"{}", "more_body": False}

            await self.app(scope, empty_object, send)
        else:
            await send_error(send, 405, f"{scope['path']} is read-only: use GET", {"allow": "GET"})


class BufferedJsonRewrite:
    """An ASGI `send` that collects a 200 JSON response and sends `rewrite(parsed body)` instead."""

    def __init__(self, send: Any, rewrite: Any) -> None:
        self.send, self.rewrite = send, rewrite
        self.start: dict[str, Any] | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            self.start = message
            return
        if message["type"] != "http.response.body" or self.start is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = json.dumps(self.rewrite(json.loads(b"".join(self.chunks)))).encode()
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
        await self.send({**self.start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await self.send({"type": "http.response.body", "body": body})


def install(service: Any, max_request_bytes: int, uploads: dict[str, str], gate: Any) -> None:
    """Add the middleware to a BentoML service (outermost first), `gate` (an ASGI middleware factory:
    the admission gate) in front of BentoML's app, and the log filter. `uploads`: route -> the
    multipart field that must hold files (see RequestGuard)."""
    service.add_asgi_middleware(ErrorShape)
    service.add_asgi_middleware(ApiDocs)
    service.add_asgi_middleware(ReadOnlyRoutes)
    service.add_asgi_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    service.add_asgi_middleware(RequestGuard, uploads=uploads)
    gate_in_front(service, gate)
    install_log_filter()


EXPLORER_DIR = Path(__file__).parents[1] / "explorer_page"


def explorer_page() -> StaticFiles:
    """The explorer page's static files (serving/explorer_page/), index.html at the folder's root."""
    return StaticFiles(directory=EXPLORER_DIR, html=True)
