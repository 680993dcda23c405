"""Serving fixtures: a tiny model registered in the test session's BentoML store, and a real
`bentoml serve` on free ports.

Every server runs in its own process group and is killed at teardown; every wait and request has a
deadline, so a hung server fails the test instead of hanging CI.
"""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import bentoml
import httpx
import pytest
import tritonclient.grpc as grpcclient
from starlette.testclient import TestClient

from export.onnx_export import export_onnx
from export.registry import register_export
from tests.conftest import REPO, free_port

# screenshots and reports the tests leave behind (CI may collect the folder)
ARTIFACTS = Path(os.environ.get("CAPSNET_TEST_ARTIFACTS", REPO / "test-artifacts"))
START_TIMEOUT = 90  # seconds for `bentoml serve` to become ready (15 s is typical here)
REQUEST_TIMEOUT = 30
GRPC_TIMEOUT = 30
# BentoML sheds (503) every request queued longer than the latency cap, and a fresh server runs its
# first ~20 calls one at a time while it fits the model's latency. On a slow CI machine a burst of
# 32 clients waited past a 100 ms cap (CI run of 82f193d: 503s in two load tests), so test servers
# get a cap far above any wait here; they test batching and answers, not load shedding.
TEST_LATENCY_CAP_MS = "20000"


class Server:
    """`bentoml serve [TARGET]` in the repository root with the given environment (no target: the
    service in the source tree; else a built Bento's tag)."""

    def __init__(self, env: dict[str, str], target: str | None = None) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "CAPSNET_GRPC_PORT": str(self.grpc_port),
                    "CAPSNET_MAX_LATENCY_MS": TEST_LATENCY_CAP_MS, **env}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", *([target] if target else []), "--host", "127.0.0.1",
             "--port", str(self.http_port)],
            cwd=REPO, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self, tail: int = 5000) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-tail:]

    def wait(self, path: str = "/readyz", status: int = 200) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == status:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{path} did not answer {status} within {START_TIMEOUT} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        os.unlink(self.log.name)

    def post(self, api: str, **kwargs) -> httpx.Response:
        return httpx.post(self.url + "/" + api, timeout=REQUEST_TIMEOUT, **kwargs)

    def grpc(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")


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


def ready_server(env: dict[str, str]) -> Iterator[Server]:
    """For a fixture to `yield from`: a `bentoml serve` with `env`, ready, stopped afterwards."""
    s = Server(env)
    try:
        s.wait()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def server(registered):
    yield from ready_server({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_MAX_BATCH_SIZE": "16"})




IN_PROCESS_ENV = {"CAPSNET_MAX_BATCH_SIZE": "16", "CAPSNET_MAX_REQUEST_BYTES": str(1 << 20)}


@pytest.fixture(scope="session")
def service(registered):
    """serving.service imported with this model and settings. The service reads them once, at import,
    so the environment is restored right after; one import per test session (BentoML registers its
    Prometheus metrics once per process: a second app in the same process cannot start)."""
    saved = {k: os.environ.get(k) for k in [*IN_PROCESS_ENV, "CAPSNET_MODEL_TAG", "CAPSNET_GRPC_PORT"]}
    os.environ.update({**IN_PROCESS_ENV, "CAPSNET_MODEL_TAG": str(registered.tag),
                       "CAPSNET_GRPC_PORT": str(free_port())})
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
