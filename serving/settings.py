"""Serving settings, read once from the environment (documented in docs/serving.md)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from serving.engine.policies import parse_policies
from serving.engine.version import Batching

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _flag(env: dict[str, str], name: str) -> bool:
    """A boolean setting: one of the spellings of true or false, anything else an error (a typo such
    as `ture` must not quietly mean false)."""
    value = env.get(name, "").strip().lower()
    if value not in TRUE + FALSE:
        raise ValueError(f"{name} must be true or false (1/0, yes/no, on/off), not {env[name]!r}")
    return value in TRUE


def _number(env: dict[str, str], name: str, default: int | float) -> int | float:
    """A numeric setting, of the type of its default; a value that is not one names the variable."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return type(default)(raw.strip())
    except ValueError:
        kind = "a whole number" if isinstance(default, int) else "a number"
        raise ValueError(f"{name} must be {kind}, not {raw!r}") from None


@dataclass(frozen=True)
class ServingSettings:
    # CAPSNET_MODEL_TAG: one or more comma-separated tags; unset: the models a Bento was built with,
    # else (the source tree) the newest version of every capsnet-* model in the store
    model_tags: tuple[str, ...] = ()
    max_batch_size: int = 64  # CAPSNET_MAX_BATCH_SIZE: largest batch the model sees, and per request
    max_latency_ms: int = 1000  # CAPSNET_MAX_LATENCY_MS: requests queued longer are shed with 503
    # CAPSNET_MAX_QUEUE_DELAY_MS: how long a batch that is not full waits for batch-mates (Triton's
    # max_queue_delay_microseconds). 0: none; under load batches fill while the model runs anyway.
    max_queue_delay_ms: float = 0.0
    # CAPSNET_MAX_QUEUE: requests each model admits at once, over every protocol; the next gets 503 +
    # Retry-After / UNAVAILABLE at once (serving/engine/admission.py). 128 = two full batches: measured
    # in benchmarks/overload.py, it keeps the batcher full and the wait well inside the latency budget.
    max_queue: int = 128
    # CAPSNET_RETRY_AFTER_S: what a refused request's Retry-After says. 2, not 1: in a queue of 128
    # that turns over ~4 times a second the place is there either way, and every early return is a
    # refusal the server must answer (docs/performance.md#overload).
    retry_after_s: int = 2
    grpc_port: int = 8001  # CAPSNET_GRPC_PORT
    oip_http_port: int = 8000  # CAPSNET_OIP_HTTP_PORT: the Open Inference Protocol over REST
    require_gpu: bool = False  # CAPSNET_REQUIRE_GPU: readiness fails unless CUDA is in use
    max_request_bytes: int = 8 << 20  # CAPSNET_MAX_REQUEST_BYTES: larger bodies get 413
    workers: int = 1  # CAPSNET_WORKERS: server processes; each has its own model session and batcher
    # CAPSNET_VERSION_POLICY: which registered versions of each model serve (serving/engine/repository.py):
    # `best` (highest validation accuracy), `latest[:N]`, `all`, `specific:V1,V2`; `NAME=POLICY` for one
    # model, entries separated by `;`. CAPSNET_MODEL_TAG's name:version pins win over it.
    version_policy: str = "best"
    # CAPSNET_MODEL_CONTROL: `explicit` allows loading and unloading models through the repository
    # extension (as Triton's --model-control-mode=explicit); `none` (default) serves a fixed set.
    model_control: str = "none"
    # CAPSNET_ACCESS_LOG: BentoML's line per HTTP request (~300 bytes; megabytes a minute under load).
    # Off by default: errors are logged one line each and refusals summed up (serving/engine/admission.py).
    access_log: bool = False
    # CAPSNET_CONTROL_KEY: the operator's key that load and unload must carry in the
    # `capsnet-control-key` header (REST) or request metadata (gRPC); required with model control
    # explicit (docs/security.md). Never printed: not in repr, not logged.
    control_key: str = field(default="", repr=False)

    @property
    def batching(self) -> Batching:
        return Batching(self.max_batch_size, self.max_latency_ms, self.max_queue_delay_ms)

    @classmethod
    def from_env_or_exit(cls) -> ServingSettings:
        """The settings of this process; an unusable value ends it with one line that names the
        variable and exit status 2 (a user's mistake, not a traceback)."""
        try:
            return cls.from_env()
        except ValueError as e:
            sys.stderr.write(f"\ncannot start the server: {e}\n\n")
            raise SystemExit(2) from None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingSettings:
        env = dict(os.environ if env is None else env)
        d = cls()
        settings = cls(
            model_tags=tuple(t.strip() for t in env.get("CAPSNET_MODEL_TAG", "").split(",") if t.strip()),
            max_batch_size=_number(env, "CAPSNET_MAX_BATCH_SIZE", d.max_batch_size),
            max_latency_ms=_number(env, "CAPSNET_MAX_LATENCY_MS", d.max_latency_ms),
            max_queue_delay_ms=_number(env, "CAPSNET_MAX_QUEUE_DELAY_MS", d.max_queue_delay_ms),
            max_queue=_number(env, "CAPSNET_MAX_QUEUE", d.max_queue),
            retry_after_s=_number(env, "CAPSNET_RETRY_AFTER_S", d.retry_after_s),
            grpc_port=_number(env, "CAPSNET_GRPC_PORT", d.grpc_port),
            oip_http_port=_number(env, "CAPSNET_OIP_HTTP_PORT", d.oip_http_port),
            require_gpu=_flag(env, "CAPSNET_REQUIRE_GPU"),
            max_request_bytes=_number(env, "CAPSNET_MAX_REQUEST_BYTES", d.max_request_bytes),
            workers=_number(env, "CAPSNET_WORKERS", d.workers),
            version_policy=env.get("CAPSNET_VERSION_POLICY", d.version_policy).strip() or d.version_policy,
            model_control=env.get("CAPSNET_MODEL_CONTROL", d.model_control).strip().lower() or d.model_control,
            access_log=_flag(env, "CAPSNET_ACCESS_LOG"),
            control_key=env.get("CAPSNET_CONTROL_KEY", "").strip(),
        )
        if settings.max_batch_size < 2:
            raise ValueError("CAPSNET_MAX_BATCH_SIZE must be at least 2")
        if settings.max_latency_ms < 1:
            raise ValueError("CAPSNET_MAX_LATENCY_MS must be at least 1")
        if not 0 <= settings.max_queue_delay_ms < settings.max_latency_ms:
            raise ValueError("CAPSNET_MAX_QUEUE_DELAY_MS must be at least 0 and below CAPSNET_MAX_LATENCY_MS")
        if settings.max_queue < 1:
            raise ValueError("CAPSNET_MAX_QUEUE must be at least 1")
        if settings.retry_after_s < 1:
            raise ValueError("CAPSNET_RETRY_AFTER_S must be at least 1 (HTTP's Retry-After counts whole seconds)")
        if settings.workers < 1:
            raise ValueError("CAPSNET_WORKERS must be at least 1")
        if settings.max_request_bytes < 1:
            raise ValueError("CAPSNET_MAX_REQUEST_BYTES must be at least 1")
        ports = {"CAPSNET_GRPC_PORT": settings.grpc_port, "CAPSNET_OIP_HTTP_PORT": settings.oip_http_port}
        for name, port in ports.items():
            if not 1 <= port <= 65535:
                raise ValueError(f"{name} must be a port number from 1 to 65535, not {port}")
        if settings.grpc_port == settings.oip_http_port:
            raise ValueError(f"CAPSNET_GRPC_PORT and CAPSNET_OIP_HTTP_PORT are both {settings.grpc_port}: "
                             "each protocol needs its own port")
        if settings.model_control not in ("none", "explicit"):
            raise ValueError(f"CAPSNET_MODEL_CONTROL must be none or explicit, not {settings.model_control!r}")
        if settings.model_control == "explicit" and settings.workers > 1:
            # each worker process holds its own models: a load would reach only the worker that got it
            raise ValueError("CAPSNET_MODEL_CONTROL=explicit needs CAPSNET_WORKERS=1 (each worker holds its own "
                             "models, and a load request reaches one of them); scale out with more servers instead")
        if settings.model_control == "explicit" and not settings.control_key:
            # load and unload change what every client gets: never open to whoever reaches the port
            raise ValueError("CAPSNET_MODEL_CONTROL=explicit needs CAPSNET_CONTROL_KEY, the operator's key that "
                             "load and unload requests must carry (docs/security.md)")
        try:
            parse_policies(settings.version_policy)
        except ValueError as e:
            raise ValueError(f"CAPSNET_VERSION_POLICY: {e}") from None
        return settings
