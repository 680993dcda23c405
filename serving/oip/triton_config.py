"""Triton's `ModelConfig` for an exported CapsNet, in one place: the Triton model repository
(export/triton_repo.py) writes it as config.pbtxt, and the Open Inference Protocol servers answer
`ModelConfig` requests with it. Built from the tensors the graph declares, never written by hand.

Batching defaults come from our measurements (docs/performance.md): ONNX Runtime's CPU throughput of
the small model is flat beyond batch 32 (6,975 images/s at 32, 7,045 at 256 on this 2-core CPU), and
the service batches up to 64 (CAPSNET_MAX_BATCH_SIZE), so the exported Triton repository prefers 32
and 64. What our own server answers for ModelConfig describes our batcher, which has no preferred sizes
(it runs whatever waits, up to the maximum) and waits CAPSNET_MAX_QUEUE_DELAY_MS for batch-mates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

PLATFORM = "onnxruntime_onnx"  # what Triton calls a model it runs with ONNX Runtime
MAX_BATCH_SIZE = 64
PREFERRED_BATCH_SIZES = (32, 64)
MAX_QUEUE_DELAY_US = 2_000  # how long Triton may hold a request to fill a preferred batch
DATA_TYPES = {"FP32": mc.TYPE_FP32, "FP16": mc.TYPE_FP16, "INT64": mc.TYPE_INT64}
INSTANCE_KINDS = {"gpu": mc.ModelInstanceGroup.KIND_GPU, "cpu": mc.ModelInstanceGroup.KIND_CPU}
# The classification extension ranks this output's scores; its labels file (one class name per line,
# in class order, beside config.pbtxt) names them, so Triton answers "value:index:label" as we do.
CLASSIFIED_OUTPUT = "probabilities"
LABELS_FILE = "labels.txt"


@dataclass(frozen=True)
class Tensor:
    """A graph input or output as the Open Inference Protocol names it: datatype FP32/FP16/INT64 and
    the dims after the batch axis."""

    name: str
    datatype: str
    dims: tuple[int, ...]


def model_config(name: str, inputs: Iterable[Tensor], outputs: Iterable[Tensor], *,
                 max_batch_size: int = MAX_BATCH_SIZE, instance_kind: str | None = "gpu",
                 preferred_batch_sizes: Iterable[int] = PREFERRED_BATCH_SIZES,
                 max_queue_delay_us: int = MAX_QUEUE_DELAY_US) -> mc.ModelConfig:
    """The ModelConfig of an ONNX model with a leading batch axis on every tensor: platform
    onnxruntime_onnx, dims without the batch axis, dynamic batching preferring `preferred_batch_sizes`
    (those up to max_batch_size) and holding a request up to `max_queue_delay_us`, one instance of
    `instance_kind` ("gpu", "cpu"; None: Triton's default). The defaults are Triton's tuning for the
    exported repository (export/triton_repo.py); the server describes its own batcher instead (no
    preferred sizes, CAPSNET_MAX_QUEUE_DELAY_MS). CLASSIFIED_OUTPUT names LABELS_FILE as its label
    file (write it with `labels_text`)."""
    config = mc.ModelConfig(name=name, platform=PLATFORM, max_batch_size=max_batch_size)
    for group, tensors in ((config.input, inputs), (config.output, outputs)):
        for t in tensors:
            group.add(name=t.name, data_type=DATA_TYPES[t.datatype], dims=list(t.dims))
    for output in config.output:
        if output.name == CLASSIFIED_OUTPUT:
            output.label_filename = LABELS_FILE
    config.dynamic_batching.preferred_batch_size.extend(b for b in preferred_batch_sizes if b <= max_batch_size)
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if instance_kind is not None:
        config.instance_group.add(count=1, kind=INSTANCE_KINDS[instance_kind])
    return config


def to_pbtxt(config: mc.ModelConfig) -> str:
    """config.pbtxt text, as Triton reads it."""
    return text_format.MessageToString(config)


def labels_text(class_names: Iterable[str]) -> str:
    """LABELS_FILE's text: one class name per line, line i naming class i."""
    names = list(class_names)
    if any("\n" in n or not n.strip() for n in names):
        raise ValueError(f"class names must be non-empty single lines for {LABELS_FILE}: {names!r}")
    return "".join(f"{n}\n" for n in names)
