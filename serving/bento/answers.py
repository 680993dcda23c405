"""What a BentoML API answers: its value and the version that gave it (the X-CapsNet-Model header),
or, for one of our errors, the status serving/errors.py gives it with `{"error": "<message>"}`, one log
line for a client's mistake and Retry-After for an overload, built once where the error was raised.
A server fault is left to BentoML: 500 with a generic message, its traceback in the log.

Also the reading of BentoML's own error bodies (its 4xx for a request it could not parse), for the
error shape middleware and the log filter."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

import bentoml
from starlette.responses import JSONResponse

from serving.errors import answer_for
from serving.handlers.classify import Answered

log = logging.getLogger(__name__)

MODEL_HEADER = "X-CapsNet-Model"  # name:version of the model version that answered
T = TypeVar("T")


async def answered(ctx: bentoml.Context, work: Awaitable[Answered[T]]) -> T | JSONResponse:
    """The value `work` answers, with the version that gave it named in MODEL_HEADER; one of our
    errors as its JSON answer."""
    try:
        answer = await work
    except Exception as e:
        outcome = answer_for(e)
        if outcome.kind == "fault":
            raise
        headers = {}
        if outcome.kind == "overloaded":  # counted and summarised by the admission; no line per request
            headers["Retry-After"] = str(outcome.retry_after_s)
        else:
            log.warning("%s %s: %d %s", ctx.request.method, ctx.request.url.path, outcome.status.http,
                        outcome.message)
        # BentoML copies the context's status onto a returned response
        ctx.response.status_code = outcome.status.http
        return JSONResponse({"error": outcome.message}, status_code=outcome.status.http, headers=headers)
    ctx.response.headers[MODEL_HEADER] = answer.tag
    return answer.value


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
