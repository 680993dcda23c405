"""Which ONNX Runtime execution provider can work here: the one probe every stage asks (serving,
parity, the GPU check, benchmarks). Torch-free: NVML (nvidia-ml-py comes with BentoML) counts GPUs."""

from __future__ import annotations

import onnxruntime as ort

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def gpu_count() -> int:
    """NVIDIA GPUs visible through NVML (nvidia-ml-py comes with BentoML); 0 when none or no driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no library, no driver, no device: all mean "no usable GPU"
        return 0


def cuda_unavailable_reason() -> str | None:
    """None when ONNX Runtime can try CUDA here; else why not, in words a user can act on.

    onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9; `preload_dlls` loads them from the
    nvidia-* wheels (onnxruntime-gpu's `cuda` and `cudnn` extras, or those torch's CUDA build brings)
    when they are installed, before a session needs them.
    """
    if CUDA not in ort.get_available_providers():
        return f"this ONNX Runtime build ({ort.get_device()}) has no CUDA provider: install onnxruntime-gpu"
    if gpu_count() == 0:
        return "no NVIDIA GPU is visible (NVML reports none, or no driver is loaded)"
    try:
        ort.preload_dlls()
    except Exception as e:  # missing or mismatched libraries: say which
        return f"the CUDA 13 / cuDNN 9 libraries failed to load ({e}); install onnxruntime-gpu[cuda,cudnn]"
    return None


def cuda_usable() -> bool:
    """Whether a session asked for CUDA can get it: onnxruntime-gpu lists the CUDA provider everywhere
    and silently falls back to the CPU without a GPU or without its libraries."""
    return cuda_unavailable_reason() is None
