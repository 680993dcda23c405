"""`capsnet SUBCOMMAND ...`: every step of the pipeline from one command.

Each subcommand is the thin CLI of one stage (its module's `main(argv)`); `capsnet SUBCOMMAND --help`
shows its options. Inputs are positionals, every output is `-o/--out`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

# subcommand -> (module whose main(argv) runs it, one line for the overview)
SUBCOMMANDS = {
    "train": ("training.train", "train a CapsNet (or a baseline CNN) into a run folder; resumable"),
    "evaluate": ("training.evaluate", "score a checkpoint on the untouched test set, with figures"),
    "export": ("export.onnx_export", "export a checkpoint to ONNX, prove parity, register it in BentoML"),
    "verify": ("export.verify", "re-check an exported model against its checkpoint (exit 0 pass, 1 fail, 2 unusable)"),
    "weights": ("training.weights_file", "pack a checkpoint into a float16 weights file, or unpack one"),
    "bento": ("export.bento", "build the Bento (--gpu: its CUDA variant) from the registered models"),
    "check-gpu": ("environment.check_gpu", "check that this machine trains and serves on the GPU"),
}


def package_version() -> str:
    try:
        return version("capsnet-pipeline")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="capsnet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommands:\n" + "\n".join(f"  {name:<10} {line}" for name, (_, line) in SUBCOMMANDS.items()))
    p.add_argument("--version", action="version", version=f"capsnet {package_version()}")
    p.add_argument("subcommand", choices=list(SUBCOMMANDS), metavar="SUBCOMMAND", help="one of the subcommands below")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its arguments (capsnet SUBCOMMAND --help)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(SUBCOMMANDS[args.subcommand][0])
    return module.main(args.args)


if __name__ == "__main__":
    sys.exit(main())
