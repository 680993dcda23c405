"""The Open Inference Protocol v2 over REST (KServe / Triton HTTP), on a port of its own beside gRPC's,
the way Triton serves HTTP on 8000 and gRPC on 8001.

BentoML's HTTP path costs more per request than a small CapsNet does (docs/performance.md, "Load"), so this is a
lean ASGI app run by its own uvicorn server inside the service's process: no middleware, no schema
work, one route table. It feeds the same per-model batchers as the BentoML APIs and gRPC.

    GET  /v2                                      server metadata
    GET  /v2/health/live | /v2/health/ready       200, or 400 when not ready
    GET  /v2/models/NAME[/versions/V]             model metadata
    GET  /v2/models/NAME[/versions/V]/ready       200, or 400 when not ready
    GET  /v2/models/NAME[/versions/V]/config      Triton's ModelConfig as JSON
    POST /v2/models/NAME[/versions/V]/infer       JSON tensors, or the binary tensor data extension;
                                                  an output's parameters {"classification": k}: the top k
                                                  classes as "value:index:label" strings
    GET  /v2/models/stats                         statistics extension: every served version
    GET  /v2/models/NAME[/versions/V]/stats       ... of one model or version
    POST /v2/repository/index                     model repository extension: every known version, its state
    POST /v2/repository/models/NAME/load | unload (CAPSNET_MODEL_CONTROL=explicit)

This file only translates: routes and JSON or binary tensors to and from the data plane
(serving/oip/dataplane.py), which does the work for both transports. Errors are `{"error": "..."}` with
the status serving/errors.py gives each error (400 for a bad request or tensor, 403 for load/unload on
a server without model control, 404 for an unknown or unloaded model or version, 413 for a body over
CAPSNET_MAX_REQUEST_BYTES), and 404 / 405 for an unknown route or a wrong method; one log line each.
503 with Retry-After when the model is full (serving/engine/admission.py), decided before the body is
read; those are counted and summarised, not logged one by one.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from google.protobuf import json_format

from serving.asgi import Receive, Scope, Send, header, read_body, send_body
from serving.errors import InputError, RequestTooLarge, answer_for
from serving.handlers.control import CONTROL_KEY_HEADER
from serving.oip.dataplane import INPUT_NAME, DataPlane, InferRequest, InferResponse, TensorData
from serving.oip.tensors import datatype_of, raw_bytes

log = logging.getLogger(__name__)

HEADER_LENGTH = b"inference-header-content-length"  # the binary tensor data extension's header
Reply = tuple[int, bytes, dict[str, Any]]


class HttpError(Exception):
    """A request for a route or method this app does not have (404 / 405)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OipRestApp:
    """The ASGI app over `plane`; bodies over `max_request_bytes` are refused with 413."""

    def __init__(self, plane: DataPlane, max_request_bytes: int) -> None:
        self.plane, self.max_request_bytes = plane, max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            status, body, headers = await self.route(method, path.rstrip("/").split("/")[1:], scope, receive)
        except HttpError as e:
            status, body, headers = e.status, error_body(str(e)), {}
            log.warning("%s %s: %d %s", method, path, status, e)
        except Exception as e:
            answer = answer_for(e)
            status, body, headers = answer.status.http, error_body(answer.message), {}
            if answer.kind == "client":
                log.warning("%s %s: %d %s", method, path, status, answer.message)
            elif answer.kind == "overloaded":  # counted and summarised by the admission; no line per request
                headers = {"retry-after": answer.retry_after_s}
            else:
                log.exception("%s %s failed", method, path)
        await send_body(send, status, body, headers)

    async def route(self, method: str, parts: list[str], scope: Scope, receive: Receive) -> Reply:
        if parts[:1] != ["v2"]:
            raise HttpError(404, f"no route {scope['path']}; the Open Inference Protocol lives under /v2")
        rest = parts[1:]
        if rest in ([], ["health", "live"], ["health", "ready"]):
            expect(method, "GET")
            if not rest:
                return ok(self.plane.server_metadata())
            return readiness(rest[1] == "live" or self.plane.ready())
        if rest[:1] == ["repository"]:
            return await self.repository(method, rest[1:], scope, receive)
        if rest == ["models", "stats"]:
            expect(method, "GET")
            return ok({"model_stats": self.plane.statistics("", "")})
        if len(rest) < 2 or rest[0] != "models":
            raise HttpError(404, f"no route {scope['path']}")
        name, rest = rest[1], rest[2:]
        version = ""
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        self.plane.repository.find(name, version)  # an unknown model is a 404 before any other answer
        action = rest[0] if len(rest) == 1 else ("" if not rest else None)
        if action == "":
            expect(method, "GET")
            return ok(self.plane.model_metadata(name, version))
        if action == "ready":
            expect(method, "GET")
            return readiness(self.plane.model_ready(name, version))
        if action == "config":
            expect(method, "GET")
            return ok(config_json(self.plane.model_config(name, version)))
        if action == "stats":
            expect(method, "GET")
            return ok({"model_stats": self.plane.statistics(name, version)})
        if action == "infer":
            expect(method, "POST")
            with self.plane.admit(name, version):  # before the body is read: refusing costs next to nothing
                body = await self.body(receive)
                request, binary = split_body(body, header(scope, HEADER_LENGTH))
                asked = decode_infer(name, version, request, binary)
                return encode_infer(await self.plane.infer(asked), binary_outputs(request))
        raise HttpError(404, f"no route {scope['path']}")

    async def repository(self, method: str, rest: list[str], scope: Scope, receive: Receive) -> Reply:
        """The model repository extension: index, load, unload (POSTs with an optional JSON body)."""
        if rest not in (["index"],) and not (len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload")):
            raise HttpError(404, f"no route {scope['path']}; the repository has /index and /models/NAME/load|unload")
        expect(method, "POST")
        request, _ = split_body(await self.body(receive) or b"{}", None)
        if rest == ["index"]:
            return 200, json.dumps(self.plane.index(bool(request.get("ready")))).encode(), {}
        key = (header(scope, CONTROL_KEY_HEADER.encode()) or b"").decode("latin-1")
        if rest[2] == "unload":
            await self.plane.unload(rest[1], key)
        else:
            config = (request.get("parameters") or {}).get("config")
            if config is not None and not isinstance(config, str):
                raise InputError("parameters.config must be a JSON string (a model config), as tritonclient "
                                 "sends it")
            await self.plane.load(rest[1], config, key)
        return 200, b"", {}

    async def body(self, receive: Receive) -> bytes:
        body, more = await read_body(receive, self.max_request_bytes)
        if more or len(body) > self.max_request_bytes:
            raise RequestTooLarge(f"request body over {self.max_request_bytes} bytes (CAPSNET_MAX_REQUEST_BYTES)")
        return body


def expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"{method} not allowed here; use {allowed}")


