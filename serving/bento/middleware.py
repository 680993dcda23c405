"""The HTTP behaviour we add around BentoML's app, as ASGI middleware and a log filter.

- One error shape: every JSON error response is `{"error": "<message>"}` (BentoML answers a list
  for its own 4xx and a pydantic error list under `detail`; the OpenAPI document declares the
  object with a string).
- Limits before BentoML parses a body: 413 over CAPSNET_MAX_REQUEST_BYTES; 400 for a text value in
  a file field (BentoML would take it for a URL and fetch it, or fail with a 500); 503 with
  Retry-After when the model a request names is full (serving/engine/admission.py), and the same answer
  for a request BentoML's batcher shed after the latency budget, with no traceback in the log.
- A client's mistake is logged as one WARNING line, not as an ERROR with a traceback.
- Requests BentoML would parse the wrong way get a 400: a JSON API sent a form (BentoML parses it
  as multipart and fails with a 500), an upload API sent anything but multipart (BentoML reads a
  JSON or form body as a URL to download).
- `/docs` redirects to the API docs BentoML serves at `/` (spec at `/docs.json`), and the spec says
  what BentoML leaves out: which request bodies are required, and the 413/503 answers.
- Read-only APIs (`/metadata`) are GETs: BentoML's APIs are all POSTs, so a GET is handed to the
  API as a POST of `{}` (a POST gets 405), and the spec documents the GET.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.staticfiles import StaticFiles

from serving.engine.admission import PAST_BUDGET, Admission, Overloaded

log = logging.getLogger(__name__)

Scope = dict[str, Any]
READ_ONLY = ("/metadata",)  # APIs that only read: served and documented as GET
# APIs whose answer needs something the named model may have been exported without (reconstructions,
# the explorer's graphs): they can answer 422 (serving/handlers/validation.py: CapabilityError)
CAPABILITY_ROUTES = ("/classify", "/classify_image", "/explain", "/explain_image", "/reconstruct", "/perturb")
# BentoML logs every exception of an API call here ("Exception on /path [POST]" + traceback).
BENTOML_REQUEST_LOGGER = "bentoml._internal.server.http_app"


def error_message(status: int, raw: bytes) -> str:
    """The message in any of BentoML's error bodies (object, list, pydantic errors), as one string."""
    try:
        body: Any = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip() or f"HTTP {status}"
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if not isinstance(body, dict):
        return str(body)
    message, detail = str(body.get("error", f"HTTP {status}")), body.get("detail")
    if isinstance(detail, list):  # pydantic's errors: say where and what, drop the "N validation errors" title
        message = describe_validation_errors(detail) or message
    elif detail:
        message = f"{message}: {detail}"
    return message


def describe_validation_errors(errors: list[Any]) -> str:
    """pydantic's error list -> 'images: Field required; ...'."""
    def one(e: dict[str, Any]) -> str:
        where = ".".join(str(p) for p in e.get("loc", ()))
        return f"{where}: {str(e.get('msg', '')).removeprefix('Value error, ')}"

    return "; ".join(one(e) for e in errors if isinstance(e, dict))


