"""The GPU set-up without a GPU: the diagnosis of each failure, the CLI's one-line refusal here, and
that the dependency set `make setup GPU=1` installs resolves to one CUDA 13 stack."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from environment.check_gpu import CUDA, GpuFacts, problems
from export.bento import gpu_requirements as gpu_extra
from tests.helpers import REPO

WORKING = GpuFacts("2.13.0", "13.0", True, None, CUDA)


def test_a_working_set_up_has_no_problems():
    assert problems(WORKING) == []


@pytest.mark.parametrize("change, expected", [
    ({"torch_cuda": None, "torch_sees_gpu": False}, "is a CPU build.*force-reinstall torch==2.13.0"),
    ({"torch_sees_gpu": False}, "sees no GPU.*nvidia-smi"),
    ({"onnxruntime_cuda_unavailable": "the CUDA 13 / cuDNN 9 libraries failed to load (libcudnn.so.9)",
      "session_provider": None}, "ONNX Runtime cannot use CUDA: .*libcudnn.so.9"),
    ({"session_provider": "CPUExecutionProvider"}, "asked for CUDA ran on CPUExecutionProvider"),
])
def test_each_failure_is_named_with_its_fix(change, expected):
    import dataclasses

    found = problems(dataclasses.replace(WORKING, **change))
    assert len(found) == 1 and re.search(expected, found[0]), found


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_check_refuses_this_cpu_machine_in_one_message():
    result = subprocess.run([sys.executable, "-c", "from environment.check_gpu import main; raise SystemExit(main())"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "is a CPU build" in result.stderr


def gpu_requirements() -> list[str]:
    """What `make setup GPU=1` asks pip for: the Makefile's torch pin and the project's gpu extra."""
    torch_spec = re.search(r"^TORCH_SPEC \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)
    return [torch_spec, *gpu_extra()]


@pytest.mark.slow
def test_the_gpu_dependency_set_resolves_to_one_cuda_13_stack(tmp_path):
    # PyPI itself, without this machine's pip configuration (it holds the CPU torch wheel locally)
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull}
    report = tmp_path / "report.json"
    resolve = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--quiet",
               "--index-url", "https://pypi.org/simple", "--report", str(report), *gpu_requirements()]
    # fast-deps reads each wheel's metadata by HTTP range requests: without it pip downloads the whole
    # ~3 GB CUDA stack to read it (20 s here, against 7 s; the same 34 packages). It is experimental:
    # a pip that no longer knows it resolves the slow way.
    result = subprocess.run([*resolve, "--use-feature=fast-deps"], capture_output=True, text=True, timeout=240,
                            env=env)
    if result.returncode != 0 and "fast-deps" in result.stderr:
        result = subprocess.run(resolve, capture_output=True, text=True, timeout=240, env=env)
    if result.returncode != 0 and "NewConnectionError" in result.stderr + result.stdout and not os.environ.get("CI"):
        pytest.skip("PyPI is not reachable from here")
    assert result.returncode == 0, result.stderr[-3000:]
    installs = json.loads(report.read_text())["install"]
    resolved = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}
    assert resolved["torch"] == "2.13.0" and "nvidia-cudnn-cu13" in resolved
    assert resolved["nvidia-cuda-runtime"].startswith("13.")  # what onnxruntime-gpu 1.31 is built for
    assert tuple(int(p) for p in resolved["onnxruntime-gpu"].split(".")[:2]) >= (1, 31)
    assert not [name for name in resolved if name.endswith("-cu12")], "a CUDA 12 library in the CUDA 13 set"
