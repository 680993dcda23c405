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

Errors are `{"error": "..."}`: 400 for a bad request or tensor, 403 for load/unload on a server without
model control, 404 for an unknown (or unloaded) model, version or route, 405 for a wrong method, 413
for a body over CAPSNET_MAX_REQUEST_BYTES; one log line each.
503 with Retry-After when the model is full (serving/engine/admission.py), decided before the body is read;
those are counted and summarised, not logged one by one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import uvicorn
from google.protobuf import json_format

from serving.engine.admission import Admission, Overloaded
from serving.engine.repository import ModelControlDisabled, UnknownModelError
from serving.handlers.validation import InputError
from serving.oip.types import (
    EXTENSIONS,
    SERVER_NAME,
    SERVER_VERSION,
    ModelSource,
    OipModel,
    datatype_of,
    image_tensor,
    raw_bytes,
)
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

HEADER_LENGTH = "inference-header-content-length"  # the binary tensor data extension's header


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class OipHttpApp:
    """The ASGI app: `models` (the served set, serving/oip/listeners.py), `is_ready` for the health and
    readiness routes."""

    def __init__(self, models: ModelSource, is_ready: Callable[[], bool], max_images: int,
                 max_request_bytes: int, admission: Admission) -> None:
        self.models, self.is_ready = models, is_ready
        self.max_images, self.max_request_bytes = max_images, max_request_bytes
        self.admission = admission

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        try:
            status, body, headers = await self.route(method, path.rstrip("/").split("/")[1:], scope, receive)
        except (HttpError, UnknownModelError, ModelControlDisabled) as e:
            status = getattr(e, "status", 404 if isinstance(e, UnknownModelError) else 403)
            log.warning("%s %s: %d %s", method, path, status, e.args[0])
            body, headers = json.dumps({"error": e.args[0]}).encode(), {}
        except Overloaded as e:  # counted and summarised by the admission; no line per request
            status, body, headers = 503, json.dumps({"error": str(e)}).encode(), {"retry-after": e.retry_after_s}
        except Exception:
            log.exception("%s %s failed", method, path)
            status, body, headers = 500, b'{"error": "inference failed; see the server log"}', {}
        headers.setdefault("content-type", "application/json")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), str(v).encode()) for k, v in
                                {**headers, "content-length": len(body)}.items()]})
        await send({"type": "http.response.body", "body": body})

    async def route(self, method: str, parts: list[str], scope: dict[str, Any], receive: Callable
                    ) -> tuple[int, bytes, dict[str, Any]]:
        if parts[:1] != ["v2"]:
            raise HttpError(404, f"no route {scope['path']}; the Open Inference Protocol lives under /v2")
        rest = parts[1:]
        if rest in ([], ["health", "live"], ["health", "ready"]):
            expect(method, "GET")
            if not rest:
                return ok({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})
            return readiness(rest[1] == "live" or self.is_ready())
        if rest[:1] == ["repository"]:
            return await self.repository(method, rest[1:], scope, receive)
        if rest == ["models", "stats"]:
            expect(method, "GET")
            return ok({"model_stats": self.models.statistics("", "")})
        if len(rest) < 2 or rest[0] != "models":
            raise HttpError(404, f"no route {scope['path']}")
        name, rest = rest[1], rest[2:]
        version = ""
        if rest[:1] == ["versions"] and len(rest) >= 2:
            version, rest = rest[1], rest[2:]
        model = self.models.find(name, version)
        action = rest[0] if len(rest) == 1 else ("" if not rest else None)
        if action == "":
            expect(method, "GET")
            return ok(model.metadata(name))
        if action == "ready":
            expect(method, "GET")
            return readiness(self.is_ready())
        if action == "config":
            expect(method, "GET")
            return ok(config_json(model.config(name, self.max_images)))
        if action == "stats":
            expect(method, "GET")
            return ok({"model_stats": self.models.statistics(name, version)})
        if action == "infer":
            expect(method, "POST")
            with self.admission.admit(name):  # before the body is read: refusing costs next to nothing
                return await self.infer(name, model, scope, await self.body(scope, receive))
        raise HttpError(404, f"no route {scope['path']}")

    async def repository(self, method: str, rest: list[str], scope: dict[str, Any], receive: Callable
                         ) -> tuple[int, bytes, dict[str, Any]]:
        """The model repository extension: index, load, unload (POSTs with an optional JSON body)."""
        if rest not in (["index"],) and not (len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload")):
            raise HttpError(404, f"no route {scope['path']}; the repository has /index and /models/NAME/load|unload")
        expect(method, "POST")
        body = await self.body(scope, receive)
        request, _ = split_body(body or b"{}", None)
        if rest == ["index"]:
            return 200, json.dumps(self.models.index(bool(request.get("ready")))).encode(), {}
        if rest[2] == "unload":
            await self.models.unload(rest[1])
        else:
            config = (request.get("parameters") or {}).get("config")
            if config is not None and not isinstance(config, str):
                raise HttpError(400, "parameters.config must be a JSON string (a model config), as tritonclient "
                                     "sends it")
            try:
                await self.models.load(rest[1], config)
            except InputError as e:
                raise HttpError(400, str(e)) from None
        return 200, b"", {}

    async def body(self, scope: dict[str, Any], receive: Callable) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                raise HttpError(413, f"request body over {self.max_request_bytes} bytes (CAPSNET_MAX_REQUEST_BYTES)")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def infer(self, name: str, model: OipModel, scope: dict[str, Any], body: bytes
                    ) -> tuple[int, bytes, dict[str, Any]]:
        request, binary = split_body(body, header_value(scope, HEADER_LENGTH))
        try:
            images, wanted, binary_out, class_counts = self.parse(request, binary, model)
            model.check_classification(class_counts)
        except InputError as e:
            raise HttpError(400, str(e)) from None
        outputs = await model.infer(images)
        return respond(name, model.version, request.get("id"), model.answer(outputs, wanted, class_counts), binary_out)

    def parse(self, request: dict[str, Any], binary: bytes, model: OipModel
              ) -> tuple[np.ndarray, list[str], set[str], dict[str, int]]:
        """(validated images, outputs to return, those to return as binary data, those asked as the top
        k classes: output -> k)."""
        inputs = request.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            raise InputError("expected 'inputs': a list with one tensor named 'image'")
        tensor = inputs[0]
        shape, size = tensor.get("shape"), (tensor.get("parameters") or {}).get("binary_data_size")
        if not isinstance(shape, list):
            raise InputError("input 'image' needs a 'shape' list")
        if size is not None:
            if not isinstance(size, int) or size != len(binary):
                raise InputError(f"binary_data_size {size!r} does not match the {len(binary)} bytes after the header")
            values: Any = binary
        elif "data" in tensor:
            values = tensor["data"]
        else:
            raise InputError("input 'image' has neither 'data' nor binary data")
        images = image_tensor(tensor.get("name"), tensor.get("datatype"), shape, values, self.max_images,
                              model.image_size)
        asked = request.get("outputs") or []
        if not isinstance(asked, list) or not all(isinstance(o, dict) and "name" in o for o in asked):
            raise InputError("'outputs' must be a list of {\"name\": ...}")
        wanted = model.wanted_outputs([o["name"] for o in asked])
        all_binary = bool((request.get("parameters") or {}).get("binary_data_output"))
        flagged = {o["name"]: (o.get("parameters") or {}).get("binary_data") for o in asked}
        binary_out = {n for n in wanted if flagged.get(n, all_binary)}
        class_counts = {o["name"]: (o.get("parameters") or {})["classification"] for o in asked
                        if "classification" in (o.get("parameters") or {})}
        if not all(isinstance(k, int) and not isinstance(k, bool) for k in class_counts.values()):
            raise InputError(f"classification must be a whole number of classes, got {class_counts}")
        return images, wanted, binary_out, class_counts


def expect(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"{method} not allowed here; use {allowed}")


def ok(document: dict[str, Any]) -> tuple[int, bytes, dict[str, Any]]:
    return 200, json.dumps(document).encode(), {}


def readiness(ready: bool) -> tuple[int, bytes, dict[str, Any]]:
    return (200, b"", {}) if ready else (400, b'{"error": "not ready"}', {})


def header_value(scope: dict[str, Any], name: str) -> str | None:
    for key, value in scope.get("headers", []):
        if key.decode("latin-1").lower() == name:
            return value.decode("latin-1")
    return None


def split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], bytes]:
    """(the JSON inference request, the binary data after it): the whole body is JSON unless the
    Inference-Header-Content-Length header says where the JSON ends."""
    try:
        cut = len(body) if header_length is None else int(header_length)
        if not 0 <= cut <= len(body):
            raise ValueError(f"{cut} is not within the {len(body)}-byte body")
        request = json.loads(body[:cut])
    except ValueError as e:  # a bad header value, or JSON that does not parse
        raise HttpError(400, f"the request is not a JSON inference request: {e}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise HttpError(400, "the request is not a JSON inference request: nested too deeply") from None
    if not isinstance(request, dict):
        raise HttpError(400, "the request must be a JSON object")
    return request, body[cut:]


def respond(name: str, version: str, request_id: Any, outputs: dict[str, np.ndarray], binary: set[str]
            ) -> tuple[int, bytes, dict[str, Any]]:
    """The inference response: JSON tensors (FP32 numbers, or BYTES strings), and the binary ones appended
    after the JSON header."""
    tensors, blobs = [], []
    for output, array in outputs.items():
        datatype = datatype_of(array)
        tensor: dict[str, Any] = {"name": output, "datatype": datatype, "shape": list(array.shape)}
        if output in binary:
            blobs.append(raw_bytes(array))
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
        elif datatype == "BYTES":
            tensor["data"] = [item.decode() for item in array.reshape(-1)]
        else:
            tensor["data"] = np.asarray(array, dtype=np.float32).reshape(-1).tolist()
        tensors.append(tensor)
    document = {"model_name": name, "model_version": version, "outputs": tensors}
    if request_id is not None:
        document["id"] = request_id
    header = json.dumps(document).encode()
    if not blobs:
        return 200, header, {}
    return 200, header + b"".join(blobs), {"content-type": "application/octet-stream",
                                            "inference-header-content-length": len(header)}


def config_json(config: Any) -> dict[str, Any]:
    """A ModelConfig message as Triton's HTTP API shows it (field names as in config.pbtxt, dims as numbers)."""
    document = json_format.MessageToDict(config, preserving_proto_field_name=True)
    for tensor in document.get("input", []) + document.get("output", []):
        tensor["dims"] = [int(d) for d in tensor.get("dims", [])]
    return document


class _Server(uvicorn.Server):
    """uvicorn inside the service's own event loop: the BentoML server owns the signals; this one
    stops when the service shuts down (stop_oip_http)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_over_http(app: OipHttpApp, settings: ServingSettings) -> tuple[_Server, Any]:
    """Start the REST listener on 0.0.0.0:settings.oip_http_port; several workers share the port
    (SO_REUSEPORT). Returns the server and its task."""
    import asyncio

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if settings.workers > 1:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(("0.0.0.0", settings.oip_http_port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot bind the OIP REST port {settings.oip_http_port} ({e}); "
                           "set CAPSNET_OIP_HTTP_PORT") from None
    server = _Server(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                                    timeout_keep_alive=30))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    log.info("Open Inference Protocol v2 over REST listening on port %d", settings.oip_http_port)
    return server, task
