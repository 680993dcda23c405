"""`capsnet export CHECKPOINT -o DIR`: ONNX export with routing unrolled, parity proven, registered.

`export_onnx` writes model.onnx (and model.fp16.onnx with --fp16), parity.json and config.json
into DIR. It builds everything in a staging folder inside DIR and moves the files in only after
parity passes, so a failed export leaves DIR as it was and registers nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch

from export.inference_graph import DecoderGraph, InferenceGraph
from export.onnx_io import GATE_FILE, INT8_FILE, write_metadata
from export.parity import check_parity, library_versions, quiet_third_party_loggers
from export.parity_report import failure_summary, parity_summary
from export.quantize import (
    CALIBRATION_IMAGES,
    MAX_ACCURACY_LOSS,
    MIN_AGREEMENT,
    QUANTIZED_OPS,
    gate_failures,
    quantize_and_gate,
)
from export.triton_repo import write_triton_repository
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, model_kind
from training.config import TrainConfig
from training.data import DATA_DIR_HELP
from training.errors import run_cli, setup_cli_logging
from training.fileio import sha256_file, write_json

log = logging.getLogger(__name__)

OPSET = 18
CONTROL_FLOW = {"Loop", "If", "Scan"}


class ParityError(RuntimeError):
    """The exported graph does not compute what the checkpoint computes."""


class QuantizationGateError(ParityError):
    """The INT8 graph does not agree with the float32 one closely enough (export/quantize.py)."""


def export_graph(graph: InferenceGraph | DecoderGraph, path: Path, metadata: dict[str, Any],
                 opset: int = OPSET) -> None:
    """Export `graph` to one self-contained ONNX file with a dynamic batch axis (every input's first)
    and metadata."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    # optimize=False: the onnxscript optimizer in onnxscript 0.7 deletes `x + 1e-8` as if it were
    # `x + 0`, which turns squash into 0 * inf = NaN at a zero vector (ONNX Runtime optimizes the
    # graph itself, numerically exactly, when it loads it).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(graph, graph.example_inputs(), str(path), input_names=list(graph.input_names),
                          output_names=list(graph.outputs),
                          dynamic_shapes={name: {0: batch} for name in graph.input_names},
                          opset_version=opset, dynamo=True, external_data=False, optimize=False)
    model = onnx.load(str(path))
    found = CONTROL_FLOW & {n.op_type for n in model.graph.node}
    if found:
        raise RuntimeError(f"exported graph has control flow {sorted(found)}; routing must be unrolled")
    if path.with_name(path.name + ".data").exists():
        raise RuntimeError("exporter wrote external weights; the contract is one self-contained file")
    model.doc_string = graph_description(graph)
    write_metadata(model, metadata)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def decoder_input(model_config: dict[str, Any]) -> dict[str, Any]:
    """decoder.onnx's inputs, as config.json states them."""
    k, d = model_config["num_classes"], model_config["digit_dim"]
    return {"poses": {"dtype": "float32", "shape": ["batch", k, d]},
            "label": {"dtype": "int64", "shape": ["batch"], "range": [0, k - 1]}}


def graph_description(graph: InferenceGraph | DecoderGraph) -> str:
    c = graph.model.config
    if isinstance(graph, DecoderGraph):
        return (f"CapsNet decoder (Sabour et al. 2017). Inputs 'poses' float32 [batch,{c.num_classes},{c.digit_dim}], "
                f"'label' int64 [batch]. Output 'image' float32 [batch,1,{c.image_size},{c.image_size}].")
    return (f"CapsNet (Sabour et al. 2017). Input 'image' float32 [batch,1,{c.image_size},{c.image_size}] in [0,1]. "
            f"Outputs: {', '.join(graph.outputs)}.")


