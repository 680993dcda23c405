"""The Makefile's CPU set-up never resolves a CUDA package: torch comes from PyTorch's CPU wheel index
and the project's dependencies then find it installed. Resolved (pip --dry-run --report) with the same
index the Makefile uses; skipped, saying why, where that index is out of reach (the set-up then falls
back to the plain pin, which only machines with a local CPU wheel, like ours, should rely on)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from tests.helpers import REPO

CUDA_PACKAGE = re.compile(r"^(nvidia-|cuda-|triton$)")


def makefile_value(name: str) -> str:
    return re.search(rf"^{name} \?= (\S+)$", (REPO / "Makefile").read_text(), re.M).group(1)


def dry_run(tmp_path, name: str, *args: str) -> dict[str, str]:
    """What pip would install for `args`, without this machine's pip configuration: name -> version."""
    report = tmp_path / f"{name}.json"
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed",
                             "--quiet", "--report", str(report), *args], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PIP_CONFIG_FILE": os.devnull}, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


@pytest.mark.slow
def test_the_cpu_set_up_resolves_no_cuda_package(tmp_path):
    index, torch_spec = makefile_value("TORCH_CPU_INDEX"), makefile_value("TORCH_SPEC")
    try:
        urllib.request.urlopen(f"{index}/torch/", timeout=15)
    except OSError as e:
        pytest.skip(f"PyTorch's CPU wheel index {index} is out of reach from here ({e}); `make setup` falls back "
                    f"to the plain {torch_spec} from the configured index")
    torch_step = dry_run(tmp_path, "torch", "--index-url", index, torch_spec)
    assert torch_step["torch"].endswith("+cpu")
    # the project's own install runs with that torch already in the venv: pin it to the same build
    project_step = dry_run(tmp_path, "project", "--index-url", "https://pypi.org/simple", "--extra-index-url", index,
                           f"torch=={torch_step['torch']}", "-e", ".[dev]")
    cuda = sorted(name for name in {**torch_step, **project_step} if CUDA_PACKAGE.match(name))
    assert not cuda, f"the CPU set-up would download CUDA packages: {cuda}"
    assert project_step["torch"] == torch_step["torch"]
