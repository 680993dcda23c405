"""Serving settings, read once from the environment (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


DEFAULT_MODEL_TAG = "capsnet-mnist:latest"
# bentofile.yaml names the model a Bento is built with under this alias; BentoML resolves it to
# that exact version when it serves the built Bento (and to DEFAULT_MODEL_TAG from the source tree).
BENTO_MODEL_ALIAS = "capsnet-bento-model"


@dataclass(frozen=True)
class ServingSettings:
    model_tag: str | None = None  # CAPSNET_MODEL_TAG; unset: the Bento's own model, else the newest capsnet-mnist
    max_batch_size: int = 64  # CAPSNET_MAX_BATCH_SIZE: largest batch the model sees, and per request
    max_latency_ms: int = 1000  # CAPSNET_MAX_LATENCY_MS: requests queued longer are shed with 503
    grpc_port: int = 8001  # CAPSNET_GRPC_PORT
    require_gpu: bool = False  # CAPSNET_REQUIRE_GPU: readiness fails unless CUDA is in use
    max_request_bytes: int = 8 << 20  # CAPSNET_MAX_REQUEST_BYTES: larger bodies get 413
    workers: int = 1  # CAPSNET_WORKERS: server processes; each has its own model session and batcher
    in_process_batcher: bool = True  # CAPSNET_IN_PROCESS_BATCHER: off = BentoML's slower self.to_async

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingSettings:
        env = dict(os.environ if env is None else env)
        d = cls()
        settings = cls(
            model_tag=env.get("CAPSNET_MODEL_TAG") or None,
            max_batch_size=int(env.get("CAPSNET_MAX_BATCH_SIZE", d.max_batch_size)),
            max_latency_ms=int(env.get("CAPSNET_MAX_LATENCY_MS", d.max_latency_ms)),
            grpc_port=int(env.get("CAPSNET_GRPC_PORT", d.grpc_port)),
            require_gpu=_flag(env.get("CAPSNET_REQUIRE_GPU", "false")),
            max_request_bytes=int(env.get("CAPSNET_MAX_REQUEST_BYTES", d.max_request_bytes)),
            workers=int(env.get("CAPSNET_WORKERS", d.workers)),
            in_process_batcher=_flag(env.get("CAPSNET_IN_PROCESS_BATCHER", "true")),
        )
        if settings.max_batch_size < 2:
            raise ValueError("CAPSNET_MAX_BATCH_SIZE must be at least 2")
        if settings.workers < 1:
            raise ValueError("CAPSNET_WORKERS must be at least 1")
        return settings
