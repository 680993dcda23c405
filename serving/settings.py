"""Serving settings, read once from the environment (documented in docs/serving.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from serving.engine.policies import parse_policies
from serving.engine.version import Batching


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


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

    @property
    def batching(self) -> Batching:
        return Batching(self.max_batch_size, self.max_latency_ms, self.max_queue_delay_ms)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingSettings:
        env = dict(os.environ if env is None else env)
        d = cls()
        settings = cls(
            model_tags=tuple(t.strip() for t in env.get("CAPSNET_MODEL_TAG", "").split(",") if t.strip()),
            max_batch_size=int(env.get("CAPSNET_MAX_BATCH_SIZE", d.max_batch_size)),
            max_latency_ms=int(env.get("CAPSNET_MAX_LATENCY_MS", d.max_latency_ms)),
            max_queue_delay_ms=float(env.get("CAPSNET_MAX_QUEUE_DELAY_MS", d.max_queue_delay_ms)),
            max_queue=int(env.get("CAPSNET_MAX_QUEUE", d.max_queue)),
            retry_after_s=int(env.get("CAPSNET_RETRY_AFTER_S", d.retry_after_s)),
            grpc_port=int(env.get("CAPSNET_GRPC_PORT", d.grpc_port)),
            oip_http_port=int(env.get("CAPSNET_OIP_HTTP_PORT", d.oip_http_port)),
            require_gpu=_flag(env.get("CAPSNET_REQUIRE_GPU", "false")),
            max_request_bytes=int(env.get("CAPSNET_MAX_REQUEST_BYTES", d.max_request_bytes)),
            workers=int(env.get("CAPSNET_WORKERS", d.workers)),
            version_policy=env.get("CAPSNET_VERSION_POLICY", d.version_policy).strip() or d.version_policy,
            model_control=env.get("CAPSNET_MODEL_CONTROL", d.model_control).strip().lower() or d.model_control,
            access_log=_flag(env.get("CAPSNET_ACCESS_LOG", "false")),
        )
        if settings.max_batch_size < 2:
            raise ValueError("CAPSNET_MAX_BATCH_SIZE must be at least 2")
        if not 0 <= settings.max_queue_delay_ms < settings.max_latency_ms:
            raise ValueError("CAPSNET_MAX_QUEUE_DELAY_MS must be at least 0 and below CAPSNET_MAX_LATENCY_MS")
        if settings.max_queue < 1:
            raise ValueError("CAPSNET_MAX_QUEUE must be at least 1")
        if settings.retry_after_s < 1:
            raise ValueError("CAPSNET_RETRY_AFTER_S must be at least 1 (HTTP's Retry-After counts whole seconds)")
        if settings.workers < 1:
            raise ValueError("CAPSNET_WORKERS must be at least 1")
        if settings.model_control not in ("none", "explicit"):
            raise ValueError(f"CAPSNET_MODEL_CONTROL must be none or explicit, not {settings.model_control!r}")
        if settings.model_control == "explicit" and settings.workers > 1:
            # each worker process holds its own models: a load would reach only the worker that got it
            raise ValueError("CAPSNET_MODEL_CONTROL=explicit needs CAPSNET_WORKERS=1 (each worker holds its own "
                             "models, and a load request reaches one of them); scale out with more servers instead")
        try:
            parse_policies(settings.version_policy)
        except ValueError as e:
            raise ValueError(f"CAPSNET_VERSION_POLICY: {e}") from None
        return settings
