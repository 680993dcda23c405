"""Property-based contract tests (schemathesis) against a real `bentoml serve`, from the service's
own OpenAPI document: no 5xx, responses and status codes as documented, schema-invalid requests
rejected, schema-valid ones accepted (see schemathesis.toml for the one documented exception)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.serving.server import ARTIFACTS, serving

CONFIG = Path(__file__).with_name("schemathesis.toml")
MAX_EXAMPLES = 25  # per operation and phase: ~250 requests, a few seconds


@pytest.mark.slow
def test_the_openapi_contract_holds_under_fuzzing(registered):
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    assert st, "schemathesis (the dev extra) is not installed"
    # A batch limit of 2 keeps generated image arrays small; the schema carries the limit.
    with serving({"CAPSNET_MODEL_TAG": str(registered.tag), "CAPSNET_MAX_BATCH_SIZE": "2"}) as s:
        proc = subprocess.run(
            [st, "--config-file", str(CONFIG), "run", f"{s.url}/docs.json", "--max-examples", str(MAX_EXAMPLES),
             "--seed", "1", "--workers", "1", "--request-timeout", "30", "--no-color"],
            capture_output=True, text=True, timeout=240)
        if proc.returncode != 0:  # the whole report (long request bodies) as a test artifact
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "schemathesis.txt").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"report in {ARTIFACTS / 'schemathesis.txt'}:\n" + proc.stdout[-6000:] \
                + "\nserver log:\n" + s.output(3000)
        paths = httpx.get(f"{s.url}/docs.json", timeout=10).json()["paths"]
        operations = sum(len(methods) for methods in paths.values())  # every one of them was fuzzed
        assert re.search(rf"Operations:\s+{operations} selected / {operations} total", proc.stdout), proc.stdout[:2000]
        log = s.output(tail=10**8)
        assert "Traceback" not in log, log[-4000:]  # every rejection was a one-line client error
