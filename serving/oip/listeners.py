"""The Open Inference Protocol servers of one service process, started and stopped together: gRPC
(serving/oip/grpc_service.py) and REST (serving/oip/rest.py), each on its own port, both feeding the same
per-model-version batchers, and `ServedOipModels`: what both see of the served models (serving/handlers/classify.py's
repository), so a model loaded or unloaded is seen by every protocol at once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from serving.engine.admission import Admission
from serving.engine.providers import CUDA
from serving.engine.repository import VersionPolicy
from serving.handlers.classify import ServedModel, ServingCore
from serving.oip.grpc_service import serve_over_grpc
from serving.oip.rest import OipHttpApp, serve_over_http
from serving.oip.types import ModelSource, OipModel
from serving.settings import ServingSettings


class ServedOipModels:
    """The served set as the protocols see it (a ModelSource): each version as an OipModel whose `infer`
    is the core's (its batcher, statistics and latency budget), statistics and the repository."""

    def __init__(self, core: ServingCore) -> None:
        self.core = core
        self.repository = core.repository

    def view(self, model: ServedModel) -> OipModel:
        versions = tuple(m.version for m in self.repository.served.get(model.name, [model]))
        return OipModel(model.version, functools.partial(self.core.predict, model=model), model.image_size,
                        model.output_dims, on_gpu=model.runtime.provider == CUDA,
                        class_names=tuple(model.class_names), versions=versions)

    def find(self, name: str, version: str) -> OipModel:
        return self.view(self.repository.find(name, version))

    def statistics(self, name: str, version: str) -> list[dict[str, Any]]:
        if not name:
            return [m.statistics.as_dict() for m in self.repository.models()]
        if version:
            return [self.repository.find(name, version).statistics.as_dict()]
        self.repository.find(name)  # UnknownModelError for a model not served
        return [m.statistics.as_dict() for m in self.repository.served[name]]

    def index(self, ready_only: bool) -> list[dict[str, str]]:
        return self.repository.index(ready_only)

    async def load(self, name: str, config: str | None) -> None:
        await self.repository.load(name, VersionPolicy.from_load_request(config))

    async def unload(self, name: str) -> None:
        await self.repository.unload(name)


class ProtocolServers:
    def __init__(self, grpc_server: Any, http_server: Any, http_task: Any) -> None:
        self.grpc_server, self.http_server, self.http_task = grpc_server, http_server, http_task

    @classmethod
    async def start(cls, models: ModelSource, is_ready: Callable[[], bool],
                    settings: ServingSettings, admission: Admission) -> ProtocolServers:
        grpc_server = await serve_over_grpc(models, is_ready, settings, admission)
        app = OipHttpApp(models, is_ready, settings.max_batch_size, settings.max_request_bytes, admission)
        try:
            return cls(grpc_server, *await serve_over_http(app, settings))
        except BaseException:  # the REST port is taken: release the gRPC one too, so a restart can bind it
            await grpc_server.stop(grace=None)
            raise

    async def stop(self) -> None:
        await self.grpc_server.stop(grace=2)
        self.http_server.should_exit = True
        await self.http_task