def export_onnx(checkpoint: str | Path, out_dir: str | Path, *, with_reconstruction: bool = False,
                with_routing: bool = False, with_top2: bool = False, with_decoder: bool = False,
                with_explorer: bool = False,
                fp16: bool = False, int8: bool = False, routing_iters: int | None = None,
                data_dir: str | Path | None = None, limit: int | None = None,
                opset: int = OPSET) -> dict[str, Any]:
    """Export a checkpoint, prove parity and move model.onnx, parity.json, config.json into out_dir
    (and decoder.onnx with `with_decoder`: poses + class -> image, for redrawing edited poses; with
    `int8`, model.int8.onnx and its gate quantization.json, export/quantize.py).

    `routing_iters` unrolls a different number of iterations than the checkpoint was trained with
    (parity is then proven against the checkpoint's weights at that depth, and capsnet verify
    against the checkpoint itself will fail, as it should).
    The checkpoint file is read once and hashed once; parity compares each graph with the model
    rebuilt from that one load. Raises ParityError (nothing written) when any parity section fails.
    Returns {"dir", "files", "parity": report, "config": config.json content}.
    """
    checkpoint = Path(checkpoint)
    out_dir = Path(out_dir)
    ckpt = load_checkpoint(checkpoint)
    if model_kind(ckpt) != "capsnet":
        raise CheckpointError(f"{checkpoint} holds a baseline {model_kind(ckpt)}, not a CapsNet: the export "
                              "and serving contract (poses, routing, decoder) is the CapsNet's")
    checkpoint_sha256 = sha256_file(checkpoint)
    if routing_iters is not None:
        ckpt = {**ckpt, "model_config": {**ckpt["model_config"], "routing_iters": routing_iters}}
    size = ckpt["model_config"]["image_size"]
    task = TrainConfig.from_dict(ckpt["train_config"]).task
    if with_explorer:  # what the explorer page and its APIs use; a pair model also redraws both objects
        with_reconstruction = with_routing = with_decoder = True
        with_top2 = with_top2 or task.multi_label
    outputs = ("probabilities", "poses") + (("reconstruction",) if with_reconstruction else ()) \
        + (("routing", "primary_lengths") if with_routing else ()) + (("reconstructions_top2",) if with_top2 else ())
    config = {
        "model_config": ckpt["model_config"],
        "class_names": ckpt["class_names"],
        "routing_iters": ckpt["model_config"]["routing_iters"],
        "train_config": ckpt["train_config"],
        "train_metrics": ckpt["metrics"],
        "checkpoint_sha256": checkpoint_sha256,
        # where the weights came from: the shipped weights file a checkpoint was unpacked from
        # (capsnet weights unpack records it), else the checkpoint itself; the server reports it
        "source": (ckpt.get("weights_file") or {}).get("path") or str(checkpoint),
        "opset": opset,
        "input": {"name": "image", "dtype": "float32", "shape": ["batch", 1, size, size], "range": [0.0, 1.0]},
        # the task record: what one input holds (the served answer lists `objects` longest capsules),
        # the served name, what the test set is made of; serving and verify read it from here
        "task": task.to_dict(),
        "outputs": list(outputs),
        # the decoder graph, when exported: redraws edited poses without the encoder
        "decoder": {"file": "decoder.onnx", "input": decoder_input(ckpt["model_config"]),
                    "outputs": ["image"]} if with_decoder else None,
        "versions": library_versions(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        # file name -> (graph kind, dtype): the decoder is exported in float32 only
        files = {"model.onnx": ("model", torch.float32)}
        if fp16:
            files["model.fp16.onnx"] = ("model", torch.float16)
        if with_decoder:
            files["decoder.onnx"] = ("decoder", torch.float32)
        sections = []
        for name, (kind, dtype) in files.items():
            precision = "fp16" if dtype == torch.float16 else "fp32"
            graph = InferenceGraph(model_from_checkpoint(ckpt), outputs, dtype) if kind == "model" \
                else DecoderGraph(model_from_checkpoint(ckpt), dtype)
            log.info("exporting %s (%s, opset %d, outputs %s)", name, precision, opset, ", ".join(graph.outputs))
            meta = {**config, "precision": precision, "graph": kind}
            if kind == "decoder":
                meta.update(input=decoder_input(ckpt["model_config"]), outputs=list(graph.outputs))
            export_graph(graph, staging / name, meta, opset)
            log.info("verifying parity of %s", name)
            report = check_parity(model_from_checkpoint(ckpt), staging / name, meta, data_dir=data_dir, limit=limit)
            sections.append(report)
            if not report["passed"]:
                raise ParityError(f"{name} does not match {checkpoint}:\n{failure_summary(report)}")
        parity = {**sections[0], "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256,
                  "sections": [s for r in sections for s in r["sections"]],
                  "models": {r["onnx_model"]: r["onnx_sha256"] for r in sections}}
        parity["passed"] = all(r["passed"] for r in sections)
        extra = []
        if int8:
            log.info("quantizing %s to INT8 (%s) and checking it on the validation split", INT8_FILE,
                     ", ".join(QUANTIZED_OPS))
            gate = quantize_and_gate(staging / "model.onnx", staging / INT8_FILE, ckpt["train_config"],
                                     task.objects, data_dir, limit)
            if not gate["passed"]:
                raise QuantizationGateError(f"{INT8_FILE} fails its gate:\n{gate_failures(gate)}")
            write_json(staging / GATE_FILE, gate)
            extra = [INT8_FILE, GATE_FILE]
        if parity["inputs"]["kind"] == "synthetic":
            log.warning("parity was proven on synthetic images only (%s); the registered model is labelled "
                        "parity_inputs=synthetic", parity["inputs"]["source"])
        write_json(staging / "parity.json", parity)
        write_json(staging / "config.json", config)
        for name in [*files, *extra, "parity.json", "config.json"]:
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"dir": str(out_dir), "files": [*files, *extra, "parity.json", "config.json"], "parity": parity,
            "config": config}


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    quiet_third_party_loggers()
    p = argparse.ArgumentParser(prog="capsnet export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .pt written by capsnet train (usually RUN/best.pt)")
    p.add_argument("-o", "--out", required=True, help="folder for model.onnx, parity.json, config.json")
    p.add_argument("--with-reconstruction", action="store_true",
                   help="add output 'reconstruction' [batch,1,S,S] (decoder masked by the predicted class)")
    p.add_argument("--with-routing", action="store_true",
                   help="add outputs 'routing': final coupling coefficients [batch,N_in,10], and "
                        "'primary_lengths' [batch,N_in]: how present each part is")
    p.add_argument("--with-top2-reconstructions", action="store_true",
                   help="add output 'reconstructions_top2' [batch,2,1,S,S]: the decoder masked by each of "
                        "the two longest capsules (what a two-digit model redraws)")
    p.add_argument("--with-decoder", action="store_true",
                   help="also write decoder.onnx: poses [batch,10,16] + label [batch] -> image, with parity")
    p.add_argument("--no-explorer", action="store_true",
                   help="leave out what the explorer page needs (by default exported: --with-reconstruction "
                        "--with-routing --with-decoder, and --with-top2-reconstructions for a pair model)")
    p.add_argument("--fp16", action="store_true", help="also write model.fp16.onnx (float16 inside, "
                                                       "float32 in/out) with its own parity section")
    p.add_argument("--int8", action="store_true",
                   help=f"also write {INT8_FILE}: the Conv layers quantized to INT8 (static QDQ, calibrated on "
                        f"{CALIBRATION_IMAGES} training images), checked on the validation split (agreement "
                        f">= {100 * MIN_AGREEMENT:.1f} %%, accuracy loss <= {100 * MAX_ACCURACY_LOSS:.1f} point) "
                        f"into {GATE_FILE}; a failed gate writes nothing (exit 1)")
    p.add_argument("--routing-iters", type=int, help="unroll this many routing iterations instead of "
                                                     "the checkpoint's (for experiments)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--limit", type=int, help="parity on the first N test images only (default: all)")
    p.add_argument("--opset", type=int, default=OPSET)
    p.add_argument("--register", action=argparse.BooleanOptionalAction, default=True,
                   help="store the export in the BentoML model store (default: on)")
    p.add_argument("--name", help="BentoML model name (default: the task's, capsnet-<dataset>: capsnet-mnist, ...)")
    p.add_argument("--triton-repo", metavar="DIR", help="also add the export to this Triton model repository "
                                                        "(DIR/<name>/config.pbtxt + DIR/<name>/1/model.onnx)")
    p.add_argument("--triton-instance", choices=("gpu", "cpu"), default="gpu",
                   help="the Triton instance group's kind (default: gpu)")
    args = p.parse_args(argv)

    def body() -> int:
        try:
            result = export_onnx(args.checkpoint, args.out, with_explorer=not args.no_explorer,
                                 with_reconstruction=args.with_reconstruction, with_routing=args.with_routing,
                                 with_top2=args.with_top2_reconstructions, with_decoder=args.with_decoder,
                                 fp16=args.fp16, int8=args.int8, routing_iters=args.routing_iters,
                                 data_dir=args.data_dir,
                                 limit=args.limit, opset=args.opset)
        except ParityError as e:  # QuantizationGateError too
            log.error("%s FAILED, nothing written or registered:\n%s",
                      "the INT8 gate" if isinstance(e, QuantizationGateError) else "parity", e)
            return 1
        print(json.dumps(parity_summary(result["parity"]), indent=2))
        if args.int8:
            validation = json.loads((Path(args.out) / GATE_FILE).read_text())["splits"]["validation"]
            print(f"INT8 gate passed: agreement {100 * validation['agreement']:.2f} %, validation accuracy "
                  f"{100 * validation['int8_accuracy']:.2f} % (float32 {100 * validation['fp32_accuracy']:.2f} %)")
        name = args.name or result["config"]["task"]["served_name"]
        if args.register:
            from export.registry import register_export

            print(f"registered BentoML model {register_export(args.out, name)}")
            if args.int8:  # its own version, chosen by the version policy like any other
                print(f"registered BentoML model {register_export(args.out, name, precision='int8')} (INT8)")
        if args.triton_repo:
            folder = write_triton_repository(args.out, args.triton_repo, name, args.triton_instance)
            print(f"wrote Triton model {folder}")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
