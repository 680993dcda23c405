"""What a benchmark ran on, in words, so that numbers from different machines are not mixed up unawares:
the GPU's name, or the CPU's model with the vector instructions torch uses and its thread count. Two
2-core CPUs both called "AMD EPYC" here differed 3-4x in training speed and in training's last digits
(the slower one had AVX2 and no AVX-512; the other's was not recorded), so the name alone does not
tell them apart."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; elsewhere platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_words() -> str:
    """'NVIDIA H100 80GB HBM3, torch 2.x' or 'CPU AMD EPYC (AVX2), 2 threads, torch 2.x': where torch
    computes in this process (the GPU when there is one, as the benchmarks' device "auto" picks)."""
    import torch  # here, so that the serving benchmarks describe their machine without loading torch

    if torch.cuda.is_available():
        where = torch.cuda.get_device_name(0)
    else:
        where = f"CPU {cpu_name()} ({torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads"
    return f"{where}, torch {torch.__version__}"


def cpu_words() -> str:
    """'CPU AMD EPYC 9B14, 2 cores': for the benchmarks that compute with ONNX Runtime or load a
    server, not with torch (their runtime and thread settings are recorded beside it)."""
    return f"CPU {cpu_name()}, {os.cpu_count()} cores"
