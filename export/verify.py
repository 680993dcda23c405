"""`capsnet verify MODEL.onnx CHECKPOINT [-o REPORT.json]`: re-run the parity check, for a user's CI.

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

from export.parity import quiet_third_party_loggers, verify_parity
from export.parity_report import failure_summary, parity_summary
from training.data import DATA_DIR_HELP
from training.errors import run_cli, setup_cli_logging
from training.fileio import write_json

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    setup_cli_logging()
    quiet_third_party_loggers()
    p = argparse.ArgumentParser(prog="capsnet verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model.onnx (or model.fp16.onnx) written by capsnet export")
    p.add_argument("checkpoint", help="the .pt the model was exported from")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--limit", type=int, help="compare only the first N test images (default: all)")
    p.add_argument("--no-download", action="store_true",
                   help="never download the test split: without it on disk, compare synthetic digits (warned)")
    p.add_argument("-o", "--out", help="write the full parity report (JSON) here")
    args = p.parse_args(argv)

    def body() -> int:
        report = verify_parity(args.model, args.checkpoint, data_dir=args.data_dir, limit=args.limit,
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
