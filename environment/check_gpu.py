"""`capsnet check-gpu`: does this environment train and serve on the GPU? The last step of the GPU
set-up (`make setup GPU=1`, which `make` picks by itself where `nvidia-smi` finds a GPU).

It checks, and names the first thing that fails with what to do about it:
  1. torch is a CUDA build (the CPU wheel has torch.version.cuda None) and sees a GPU;
  2. ONNX Runtime has its CUDA provider, and the CUDA 13 / cuDNN 9 libraries load
     (`onnxruntime.preload_dlls()`, from the nvidia-* wheels of onnxruntime-gpu[cuda,cudnn]);
  3. a session on a one-node graph really runs on CUDAExecutionProvider (ONNX Runtime falls back to
     the CPU silently otherwise).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from serving.engine.providers import CPU, CUDA, cuda_unavailable_reason
from training.errors import UserError, run_cli, setup_cli_logging

log = logging.getLogger(__name__)
CUDA_TORCH = "pip install --force-reinstall torch==2.13.0 (PyPI's Linux wheel is the CUDA 13 build)"


class GpuSetupError(UserError):
    """The environment cannot train or serve on the GPU; the message says why and what to do."""


@dataclass(frozen=True)
class GpuFacts:
    """What the check found, so that `problems` is a pure function a test can feed."""

    torch_version: str
    torch_cuda: str | None  # torch.version.cuda: None for a CPU build
    torch_sees_gpu: bool
    onnxruntime_cuda_unavailable: str | None  # serving.engine.providers.cuda_unavailable_reason()
    session_provider: str | None  # the provider a CUDA-first session ended on (None: not tried)


def problems(f: GpuFacts) -> list[str]:
    """Each reason the GPU route does not work, with the fix, in the order to fix them."""
    found = []
    if f.torch_cuda is None:
        found.append(f"torch {f.torch_version} is a CPU build, so training cannot use the GPU: {CUDA_TORCH}")
    elif not f.torch_sees_gpu:
        found.append(f"torch {f.torch_version} (CUDA {f.torch_cuda}) sees no GPU: check `nvidia-smi` and "
                     "that the NVIDIA driver supports CUDA 13")
    if f.onnxruntime_cuda_unavailable:
        found.append(f"ONNX Runtime cannot use CUDA: {f.onnxruntime_cuda_unavailable}")
    elif f.session_provider != CUDA:
        found.append(f"an ONNX Runtime session asked for CUDA ran on {f.session_provider}: the CUDA provider "
                     "failed to start (run with ORT_LOGGING_LEVEL=0 / log_severity_level 0 to see why)")
    return found


def session_provider() -> str:
    """The provider a CUDA-first session on a one-node graph (y = x + x) actually uses."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, path)
        session = ort.InferenceSession(str(path), providers=[CUDA, CPU])
        session.run(None, {"x": np.ones(1, np.float32)})
        return session.get_providers()[0]


def gather() -> GpuFacts:
    reason = cuda_unavailable_reason()
    return GpuFacts(torch_version=torch.__version__, torch_cuda=torch.version.cuda,
                    torch_sees_gpu=torch.cuda.is_available(), onnxruntime_cuda_unavailable=reason,
                    session_provider=None if reason else session_provider())


def check_gpu() -> GpuFacts:
    """The facts when the GPU route works; else GpuSetupError naming every problem."""
    facts = gather()
    found = problems(facts)
    if found:
        raise GpuSetupError("the GPU set-up is not usable:\n  - " + "\n  - ".join(found))
    return facts


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    argparse.ArgumentParser(prog="capsnet check-gpu", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)

    def run() -> int:
        facts = check_gpu()
        print(f"GPU set-up works: torch {facts.torch_version} (CUDA {facts.torch_cuda}) on "
              f"{torch.cuda.get_device_name(0)}; ONNX Runtime {ort.__version__} on {facts.session_provider}")
        return 0

    return run_cli(run)
