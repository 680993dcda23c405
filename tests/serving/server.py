"""A real `bentoml serve` on free ports for the tests.

Every server runs in its own process group and is killed at teardown; every wait and request has a
deadline, so a hung server fails the test instead of hanging CI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.helpers import REPO, free_port

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
# The operator's key of the test servers with model control on, and the header that carries it.
CONTROL_KEY = "test-operator-key"
OPERATOR = {"capsnet-control-key": CONTROL_KEY}


class Server:
    """`bentoml serve [TARGET]` in the repository root with the given environment (no target: the
    service in the source tree; else a built Bento's tag)."""

    def __init__(self, env: dict[str, str], target: str | None = None) -> None:
        self.http_port, self.grpc_port, self.oip_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "CAPSNET_GRPC_PORT": str(self.grpc_port),
                    "CAPSNET_OIP_HTTP_PORT": str(self.oip_port),
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

    def get(self, api: str, **kwargs) -> httpx.Response:
        return httpx.get(self.url + "/" + api, timeout=REQUEST_TIMEOUT, **kwargs)

    def grpc(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")

    def oip_http(self) -> httpclient.InferenceServerClient:
        """A stock Triton HTTP client on the Open Inference Protocol REST port."""
        return httpclient.InferenceServerClient(f"127.0.0.1:{self.oip_port}", network_timeout=REQUEST_TIMEOUT)


def ready_server(env: dict[str, str], target: str | None = None) -> Iterator[Server]:
    """For a fixture to `yield from`: a `bentoml serve` with `env`, ready, stopped afterwards. The free
    ports are chosen before the server binds them, so another process can take one in between (seen
    once in a full-suite run: "cannot bind the gRPC port"); then it starts once more on fresh ports."""
    s = Server(env, target)
    try:
        try:
            s.wait()
        except (RuntimeError, TimeoutError):
            if "cannot bind" not in s.output(tail=10**7):
                raise
            s.stop()
            s = Server(env, target)
            s.wait()
        yield s
    finally:
        s.stop()


# The same, for a test's own `with serving(env) as s:`.
serving = contextlib.contextmanager(ready_server)


def direct_outputs(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """What ONNX Runtime answers on a registered model's file (bentoml.Model), output name -> array: the
    reference every served answer is compared with."""
    session = ort.InferenceSession(model.path_of("model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"image": images}), strict=True))
