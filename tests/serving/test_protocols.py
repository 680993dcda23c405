"""Starting the protocol servers (serving/oip/listeners.py) when a port is taken."""

from __future__ import annotations

import socket

import pytest

from serving.oip.listeners import ProtocolServers
from serving.settings import ServingSettings
from tests.helpers import free_port
from tests.serving.fakes import Blocking, dataplane, run


def test_a_taken_rest_port_fails_the_start_and_releases_the_grpc_port():
    squatter = socket.socket()
    squatter.bind(("0.0.0.0", 0))
    squatter.listen()
    grpc_port = free_port()
    settings = ServingSettings(grpc_port=grpc_port, oip_http_port=squatter.getsockname()[1])
    try:
        with pytest.raises(RuntimeError, match="cannot bind the OIP REST port"):
            run(ProtocolServers.start(dataplane(Blocking()), settings))
        with socket.socket() as again:  # free again: a restarted worker can bind it
            again.bind(("0.0.0.0", grpc_port))
    finally:
        squatter.close()
