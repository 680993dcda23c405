"""The few ASGI steps both HTTP front ends take (the lean OIP REST app, serving/oip/rest.py, and our
middleware around BentoML's app, serving/bento/): reading a body up to a limit and handing it on,
reading a header, and answering with JSON."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def read_body(receive: Receive, limit: int | None = None) -> tuple[bytes, bool]:
    """The request body, or with `limit` its beginning once more than `limit` bytes arrived: (the bytes
    read, whether more is still to come). A client that goes away ends the body."""
    chunks, size, more = [], 0, False
    while limit is None or size <= limit:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if not more:
            break
    return b"".join(chunks), more


def replaying(receive: Receive, body: bytes, more: bool) -> Receive:
    """A receive that hands `body` (what `read_body` read) to the app once, then passes every later
    call on to `receive`: the rest of a cut body, and the `http.disconnect` an app (a streamed
    FileResponse) waits for. Replaying the body forever would spin such an app. A middleware that
    parses the body itself makes one replay for its parse and a fresh one for the app."""
    replayed = False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return await receive()
        replayed = True
        return {"type": "http.request", "body": body, "more_body": more}

    return replay


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header's value (`name` in lower case), or None."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value
    return None


def media_type(scope: Scope) -> str:
    """The request's Content-Type without parameters, lower case ('' when absent)."""
    value = (header(scope, b"content-type") or b"").decode("latin-1")
    return value.split(";")[0].strip().lower()


async def send_body(send: Send, status: int, body: bytes, headers: Mapping[str, Any] | None = None,
                    content_type: str = "application/json") -> None:
    """One whole response: `body` with its length, `content_type` unless `headers` names another."""
    fields = {"content-type": content_type, **(headers or {}), "content-length": len(body)}
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.encode(), str(v).encode()) for k, v in fields.items()]})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, status: int, message: str, headers: Mapping[str, Any] | None = None) -> None:
    """The error shape every HTTP answer of ours has: `{"error": "<message>"}`."""
    await send_body(send, status, json.dumps({"error": message}).encode(), headers)
