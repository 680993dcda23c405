"""`capsnet verify MODEL.onnx CHECKPOINT [-o REPORT.json]`: re-run the parity check, for a user's CI.

For model.int8.onnx (`capsnet export --int8`) it checks the chain: the float32 model.onnx beside it
against the checkpoint (parity, as above), the INT8 file against the one its gate measured (SHA-256
in quantization.json), and the gate again on the validation split.

It compares the model on the task's whole test split, downloading it (with checksums) into the data
directory when it is missing; with --no-download, or offline, it falls back to 512 synthetic digits and
says so in a warning. The summary names the images compared and their SHA-256.

Exit 0: parity holds; 1: parity fails; 2: unusable input (missing, corrupt, other architecture).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from export.onnx_io import GATE_FILE, INT8_FILE, UnusableInputError
from export.parity import quiet_third_party_loggers, verify_parity
from export.parity_report import failure_summary, parity_summary
from export.quantize import gate_failures, quantization_gate, task_data
from training.data import DATA_DIR_HELP
from training.errors import run_cli, setup_cli_logging
from training.fileio import sha256_file, write_json
from training.task_registry import Task

log = logging.getLogger(__name__)


def verify_int8(model: Path, data_dir: str | None, limit: int | None) -> int:
    """0 when `model` is the INT8 file its quantization.json measured and still passes that gate on
    the validation split (the first `limit` inputs with `limit`); else 1, saying why."""
    folder = model.parent
    for needed in (GATE_FILE, "config.json", "model.onnx"):
        if not (folder / needed).is_file():
            raise UnusableInputError(f"{folder / needed} missing: an INT8 graph is verified beside its export")
    recorded = json.loads((folder / GATE_FILE).read_text())
    config = json.loads((folder / "config.json").read_text())
    if sha256_file(model) != recorded["model_sha256"]:
        log.error("%s is not the file its gate measured (SHA-256 differs from %s): changed after export",
                  model, folder / GATE_FILE)
        return 1
    gate = quantization_gate(folder / recorded["reference"], model, task_data(config["train_config"], data_dir),
                             Task.from_dict(config["task"]).objects, limit)
    print(json.dumps({"int8_gate": gate["passed"], **gate["splits"]["validation"]}, indent=2))
    if not gate["passed"]:
        log.error("the INT8 gate FAILED:\n%s", gate_failures(gate))
        return 1
    log.info("the INT8 gate passed: agreement %.2f %% on %d validation inputs",
             100 * gate["splits"]["validation"]["agreement"], gate["splits"]["validation"]["inputs"])
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    quiet_third_party_loggers()
    p = argparse.ArgumentParser(prog="capsnet verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model.onnx (or model.fp16.onnx, model.int8.onnx) written by capsnet export")
    p.add_argument("checkpoint", help="the .pt the model was exported from")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--limit", type=int, help="compare only the first N test images (default: all)")
    p.add_argument("--no-download", action="store_true",
                   help="never download the test split: without it on disk, compare synthetic digits (warned)")
    p.add_argument("-o", "--out", help="write the full parity report (JSON) here")
    args = p.parse_args(argv)

    def body() -> int:
        model = Path(args.model)
        if model.name == INT8_FILE:
            if verify_int8(model, args.data_dir, args.limit) != 0:
                return 1
            model = model.parent / "model.onnx"  # the gate's reference: its parity with the checkpoint
        report = verify_parity(model, args.checkpoint, data_dir=args.data_dir, limit=args.limit,
                               download=not args.no_download)
        if args.out:
            write_json(args.out, report)
        print(json.dumps(parity_summary(report), indent=2))
        inputs = report["inputs"]
        if inputs["kind"] == "synthetic":
            log.warning("compared %d SYNTHETIC digit-like images, not the test split: %s. Parity on them says "
                        "the graph computes what the checkpoint does, not how it does on real data",
                        inputs["images"], inputs["source"])
        else:
            log.info("compared %d images: %s (sha256 %s)", inputs["images"], inputs["source"], inputs["sha256"][:16])
        for note in report["notes"]:
            log.warning("%s", note)
        if not report["passed"]:
            log.error("parity FAILED:\n%s", failure_summary(report))
            return 1
        log.info("parity passed")
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
