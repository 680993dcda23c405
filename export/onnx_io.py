"""ONNX file I/O in one place: reading a graph safely, its capsnet.* metadata both ways, and
ONNX Runtime sessions. Torch-free; which provider can work is serving/engine/providers.py's question."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from training.errors import UserError

METADATA_PREFIX = "capsnet."
# The INT8 graph of an export and its gate (capsnet export --int8, export/quantize.py); here, free of
# torch, so that registration (export/registry.py) can name them.
INT8_FILE, GATE_FILE = "model.int8.onnx", "quantization.json"


class UnusableInputError(UserError, ValueError):
    """The model or checkpoint cannot be compared at all (missing, corrupt, other architecture)."""


def write_metadata(model: onnx.ModelProto, metadata: dict[str, Any]) -> None:
    """Store each item as a JSON string under capsnet.<key> in the graph's metadata_props."""
    for key, value in metadata.items():
        model.metadata_props.add(key=METADATA_PREFIX + key, value=json.dumps(value))


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The capsnet.* metadata of an exported graph, JSON-decoded."""
    return {p.key[len(METADATA_PREFIX):]: json.loads(p.value)
            for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def load_checked(path: str | Path) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A graph written by capsnet export and its metadata; UnusableInputError if it is missing,
    unreadable, invalid or carries no capsnet metadata."""
    path = Path(path)
    if not path.is_file():
        raise UnusableInputError(f"{path}: ONNX model not found")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        meta = read_metadata(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, ...: all mean "unusable"
        raise UnusableInputError(f"{path}: not a readable ONNX model (truncated or corrupt?): {e}") from e
    if "model_config" not in meta:
        raise UnusableInputError(f"{path}: no capsnet metadata; was it written by capsnet export?")
    return model, meta


def open_session(path: str | Path, providers: list[str]) -> ort.InferenceSession:
    """An ONNX Runtime session that logs errors only: a missing GPU is reported by us, not by ORT."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise UnusableInputError(f"{path}: ONNX Runtime cannot load it: {e}") from e
