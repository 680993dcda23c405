"""What an operator relies on, against one `bentoml serve --host 127.0.0.1` with model control on: every
listener binds that host; load and unload need the operator's key on REST and gRPC (stock tritonclient,
`headers=`); readiness is false on all three protocols once no model serves, and true again after a
load, while liveness never changes."""

from __future__ import annotations

import ipaddress

import httpx
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.serving.server import CONTROL_KEY, OPERATOR, ready_server


@pytest.fixture(scope="module")
def server(registered):
    yield from ready_server({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_MODEL_CONTROL": "explicit",
                             "CAPSNET_CONTROL_KEY": CONTROL_KEY})


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the server's processes listen on; an IPv4 address mapped
    into IPv6 (gRPC's socket for 127.0.0.1) as the IPv4 address it is."""
    root = psutil.Process(pid)
    return {(str(getattr(ipaddress.ip_address(c.laddr.ip), "ipv4_mapped", None) or c.laddr.ip), c.laddr.port)
            for p in (root, *root.children(recursive=True))
            for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}


def readiness(server) -> tuple[bool, bool, bool]:
    """(/readyz, OIP REST server ready, gRPC ServerReady)."""
    with server.oip_http() as rest, server.grpc() as grpc:
        return (httpx.get(server.url + "/readyz", timeout=10).status_code == 200, rest.is_server_ready(),
                grpc.is_server_ready())


def liveness(server) -> tuple[bool, bool, bool]:
    with server.oip_http() as rest, server.grpc() as grpc:
        return httpx.get(server.url + "/livez", timeout=10).status_code == 200, rest.is_server_live(), \
            grpc.is_server_live()


def test_every_listener_binds_the_one_host_setting(server):
    bound = listening(server.process.pid)
    ports = {server.http_port, server.oip_port, server.grpc_port}
    assert ports <= {port for _, port in bound}, bound
    assert {address for address, port in bound if port in ports} == {"127.0.0.1"}, bound


@pytest.mark.parametrize("headers, http_status, grpc_status", [
    ({}, "401", "StatusCode.UNAUTHENTICATED"),
    ({"capsnet-control-key": "a guess"}, "403", "StatusCode.PERMISSION_DENIED")])
def test_without_the_operators_key_nothing_unloads_on_either_transport(server, registered, headers, http_status,
                                                                       grpc_status):
    name = registered.tag.name
    with httpclient.InferenceServerClient(f"127.0.0.1:{server.oip_port}") as rest, \
            grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as grpc:
        for client, status in ((rest, http_status), (grpc, grpc_status)):
            for action in (client.unload_model, client.load_model):
                with pytest.raises(InferenceServerException) as refused:
                    action(name, headers=headers)
                assert refused.value.status() == status and "capsnet-control-key" in refused.value.message()
        assert rest.is_model_ready(name) and grpc.is_model_ready(name)
    assert readiness(server) == (True, True, True)
    assert CONTROL_KEY not in server.output(tail=10**7)  # never logged


def test_readiness_follows_the_last_unload_and_the_next_load_on_every_protocol(server, registered):
    name = registered.tag.name
    assert readiness(server) == (True, True, True)
    with server.oip_http() as rest, server.grpc() as grpc:
        rest.unload_model(name, headers=OPERATOR)
        assert readiness(server) == (False, False, False)  # no model: every inference would be a 404
        assert liveness(server) == (True, True, True)
        grpc.load_model(name, headers=OPERATOR)
    assert readiness(server) == (True, True, True)
    assert liveness(server) == (True, True, True)
