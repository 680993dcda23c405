"""Admission control for the BentoML APIs, in front of BentoML's whole app (`gate_in_front`): a
refusal costs uvicorn and this, not BentoML's request handling and middleware (~0.7 ms of the event
loop against 0.15 ms on the lean OIP REST listener, docs/performance.md#overload)."""

from __future__ import annotations

import re
from typing import Any

from serving.asgi import Receive, Scope, Send, media_type, read_body, replaying, send_error
from serving.engine.admission import Admission
from serving.engine.policies import split_tag
from serving.engine.repository import ModelRepository
from serving.errors import Overloaded

# Where the `model` field of a request body names its model: a JSON string value, or a multipart form
# field. Scanned in the raw bytes so that a refusal costs no parse; a body that names none (or hides the
# name, e.g. with escapes) counts against the default model, and BentoML still parses it properly.
JSON_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
FORM_MODEL_FIELD = re.compile(rb'name="model"[^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n([^\r\n]{1,200})\r\n')


def model_named_in(body: bytes, multipart: bool) -> str | None:
    """The model a JSON or multipart body names in its `model` field, or None."""
    found = (FORM_MODEL_FIELD if multipart else JSON_MODEL_FIELD).search(body)
    return found.group(1).decode("utf-8", "replace") if found else None


class AdmissionGate:
    """`routes`: path -> the model it feeds (the low-level `infer` APIs), or None for the APIs whose
    body names the model (NAME or NAME:VERSION; none named, or one `repository` does not serve: the
    default model, so made-up names add no counters; the service answers those 404). A request the
    model's admission refuses gets 503 + Retry-After at once. A request admitted here and shed later,
    past the latency budget, is answered by the service (serving/bento/answers.py)."""

    def __init__(self, app: Any, admission: Admission, repository: ModelRepository, routes: dict[str, str | None],
                 max_request_bytes: int | None = None) -> None:
        self.app, self.admission, self.repository, self.routes = app, admission, repository, routes
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.routes:
            await self.app(scope, receive, send)
            return
        model = self.routes[scope["path"]]
        if model is None:
            body, more = await read_body(receive, self.max_request_bytes)
            receive = replaying(receive, body, more)
            named = split_tag(model_named_in(body, media_type(scope) == "multipart/form-data") or "")[0]
            model = named if named and self.repository.serves(named) else self.repository.default_name
        try:
            with self.admission.admit(model):
                await self.app(scope, receive, send)
        except Overloaded as e:
            await send_error(send, 503, str(e), {"retry-after": e.retry_after_s})


def gate_in_front(service: Any, gate: Any) -> None:
    """Make `service.to_asgi()` (what `bentoml serve`'s worker hands to uvicorn, and what in-process
    clients use) return `gate(BentoML's app)`. BentoML puts the middleware we add behind its own
    (metrics, tracing, timeout, access log). BentoML's Service is a slotted attrs class, so the
    override is a subclass that adds no fields; the bentoml pin (<1.5) and the overload tests guard it."""
    base = type(service)

    class GatedService(base):  # type: ignore[misc, valid-type]
        __slots__ = ()

        def to_asgi(self, is_main: bool = True) -> Any:
            return gate(base.to_asgi(self, is_main))

    service.__class__ = GatedService
