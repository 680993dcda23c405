"""Serving fixtures: a tiny model registered in the test session's BentoML store, and a real
`bentoml serve` on free ports (tests/serving/server.py)."""

from __future__ import annotations

import importlib
import os
import time

import bentoml
import pytest
from starlette.testclient import TestClient

from export.onnx_export import export_onnx
from export.registry import register_export
from tests.helpers import free_port
from tests.serving.server import ready_server


@pytest.fixture(scope="session")
def registered(tiny_checkpoint, synthetic_data_dir, tmp_path_factory) -> bentoml.Model:
    out = tmp_path_factory.mktemp("serve-export")
    # with everything the explorer needs (reconstruction, routing, primary lengths, decoder.onnx)
    export_onnx(tiny_checkpoint, out, data_dir=synthetic_data_dir, limit=32, with_reconstruction=True,
                with_routing=True, with_decoder=True)
    return bentoml.models.get(register_export(out, "capsnet-e2e"))


@pytest.fixture(scope="session")
def registered_pair(tiny_pair_checkpoint, synthetic_data_dir, tmp_path_factory) -> bentoml.Model:
    """A tiny two-digit (36x36) model with top-2 reconstructions, registered as capsnet-multimnist."""
    out = tmp_path_factory.mktemp("serve-pair-export")
    export_onnx(tiny_pair_checkpoint, out, data_dir=synthetic_data_dir, limit=16, with_top2=True,
                with_reconstruction=True, with_routing=True, with_decoder=True)
    return bentoml.models.get(register_export(out, "capsnet-multimnist"))


@pytest.fixture(scope="session")
def registered_fashion(tiny_fashion_checkpoint, synthetic_data_dir, tmp_path_factory) -> bentoml.Model:
    """A tiny Fashion-MNIST model with the explorer's graphs, registered under its task's served name."""
    out = tmp_path_factory.mktemp("serve-fashion-export")
    result = export_onnx(tiny_fashion_checkpoint, out, data_dir=synthetic_data_dir, limit=16, with_reconstruction=True,
                         with_routing=True, with_decoder=True)
    return bentoml.models.get(register_export(out, result["config"]["task"]["served_name"]))


@pytest.fixture(scope="session")
def oip_server(registered, registered_pair, registered_fashion):
    """One server for the OIP REST and several-models tests (one start fewer), which only read from it:
    the pair model listed first (the default must still be the single-digit one), the digit and the
    Fashion model, batches of 8. The model-control tests change what serves, so they have their own."""
    yield from ready_server({"CAPSNET_MODEL_TAG": f"{registered_pair.tag},{registered.tag},{registered_fashion.tag}",
                             "CAPSNET_MAX_BATCH_SIZE": "8"})


@pytest.fixture(scope="session")
def server(registered):
    """One server with the tiny digit model for the end-to-end and browser tests (one start fewer)."""
    # The tiny test model answers in well under a millisecond, so on a busy CI machine concurrent test
    # clients can arrive just too far apart to meet in the batcher: a 20 ms queue delay lets the
    # batching tests see batches (seen once: 64 requests from 32 threads, every one alone).
    yield from ready_server({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_MAX_BATCH_SIZE": "16",
                             "CAPSNET_MAX_QUEUE_DELAY_MS": "20"})




IN_PROCESS_ENV = {"CAPSNET_MAX_BATCH_SIZE": "16", "CAPSNET_MAX_REQUEST_BYTES": str(1 << 20)}


@pytest.fixture(scope="session")
def service(registered):
    """serving.service imported with this model and settings. The service reads them once, at import,
    so the environment is restored right after; one import per test session (BentoML registers its
    Prometheus metrics once per process: a second app in the same process cannot start)."""
    saved = {k: os.environ.get(k) for k in [*IN_PROCESS_ENV, "CAPSNET_MODEL_TAG", "CAPSNET_GRPC_PORT",
                                            "CAPSNET_OIP_HTTP_PORT"]}
    os.environ.update({**IN_PROCESS_ENV, "CAPSNET_MODEL_TAG": str(registered.tag),
                       "CAPSNET_GRPC_PORT": str(free_port()), "CAPSNET_OIP_HTTP_PORT": str(free_port())})
    try:
        module = importlib.import_module("serving.service")
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return module


@pytest.fixture(scope="session")
def client(service):
    """The service's ASGI app in-process (BentoML's to_asgi under Starlette's TestClient), ready."""
    with TestClient(service.CapsNetService.to_asgi()) as c:
        deadline = time.monotonic() + 30
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "in-process service never became ready"
            time.sleep(0.1)
        yield c
