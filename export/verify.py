"""`capsnet verify MODEL.onnx CHECKPOINT [-o REPORT.json]`: re-run the parity check, for a user's CI.

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
    p.add_argument("-o", "--out", help="write the full parity report (JSON) here")
    args = p.parse_args(argv)

    def body() -> int:
        report = verify_parity(args.model, args.checkpoint, data_dir=args.data_dir, limit=args.limit)
        if args.out:
            write_json(args.out, report)
        print(json.dumps(parity_summary(report), indent=2))
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
