"""Every error a request to the server can meet, and what each protocol answers for it, in one table.

The layers below raise these; each front end (the BentoML APIs in serving/bento/, OIP REST in
serving/oip/rest.py, OIP gRPC in serving/oip/grpc_service.py) translates through `status_of`, so an
error added here with its row in STATUS answers correctly on every protocol. Anything else a request
raises is a server fault: 500 / INTERNAL, logged with its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass

QUEUE_FULL = "queue full"  # refused at the door: the model already has max_queue requests
PAST_BUDGET = "past latency budget"  # admitted, then shed by the model's batcher after CAPSNET_MAX_LATENCY_MS
SETTING_OF = {QUEUE_FULL: "CAPSNET_MAX_QUEUE", PAST_BUDGET: "CAPSNET_MAX_LATENCY_MS"}


class InputError(ValueError):
    """The request is wrong; the message says how, in terms a client can act on."""


class CapabilityError(InputError):
    """The request is well formed, but the model it names cannot do it (exported without the outputs
    it needs): HTTP 422, not 400."""


class RequestTooLarge(InputError):
    """The request body is over CAPSNET_MAX_REQUEST_BYTES."""


class UnknownModelError(LookupError):
    """A request named a model or version this server does not serve."""


class ModelControlDisabled(PermissionError):
    """Load/unload asked of a server started without CAPSNET_MODEL_CONTROL=explicit."""


class ControlKeyMissing(PermissionError):
    """A load or unload without the operator's key (CAPSNET_CONTROL_KEY)."""


class ControlKeyWrong(PermissionError):
    """A load or unload whose key is not the operator's."""


class ModelOutputError(RuntimeError):
    """The model produced values we refuse to return (NaN/Inf): a server fault, not the client's."""


class Overloaded(Exception):
    """A request this server will not serve now, but would later: HTTP 503 with Retry-After, gRPC
    UNAVAILABLE. `reason` is QUEUE_FULL or PAST_BUDGET."""

    def __init__(self, model: str, reason: str, retry_after_s: int, limit: int | None = None) -> None:
        self.model, self.reason, self.retry_after_s = model, reason, retry_after_s
        if reason == QUEUE_FULL:
            why = f"model {model} already has {limit} requests waiting"
        else:
            why = f"the request waited longer than the latency budget for model {model}"
        super().__init__(f"server overloaded: {why} ({SETTING_OF[reason]}); retry after {retry_after_s} s")


@dataclass(frozen=True)
class Status:
    """What one error answers: an HTTP status and a gRPC status code (by its grpc.StatusCode name)."""

    http: int
    grpc: str


STATUS: dict[type[BaseException], Status] = {
    InputError: Status(400, "INVALID_ARGUMENT"),
    CapabilityError: Status(422, "INVALID_ARGUMENT"),
    RequestTooLarge: Status(413, "RESOURCE_EXHAUSTED"),
    UnknownModelError: Status(404, "NOT_FOUND"),
    ModelControlDisabled: Status(403, "FAILED_PRECONDITION"),
    ControlKeyMissing: Status(401, "UNAUTHENTICATED"),
    ControlKeyWrong: Status(403, "PERMISSION_DENIED"),
    Overloaded: Status(503, "UNAVAILABLE"),
    ModelOutputError: Status(500, "INTERNAL"),
}
SERVER_FAULT = Status(500, "INTERNAL")


FAULT_MESSAGE = "inference failed; see the server log"  # what a client hears of a server fault


@dataclass(frozen=True)
class Answer:
    """How a front end answers an error: its status, the message the client sees, and how it is logged:
    "client" (one WARNING line), "overloaded" (counted and summarised by the admission, no line, with
    Retry-After) or "fault" (the traceback, and a generic message)."""

    status: Status
    message: str
    kind: str
    retry_after_s: int | None = None


def answer_for(error: BaseException) -> Answer:
    """The one translation of an exception into what every protocol answers."""
    status = status_of(error)
    if isinstance(error, Overloaded):
        return Answer(STATUS[Overloaded], str(error), "overloaded", error.retry_after_s)
    if status is not None and 400 <= status.http < 500:
        return Answer(status, str(error), "client")
    return Answer(SERVER_FAULT, FAULT_MESSAGE, "fault")


def status_of(error: BaseException) -> Status | None:
    """The row of STATUS for `error` (its most specific class that has one), or None: not ours."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return None


def is_client_error(error: BaseException) -> bool:
    """A mistake of the client's (a 4xx): logged as one line, never with a traceback."""
    status = status_of(error)
    return status is not None and 400 <= status.http < 500
