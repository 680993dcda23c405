#!/usr/bin/env bash
# onnxruntime-gpu for a lent GPU machine (the `device` tool), which cannot download and takes at most
# 64 MiB per call: the 244 MiB wheel travels as four parts, one per call, while the machine stays warm
# (about 30 s between calls). Ignored files carried earlier stay in the checkout there, so the parts
# pile up in .device-ort/ and the last step joins them.
#
#   bash benchmarks/device_ort_gpu.sh split     # here, once: download the wheel, cut it into parts
#   # then four device calls, back to back, carry [".device-ort/part-0N"], command `true`
#   # then the check: carry [".device", ".device-ort/SHA256SUMS"], command
#   #   `bash benchmarks/device_ort_gpu.sh install && bash benchmarks/device_gpu_check.sh`
#
# `install` joins the parts, checks the wheel's SHA-256 and installs it into /tmp/site, which
# device_gpu_check.sh puts first on PYTHONPATH: its onnxruntime (with CUDAExecutionProvider) then
# shadows the image's CPU-only one. The CUDA 13 / cuDNN 9 libraries it loads are the nvidia-* packages
# the image's torch already has. If anything is missing it says so and exits 1; the check itself
# runs anyway without it and records CUDA parity as not available.
set -euo pipefail
VERSION=1.31.1
DIR=.device-ort
PART_BYTES=$((61 * 1024 * 1024))  # + the checkout (~1.5 MB) stays under the 64 MiB a call carries

case "${1:-}" in
split)
    mkdir -p "$DIR"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        -d "$DIR" "onnxruntime-gpu==$VERSION"
    wheel=$(ls "$DIR"/onnxruntime_gpu-"$VERSION"-*.whl)
    rm -f "$DIR"/part-*
    split -b "$PART_BYTES" -d -a 2 "$wheel" "$DIR/part-"
    (cd "$DIR" && sha256sum "$(basename "$wheel")" > SHA256SUMS)
    ls -l "$DIR"
    ;;
install)
    [ -f "$DIR/SHA256SUMS" ] || { echo "device_ort_gpu: no $DIR/SHA256SUMS (carry it)" >&2; exit 1; }
    read -r sum name < "$DIR/SHA256SUMS"
    parts=("$DIR"/part-*)
    [ -e "${parts[0]}" ] || { echo "device_ort_gpu: no parts in $DIR (carry one per call first)" >&2; exit 1; }
    mkdir -p /tmp/ort-gpu
    cat "${parts[@]}" > "/tmp/ort-gpu/$name"
    if ! echo "$sum  /tmp/ort-gpu/$name" | sha256sum --check --status; then
        echo "device_ort_gpu: the joined wheel does not match its SHA-256 (${#parts[@]} parts here: ${parts[*]})" >&2
        exit 1
    fi
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "/tmp/ort-gpu/$name"
    PYTHONPATH=/tmp/site python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
    ;;
*)
    echo "usage: $0 split|install" >&2
    exit 2
    ;;
esac
