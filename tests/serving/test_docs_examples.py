"""Every client example in the README and docs/ runs against a real server, so the docs cannot drift
from the code: each fenced ```bash or ```python block that talks to localhost:3000 (BentoML APIs),
:8000 (Open Inference Protocol REST) or :8001 (gRPC) is run as written, with the ports of a test
server serving a digit model as `capsnet-mnist` and a pair model as `capsnet-multimnist`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from export.registry import register_export
from tests.helpers import REPO
from tests.serving.server import CONTROL_KEY, ready_server

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SERVER = re.compile(r"localhost:(3000|8000|8001)")


def client_examples() -> list:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.finditer(text):
            language, code = block.groups()
            if SERVER.search(code):
                line = text[:block.start()].count("\n") + 1
                found.append(pytest.param(language, code, id=f"{doc.relative_to(REPO)}:{line}"))
    return found


EXAMPLES = client_examples()


def test_the_docs_have_client_examples_for_every_protocol():
    code = "\n".join(p.values[1] for p in EXAMPLES)
    for port in ("3000", "8000", "8001"):
        assert f"localhost:{port}" in code
    assert "capsnet-multimnist" in code and "pair.png" in code


@pytest.fixture(scope="module")
def server(registered, registered_pair):
    # the names the docs use: the task's served names
    mnist = register_export(Path(registered.path), "capsnet-mnist")
    # explicit model control: the repository examples unload and load a model
    yield from ready_server({"CAPSNET_MODEL_TAG": f"{mnist},{registered_pair.tag}", "CAPSNET_MAX_BATCH_SIZE": "8",
                             "CAPSNET_MODEL_CONTROL": "explicit", "CAPSNET_CONTROL_KEY": CONTROL_KEY})


@pytest.mark.parametrize(("language", "code"), EXAMPLES)
def test_a_client_example_runs_as_written(server, language, code):
    ports = {"3000": server.http_port, "8000": server.oip_port, "8001": server.grpc_port}
    code = SERVER.sub(lambda m: f"127.0.0.1:{ports[m.group(1)]}", code)
    if language == "bash":
        commands = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        assert all(line.startswith(("curl ", "  ")) for line in commands), \
            "a client block holds only curl commands (a server or set-up command belongs in its own block)"
        # every curl fails on an HTTP error status, as the reader would see it fail: the examples are
        # written for reading (`curl -s`), the test runs them strictly
        code = re.sub(r"^curl ", "curl --fail-with-body ", code, flags=re.M)
        command = ["bash", "-euo", "pipefail", "-c", code]
    else:
        command = [sys.executable, "-c", code]
    # the operator's shell holds the key the server was started with, as the examples expect
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CAPSNET_CONTROL_KEY": CONTROL_KEY})
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.strip() and '"error"' not in done.stdout, done.stdout[-2000:]
    if "/load" in code:  # a load recipe shows its result: the status, then the index with what serves
        assert done.stdout.startswith("200\n") and '"state":"READY"' in done.stdout.replace(" ", ""), done.stdout
