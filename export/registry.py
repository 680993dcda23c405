"""Registration of an export in the BentoML model store, and finding it again."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import bentoml

from export.onnx_io import GATE_FILE, INT8_FILE
from export.parity_report import parity_inputs_kind, parity_summary
from training.errors import UserError
from training.fileio import write_json

log = logging.getLogger(__name__)

DEFAULT_NAME = "capsnet-mnist"
ARTIFACTS = ("model.onnx", "model.fp16.onnx", "decoder.onnx", "parity.json", "config.json")


class RegistrationError(UserError):
    """The export folder is incomplete or its parity did not pass."""


PRECISIONS = ("fp32", "int8")


def int8_gate(export_dir: Path) -> dict[str, Any]:
    """The passed gate of the export's INT8 graph; RegistrationError without one."""
    for required in (INT8_FILE, GATE_FILE):
        if not (export_dir / required).is_file():
            raise RegistrationError(f"{export_dir / required} missing: export with capsnet export --int8 first")
    gate = json.loads((export_dir / GATE_FILE).read_text())
    if not gate.get("passed"):
        raise RegistrationError(f"{export_dir / GATE_FILE} says the INT8 gate failed; refusing to register")
    return gate


def register_export(export_dir: str | Path, name: str = DEFAULT_NAME, precision: str = "fp32") -> str:
    """Store the ONNX file(s), parity.json and config.json of `export_dir` as a BentoML model.

    Refuses an export whose parity did not pass. The model's metadata carries the model config,
    class names, routing iterations, training metrics and the parity summary; BentoML only
    saves the model if this block completes. Returns the tag, e.g. 'capsnet-mnist:abc123'.

    `precision` "int8" registers the export's INT8 graph (model.int8.onnx, capsnet export --int8) as a
    version of its own: refused unless its gate (quantization.json) passed; its config.json says
    "precision": "int8" (what the server opens), and its recorded validation accuracy is the INT8
    graph's own, from the gate, so the `best` policy ranks it by what it does.
    """
    export_dir = Path(export_dir)
    if precision not in PRECISIONS:
        raise RegistrationError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    for required in ("model.onnx", "parity.json", "config.json"):
        if not (export_dir / required).is_file():
            raise RegistrationError(f"{export_dir / required} missing: run capsnet export first")
    parity = json.loads((export_dir / "parity.json").read_text())
    if not parity.get("passed"):
        raise RegistrationError(f"{export_dir}/parity.json says parity failed; refusing to register")
    config = json.loads((export_dir / "config.json").read_text())
    metrics = dict(config.get("train_metrics", {}))
    gate = int8_gate(export_dir) if precision == "int8" else None
    if gate is not None:
        metrics["best_val_accuracy"] = gate["splits"]["validation"]["int8_accuracy"]
        metrics["test_accuracy"] = gate["splits"]["test"]["int8_accuracy"]
    config = {**config, "precision": precision}
    task = config["task"]
    labels = {
        "stage": "exported",
        "dataset": task["name"],
        "variant": config["train_config"]["variant"],
        "parity": "passed",
        # what parity was proven on: the dataset's real test images, or synthetic stand-ins
        "parity_inputs": parity_inputs_kind(parity),
        "routing_iters": str(config["routing_iters"]),
        "task": task["kind"],
        "precision": precision,
    }
    metadata = {
        "model_config": config["model_config"],
        "class_names": config["class_names"],
        "routing_iters": config["routing_iters"],
        "outputs": config["outputs"],
        "input": config["input"],  # name, dtype, shape [batch, 1, S, S], range
        "task": task,
        "opset": config["opset"],
        "val_accuracy": metrics.get("best_val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "checkpoint_sha256": config["checkpoint_sha256"],
        "source": config.get("source"),  # the weights file or checkpoint it was exported from
        # the training recipe in brief, for the server's start-up line and model metadata
        "training": {k: config["train_config"].get(k) for k in ("variant", "dataset", "epochs", "seed")},
        "parity": parity_summary(parity),
        "precision": precision,
        "quantization": None if gate is None else {"agreement": gate["splits"]["validation"]["agreement"],
                                                    "accuracy_loss": gate["splits"]["validation"]["accuracy_loss"],
                                                    "quantized_ops": gate["quantized_ops"]},
        "versions": config["versions"],
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}  # BentoML rejects None
    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for artifact in ARTIFACTS + ((INT8_FILE, GATE_FILE) if gate is not None else ()):
            if artifact == "config.json":  # with the precision this version serves in
                write_json(model.path_of(artifact), config)
            elif (export_dir / artifact).is_file():
                shutil.copy2(export_dir / artifact, model.path_of(artifact))
    log.info("registered %s", model.tag)
    return str(model.tag)
