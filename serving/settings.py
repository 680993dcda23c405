"""Serving settings, read once from the environment (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


DEFAULT_MODEL_TAG = "capsnet-mnist:latest"
# bentofile.yaml names the model a Bento is built with under this alias; `bentoml build` records
# it in the Bento's bento.yaml with its exact version, which `bento_model_tag` reads back.
BENTO_MODEL_ALIAS = "capsnet-bento-model"


def bento_model_tag(source_root: Path) -> str | None:
    """The exact model tag a built Bento was built with, or None when `source_root` (the folder
    holding serving/) is not the src/ folder of a built Bento (e.g. the repository itself).

    A Bento is laid out as <bento>/bento.yaml + <bento>/src/<our files>. (BentoML's own alias
    resolution does not reach the service's import in a served Bento, so we read the file.)
    """
    bento_yaml = source_root.parent / "bento.yaml"
    if source_root.name != "src" or not bento_yaml.is_file():
        return None
    info = yaml.safe_load(bento_yaml.read_text()) or {}
    for model in info.get("models") or []:
        if isinstance(model, dict) and model.get("alias") == BENTO_MODEL_ALIAS:
            return str(model["tag"])
    return None


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
