"""The Open Inference Protocol's listeners in one service process, started and stopped together: gRPC
(serving/oip/grpc_service.py) and REST (serving/oip/rest.py), each on its own port, both over one data
plane (serving/oip/dataplane.py). A new transport is a translating front end plus a start here.

Both bind the address BentoML's HTTP listener is bound to (`bentoml serve --host`, or BENTOML_HOST):
one host setting for every port. The service worker is handed that listener as an open socket, so
the address is read from the socket itself (`http_host`), not from a second setting that could
disagree with it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import psutil
import uvicorn
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from serving.oip.dataplane import DataPlane
from serving.oip.grpc_service import InferenceServicer
from serving.oip.rest import OipRestApp
from serving.settings import ServingSettings

log = logging.getLogger(__name__)


# Where no BentoML listener is found (an in-process test client, a tool): the safe choice.
NO_HTTP_LISTENER_HOST = "127.0.0.1"


def http_host() -> str:
    """The address this process's BentoML HTTP listener is bound to (its only listening TCP socket
    before the protocol servers start), or NO_HTTP_LISTENER_HOST when it has none."""
    try:
        listening = [c.laddr.ip for c in psutil.Process().net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        listening = []
    if not listening:
        log.info("no HTTP listener in this process: the protocol servers bind %s", NO_HTTP_LISTENER_HOST)
    return listening[0] if listening else NO_HTTP_LISTENER_HOST


def address(host: str, port: int) -> str:
    """host:port as gRPC writes it ([::1]:8001 for an IPv6 host)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def start_grpc(plane: DataPlane, host: str, port: int, max_message_bytes: int, shared_port: bool = False
                     ) -> grpc.aio.Server:
    """An asyncio gRPC server on `host`:`port` serving the protocol over `plane`.

    `shared_port`: several server workers bind the same port (SO_REUSEPORT; the kernel spreads
    connections over them). Off, a port already taken is an error instead of silently shared with
    whatever holds it (gRPC's own default would share it)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.max_send_message_length", max_message_bytes),
                                      ("grpc.so_reuseport", int(shared_port))])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), server)
    try:  # gRPC reports a taken port by raising or by returning 0, depending on the version
        bound = server.add_insecure_port(address(host, port))
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise RuntimeError(f"cannot bind the gRPC port {port} (in use?); set CAPSNET_GRPC_PORT")
    await server.start()
    log.info("gRPC (Open Inference Protocol v2) listening on %s", address(host, port))
    return server


class _Uvicorn(uvicorn.Server):
    """uvicorn inside the service's own event loop: the BentoML server owns the signals; this one
    stops when the service shuts down (ProtocolServers.stop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def start_rest(app: OipRestApp, host: str, port: int, shared_port: bool = False) -> tuple[_Uvicorn, Any]:
    """The REST listener on `host`:`port` (`shared_port`: several workers share it, SO_REUSEPORT).
    Returns the server and its task."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RuntimeError(f"cannot bind the OIP REST port {port} ({e}); set CAPSNET_OIP_HTTP_PORT") from None
    server = _Uvicorn(uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                                     timeout_keep_alive=30))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    log.info("Open Inference Protocol v2 over REST listening on %s", address(host, port))
    return server, task


class ProtocolServers:
    """Both listeners of one process."""

    def __init__(self, grpc_server: Any, http_server: Any, http_task: Any) -> None:
        self.grpc_server, self.http_server, self.http_task = grpc_server, http_server, http_task

    @classmethod
    async def start(cls, plane: DataPlane, settings: ServingSettings) -> ProtocolServers:
        shared, host = settings.workers > 1, http_host()
        grpc_server = await start_grpc(plane, host, settings.grpc_port, settings.max_request_bytes, shared)
        try:
            return cls(grpc_server, *await start_rest(OipRestApp(plane, settings.max_request_bytes),
                                                      host, settings.oip_http_port, shared))
        except BaseException:  # the REST port is taken: release the gRPC one too, so a restart can bind it
            await grpc_server.stop(grace=None)
            raise

    async def stop(self) -> None:
        await self.grpc_server.stop(grace=2)
        self.http_server.should_exit = True
        await self.http_task