async def send_error(send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


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
                    kept = [(k, v) for k, v in held.get("headers", []) if k.lower() not in
                            (b"content-length", b"content-type")]
                    await send_error(send, held["status"], error_message(held["status"], b"".join(chunks)), kept)
                return
            await send(message)

        await self.app(scope, receive, reshaping_send)


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """413 for request bodies over `max_bytes`, before the body is parsed (declared Content-Length,
    or counted while streaming)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        reject = f"request body over {self.max_bytes} bytes (CAPSNET_MAX_REQUEST_BYTES)"
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            log.warning("%s %s: 413 %s", scope["method"], scope["path"], reject)
            await send_error(send, 413, reject)
            return
        seen = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                log.warning("%s %s: 413 %s", scope["method"], scope["path"], reject)
                await send_error(send, 413, reject)


# Where the `model` field of a request body names its model: a JSON string value, or a multipart form
# field. Scanned in the raw bytes so that a refusal costs no parse; a body that names none (or hides the
# name, e.g. with escapes) counts against the default model, and BentoML still parses it properly.
JSON_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
FORM_MODEL_FIELD = re.compile(rb'name="model"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]{1,200})\r\n')


def model_named_in(body: bytes, multipart: bool) -> str | None:
    """The model a JSON or multipart body names in its `model` field, or None."""
    found = (FORM_MODEL_FIELD if multipart else JSON_MODEL_FIELD).search(body)
    return found.group(1).decode("utf-8", "replace") if found else None


async def read_body(receive: Any, limit: int | None = None) -> tuple[bytes, Any]:
    """The request body, and a receive that replays it to the app. With `limit`, at most about that
    many bytes are read: the replay then hands on the rest from `receive` (BodySizeLimit, further in,
    answers 413), and the bytes returned are only the beginning."""
    chunks, size, more = [], 0, False
    while limit is None or size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            break  # the client went away; the app sees an empty body
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if not more:
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> dict[str, Any]:
        # a whole body is replayed as often as asked (RequestGuard parses it, then the app reads it
        # again); a cut one once, then the rest comes from `receive`
        nonlocal replayed
        if replayed and more:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": more}

    return body, replay


class AdmissionGate:
    """Admission control for the APIs that feed a model's batcher, in front of BentoML's whole app
    (`gate_in_front`): a refusal costs uvicorn and this, not BentoML's request handling and middleware.

    `routes`: path -> the model it feeds (the low-level `infer` APIs), or None for the APIs whose body
    names the model (`classify`, `classify_image`; NAME or NAME:VERSION; none named, or one that
    `is_served` denies: `default_model`, so made-up names add no counters; the service answers those
    404). A request the model's admission refuses gets 503 + Retry-After at once. A 503 from inside
    (the model's batcher shed the request after the latency budget; serving/handlers/classify.py counted it) is
    answered the same way."""

    def __init__(self, app: Any, admission: Admission, routes: dict[str, str | None], default_model: str,
                 is_served: Callable[[str], bool], max_request_bytes: int | None = None) -> None:
        self.app, self.admission, self.routes, self.default_model = app, admission, routes, default_model
        self.is_served, self.max_request_bytes = is_served, max_request_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        model = self.routes[scope["path"]]
        if model is None:
            body, receive = await read_body(receive, self.max_request_bytes)
            named = (model_named_in(body, media_type(scope) == "multipart/form-data") or "").partition(":")[0]
            model = named if named and self.is_served(named) else self.default_model
        try:
            with self.admission.admit(model):
                await self.app(scope, receive, ShedAnswer(send, lambda: self.admission.refuse(
                    model, PAST_BUDGET, count=False)))
        except Overloaded as e:
            await send_overloaded(send, e)


async def send_overloaded(send: Any, e: Overloaded) -> None:
    await send_error(send, 503, str(e), [(b"retry-after", str(e.retry_after_s).encode())])


class ShedAnswer:
    """An ASGI `send` that replaces a 503 response with `shed()`'s Overloaded answer (Retry-After, and
    a message that says which setting governs it); every other response passes unchanged."""

    def __init__(self, send: Any, shed: Any) -> None:
        self.send, self.shed, self.replacing = send, shed, False

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] == 503:
            self.replacing = True
            return
        if not self.replacing:
            await self.send(message)
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            await send_overloaded(self.send, self.shed())


def media_type(scope: Scope) -> str:
    """The request's Content-Type without parameters, lower case ('' when absent)."""
    value = dict(scope.get("headers", [])).get(b"content-type", b"").decode("latin-1")
    return value.split(";")[0].strip().lower()


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
        _, replay = await read_body(receive)
        try:
            async with Request(scope, replay).form() as form:
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
            await send_error(send, 405, f"{scope['path']} is read-only: use GET", [(b"allow", b"GET")])


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


def complete_openapi(spec: dict[str, Any]) -> dict[str, Any]:
    """Say what BentoML's generated document leaves out: a request body with required fields is
    itself required, every API can answer 413 (body too large) and 503 (overloaded), and those that need
    a capability of the named model 422."""
    error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/InternalServerError"}}}}
    for route in READ_ONLY:  # served as GET, without a body (ReadOnlyRoutes)
        operations = spec.get("paths", {}).get(route, {})
        if "post" in operations:
            operations["get"] = operations.pop("post")
            operations["get"].pop("requestBody", None)
    for route, path in spec.get("paths", {}).items():
        operation = path.get("post")
        if not operation or "x-bentoml-name" not in operation:
            continue
        body = operation.get("requestBody", {})
        if any(media.get("schema", {}).get("required") for media in body.get("content", {}).values()):
            body["required"] = True
        responses = operation.setdefault("responses", {})
        responses.setdefault("413", {"description": "Request body over CAPSNET_MAX_REQUEST_BYTES", **error})
        if route in CAPABILITY_ROUTES:
            responses.setdefault("422", {"description": "The named model was exported without what this "
                                                        "needs (reconstructions, the explorer's graphs)", **error})
        responses.setdefault("503", {"description": "Overloaded: the model already had CAPSNET_MAX_QUEUE "
                                                    "requests, or this one waited longer than "
                                                    "CAPSNET_MAX_LATENCY_MS; retry after Retry-After seconds",
                                     **error})
    return spec


class ClientErrorsAsOneLine(logging.Filter):
    """Turns BentoML's "Exception on /path" ERROR + traceback into one WARNING line when the exception
    is the client's fault (invalid input: a 4xx), and drops it for a request shed as overloaded (503:
    the admission counts those and logs one summary line per interval); server faults keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import ServiceUnavailable

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ServiceUnavailable):
            return False
        status = client_error_status(exc)
        if status is not None:
            # BentoML's message is "Exception on %s [%s]" % (path, method): say it as our own lines do
            path, method = record.args if isinstance(record.args, tuple) and len(record.args) == 2 else ("?", "?")
            summary = describe_validation_errors(exc.errors()) if hasattr(exc, "errors") else str(exc)
            record.msg, record.args = "%s %s: %d %s", (method, path, status, summary)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def client_error_status(exc: BaseException | None) -> int | None:
    """The 4xx status BentoML answers for `exc`, or None if it is not a client error."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        return 400
    if isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500:
        return int(exc.error_code.value)
    return None


def install(service: Any, max_request_bytes: int, uploads: dict[str, str], admission: Admission,
            gated: dict[str, str | None], default_model: str, is_served: Callable[[str], bool]) -> None:
    """Add the middleware to a BentoML service (outermost first), the admission gate in front of
    BentoML's app, and the log filter.

    `uploads`: route -> the multipart field that must hold files (see RequestGuard); `gated`: the
    routes under admission control and the model each feeds (see AdmissionGate); `is_served`: whether a
    model name is served now.
    """
    service.add_asgi_middleware(ErrorShape)
    service.add_asgi_middleware(ApiDocs)
    service.add_asgi_middleware(ReadOnlyRoutes)
    service.add_asgi_middleware(BodySizeLimit, max_bytes=max_request_bytes)
    service.add_asgi_middleware(RequestGuard, uploads=uploads)
    gate_in_front(service, functools.partial(AdmissionGate, admission=admission, routes=gated,
                                             default_model=default_model, is_served=is_served,
                                             max_request_bytes=max_request_bytes))
    bentoml_logger = logging.getLogger(BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, ClientErrorsAsOneLine) for f in bentoml_logger.filters):
        bentoml_logger.addFilter(ClientErrorsAsOneLine())


def gate_in_front(service: Any, gate: Any) -> None:
    """Make `service.to_asgi()` (what `bentoml serve`'s worker hands to uvicorn, and what in-process
    clients use) return `gate(BentoML's app)`. BentoML puts the middleware we add behind its own
    (metrics, tracing, timeout, access log), which made a refusal there cost ~0.7 ms of the event loop
    against 0.15 ms on the lean OIP REST listener (docs/performance.md#overload). BentoML's Service is
    a slotted attrs class, so the override is a subclass that adds no fields; the bentoml pin (<1.5)
    and the overload tests guard it."""
    base = type(service)

    class GatedService(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def to_asgi(self, is_main: bool = True) -> Any:
            return gate(base.to_asgi(self, is_main))

    service.__class__ = GatedService


EXPLORER_DIR = Path(__file__).parents[1] / "explorer_page"


def explorer_page() -> StaticFiles:
    """The explorer page's static files (serving/explorer_page/), index.html at the folder's root."""
    return StaticFiles(directory=EXPLORER_DIR, html=True)
