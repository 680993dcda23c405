"""The Open Inference Protocol servers of one service process, started and stopped together: gRPC
(serving/grpc_server.py) and REST (serving/oip_http.py), each on its own port, both feeding the same
per-model batchers through the models' `infer`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from serving.admission import Admission
from serving.grpc_server import serve_over_grpc
from serving.oip import OipModel
from serving.oip_http import OipHttpApp, serve_over_http
from serving.settings import ServingSettings


class ProtocolServers:
    def __init__(self, grpc_server: Any, http_server: Any, http_task: Any) -> None:
        self.grpc_server, self.http_server, self.http_task = grpc_server, http_server, http_task

    @classmethod
    async def start(cls, models: dict[str, OipModel], is_ready: Callable[[], bool],
                    settings: ServingSettings, admission: Admission) -> ProtocolServers:
        grpc_server = await serve_over_grpc(models, is_ready, settings, admission)
        app = OipHttpApp(models, is_ready, settings.max_batch_size, settings.max_request_bytes, admission)
        return cls(grpc_server, *await serve_over_http(app, settings))

    async def stop(self) -> None:
        await self.grpc_server.stop(grace=2)
        self.http_server.should_exit = True
        await self.http_task
