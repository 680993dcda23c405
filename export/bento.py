"""`capsnet bento [--gpu]`: build the Bento from bentofile.yaml, or its GPU variant.

The GPU variant (`capsnet-gpu`) is the same service and models; only its Python requirements differ:
onnxruntime-gpu with its `cuda` and `cudnn` extras (the project's `gpu` extra in pyproject.toml), so
the image carries the CUDA 13 and cuDNN 9 libraries as nvidia-* wheels, which the service loads with
`onnxruntime.preload_dlls()`. The GPU driver itself comes from the host (`docker run --gpus all`).
The plain Bento stays small (no ~1.5 GB of CUDA libraries) and serves on the CPU.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import yaml

from training.errors import run_cli, setup_cli_logging

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
GPU_BENTO_NAME = "capsnet-gpu"


def gpu_requirements(repo: Path = REPO) -> list[str]:
    """The project's `gpu` extra (pyproject.toml): one list for `make setup GPU=1` and the GPU Bento."""
    return tomllib.loads((repo / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]


def bentofile(gpu: bool, repo: Path = REPO) -> dict[str, Any]:
    """bentofile.yaml as a dict; with `gpu`, the GPU variant: its name, a label, and onnxruntime-gpu
    replaced by the `gpu` extra's requirements."""
    spec = yaml.safe_load((repo / "bentofile.yaml").read_text())
    if not gpu:
        return spec
    packages = spec["python"]["packages"]
    if not any(p.startswith("onnxruntime-gpu") for p in packages):
        raise ValueError("bentofile.yaml lists no onnxruntime-gpu requirement to replace")
    spec["python"]["packages"] = [p for p in packages if not p.startswith("onnxruntime-gpu")] \
        + gpu_requirements(repo)
    spec["name"] = GPU_BENTO_NAME
    spec["labels"] = {**spec.get("labels", {}), "accelerator": "nvidia-cuda-13"}
    return spec


def build_bento(gpu: bool, repo: Path = REPO) -> str:
    """Build the Bento (or its GPU variant) from the repository root; returns its tag."""
    import bentoml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bentofile.yaml"
        path.write_text(yaml.safe_dump(bentofile(gpu, repo), sort_keys=False))
        bento = bentoml.bentos.build_bentofile(str(path), build_ctx=str(repo))
    return str(bento.tag)


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    p = argparse.ArgumentParser(prog="capsnet bento", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpu", action="store_true", help=f"build {GPU_BENTO_NAME}, which carries CUDA 13 and cuDNN 9")
    args = p.parse_args(argv)

    def run() -> int:
        tag = build_bento(args.gpu)
        print(f"built Bento {tag}")
        return 0

    return run_cli(run)
