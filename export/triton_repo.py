"""A Triton Inference Server model repository from an export, for users who scale on Triton:

    DIR/<model>/config.pbtxt     Triton's ModelConfig (serving/oip/triton_config.py), from the graph
    DIR/<model>/labels.txt       the class names, one per line: the classification extension's labels
    DIR/<model>/1/model.onnx     the exported graph, unchanged
    DIR/<model>/parity.json      the parity report and config.json of the export, beside it (Triton
    DIR/<model>/config.json      reads only config.pbtxt, labels.txt and the numbered version folders)

Every tensor the graph declares is declared, with its dims after the batch axis; the instance group
is one GPU instance (`instance_kind="cpu"` for a CPU-only Triton). The folder is written beside the
target and renamed into place, so a failure never leaves half a model in the repository.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import onnx

from export.onnx_io import UnusableInputError, load_checked
from serving.oip.triton_config import LABELS_FILE, Tensor, labels_text, model_config, to_pbtxt

log = logging.getLogger(__name__)

ONNX_DATA_TYPES = {onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.INT64: "INT64"}


def graph_tensors(values: list[onnx.ValueInfoProto]) -> list[Tensor]:
    """Graph inputs or outputs as Tensors: every one has a leading batch axis, dropped from the dims."""
    tensors = []
    for value in values:
        dims = value.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param:
            raise UnusableInputError(f"graph tensor {value.name!r} has no dynamic batch axis; not a capsnet export")
        tensors.append(Tensor(value.name, ONNX_DATA_TYPES[value.type.tensor_type.elem_type],
                              tuple(d.dim_value for d in dims[1:])))
    return tensors


def write_triton_repository(export_dir: str | Path, repo_dir: str | Path, name: str | None = None,
                            instance_kind: str = "gpu") -> Path:
    """Add the export in `export_dir` to the Triton model repository `repo_dir` as model `name`
    (default: its task's served name, e.g. capsnet-mnist), replacing a model of that name. Returns
    the model's folder."""
    export_dir, repo_dir = Path(export_dir), Path(repo_dir)
    graph, meta = load_checked(export_dir / "model.onnx")
    name = name or meta["task"]["served_name"]
    config = model_config(name, graph_tensors(list(graph.graph.input)), graph_tensors(list(graph.graph.output)),
                          instance_kind=instance_kind)
    repo_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repo_dir))
    try:
        (staging / "1").mkdir()
        shutil.copy2(export_dir / "model.onnx", staging / "1" / "model.onnx")
        for extra in ("parity.json", "config.json"):
            shutil.copy2(export_dir / extra, staging / extra)
        (staging / "config.pbtxt").write_text(to_pbtxt(config))
        (staging / LABELS_FILE).write_text(labels_text(meta["class_names"]))
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the model from a Triton running as another user
        target = repo_dir / name
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old.", dir=repo_dir))
            os.replace(target, old / name)
            os.replace(staging, target)
            shutil.rmtree(old)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    parity = json.loads((target / "parity.json").read_text())
    log.info("wrote Triton model %s (%s, parity %s) into %s", name, instance_kind.upper(),
             "passed" if parity.get("passed") else "FAILED", repo_dir)
    return target
