#!/usr/bin/env bash
# benchmarks/gpu_check.py on a lent GPU machine (the `device` tool: Python 3.12, torch with CUDA,
# onnx, onnxscript and a CPU-only onnxruntime; nothing can be downloaded there). Prepare here, once:
#
#   mkdir -p .device/mnist && cp ../shared/datasets/mnist/*.gz .device/mnist/      # 11 MB (.device: a data root)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any -d .device/whl \
#       tqdm nvidia-ml-py safetensors                                               # ~1.1 MB
#
# (the image listed all three on 2026-11-17; the wheels are for an image that lacks them)
#
# then call the device with carry [".device"] and the command `bash benchmarks/device_gpu_check.sh`
# (timeout 600 s: the check's budget is 450 s). The JSON, the log and the run's metrics come back
# under $OUT, with the float16 weights file (16.4 MB) when the run reaches 99.6 %; the checkpoints
# (~100 MB) stay there. CUDA parity and ONNX Runtime CUDA throughput need onnxruntime-gpu (~255 MB,
# more than one call carries): benchmarks/device_ort_gpu.sh carries it in four parts first (then
# also carry .device-ort/SHA256SUMS here); without it they are recorded as not available.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:/tmp/site"
if compgen -G ".device/whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .device/whl/*.whl || exit 1
fi
if [ -f .device-ort/SHA256SUMS ]; then  # onnxruntime-gpu carried in parts (benchmarks/device_ort_gpu.sh)
    bash benchmarks/device_ort_gpu.sh install || echo "device_gpu_check: going on without onnxruntime-gpu" >&2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
python3 benchmarks/gpu_check.py --data-dir .device --run-dir /tmp/gpu-check-run \
    --out "${OUT:-/tmp/out}/gpu_check.json" --weights-out "${OUT:-/tmp/out}/capsnet-mnist-paper" "$@"
status=$?
cp /tmp/gpu-check-run/metrics.jsonl /tmp/gpu-check-run/export/parity.json "${OUT:-/tmp/out}/" 2>/dev/null
exit $status