def ok(document: dict[str, Any]) -> Reply:
    return 200, json.dumps(document).encode(), {}


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


def readiness(ready: bool) -> Reply:
    return (200, b"", {}) if ready else (400, error_body("not ready"), {})


def split_body(body: bytes, header_length: bytes | None) -> tuple[dict[str, Any], bytes]:
    """(the JSON inference request, the binary data after it): the whole body is JSON unless the
    Inference-Header-Content-Length header says where the JSON ends."""
    try:
        cut = len(body) if header_length is None else int(header_length.decode("latin-1"))
        if not 0 <= cut <= len(body):
            raise ValueError(f"{cut} is not within the {len(body)}-byte body")
        request = json.loads(body[:cut])
    except ValueError as e:  # a bad header value, or JSON that does not parse
        raise InputError(f"the request is not a JSON inference request: {e}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise InputError("the request is not a JSON inference request: nested too deeply") from None
    if not isinstance(request, dict):
        raise InputError("the request must be a JSON object")
    return request, body[cut:]


def decode_infer(name: str, version: str, request: dict[str, Any], binary: bytes) -> InferRequest:
    """The JSON inference request (and its binary data) as the data plane's request; InputError for
    one that is malformed."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError(f"expected 'inputs': a list with one tensor named {INPUT_NAME!r}")
    tensor = inputs[0]
    shape, size = tensor.get("shape"), (tensor.get("parameters") or {}).get("binary_data_size")
    if not isinstance(shape, list):
        raise InputError(f"input {INPUT_NAME!r} needs a 'shape' list")
    if size is not None:
        if not isinstance(size, int) or size != len(binary):
            raise InputError(f"binary_data_size {size!r} does not match the {len(binary)} bytes after the header")
        values: Any = binary
    elif "data" in tensor:
        values = tensor["data"]
    else:
        raise InputError(f"input {INPUT_NAME!r} has neither 'data' nor binary data")
    asked = request.get("outputs") or []
    if not isinstance(asked, list) or not all(isinstance(o, dict) and "name" in o for o in asked):
        raise InputError("'outputs' must be a list of {\"name\": ...}")
    class_counts = {o["name"]: (o.get("parameters") or {})["classification"] for o in asked
                    if "classification" in (o.get("parameters") or {})}
    if not all(isinstance(k, int) and not isinstance(k, bool) for k in class_counts.values()):
        raise InputError(f"classification must be a whole number of classes, got {class_counts}")
    return InferRequest(name, version, TensorData(tensor.get("name"), tensor.get("datatype"), shape, values),
                        [o["name"] for o in asked], class_counts, request.get("id"))


def binary_outputs(request: dict[str, Any]) -> dict[str, Any]:
    """Which outputs the request wants as binary data: per output asked, its own `binary_data`
    parameter; `None` (key) for every output not asked by name: the request's `binary_data_output`."""
    all_binary = bool((request.get("parameters") or {}).get("binary_data_output"))
    asked = request.get("outputs") or []
    return {None: all_binary, **{o["name"]: (o.get("parameters") or {}).get("binary_data") for o in asked}}


def encode_infer(response: InferResponse, binary: dict[Any, Any]) -> Reply:
    """The inference response: JSON tensors (FP32 numbers, or BYTES strings), and the binary ones
    appended after the JSON header."""
    tensors, blobs = [], []
    for output, array in response.outputs.items():
        datatype = datatype_of(array)
        tensor: dict[str, Any] = {"name": output, "datatype": datatype, "shape": list(array.shape)}
        if binary.get(output, binary[None]):
            blobs.append(raw_bytes(array))
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        elif datatype == "BYTES":
            tensor["data"] = [item.decode() for item in array.reshape(-1)]
        else:
            tensor["data"] = np.asarray(array, dtype=np.float32).reshape(-1).tolist()
        tensors.append(tensor)
    document: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version,
                                "outputs": tensors}
    if response.id is not None:
        document["id"] = response.id
    header_bytes = json.dumps(document).encode()
    if not blobs:
        return 200, header_bytes, {}
    return 200, header_bytes + b"".join(blobs), {"content-type": "application/octet-stream",
                                                 "inference-header-content-length": len(header_bytes)}


def config_json(config: Any) -> dict[str, Any]:
    """A ModelConfig message as Triton's HTTP API shows it (field names as in config.pbtxt, dims as numbers)."""
    document = json_format.MessageToDict(config, preserving_proto_field_name=True)
    for tensor in document.get("input", []) + document.get("output", []):
        tensor["dims"] = [int(d) for d in tensor.get("dims", [])]
    return document
