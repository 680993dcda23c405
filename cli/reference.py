"""Write the command-line reference (docs/reference/cli.md) from the parsers themselves: every
`capsnet` subcommand's `--help`, and its sub-subcommands', exactly as argparse prints it at 100
columns. A test regenerates it and compares, so the page cannot drift from the code.

    python -m cli.reference            # rewrite docs/reference/cli.md
    python -m cli.reference --check    # exit 1 if the page is stale
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import sys
from pathlib import Path

from cli.capsnet import SUBCOMMANDS, build_parser

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md"
WIDTH = "100"
NESTED = re.compile(r"\{([a-z-]+(?:,[a-z-]+)+)\}")  # argparse's "{pack,unpack}" in a usage line


def help_text(run: object, argv: list[str]) -> str:
    """What `run(argv + ['--help'])` prints (argparse exits after printing)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        run([*argv, "--help"])  # type: ignore[operator]
    return out.getvalue().rstrip()


def render() -> str:
    os.environ["COLUMNS"] = WIDTH  # argparse wraps to the terminal; the page must not depend on it
    sections = ["# Command-line reference", "",
                "Generated from the parsers by `python -m cli.reference` (a test fails when it is stale); "
                "`capsnet SUBCOMMAND --help` prints the same.", "", "## capsnet", "", "```text",
                help_text(lambda argv: build_parser().parse_args(argv), []), "```"]
    for name, (module_name, _) in SUBCOMMANDS.items():
        main = importlib.import_module(module_name).main
        text = help_text(main, [])
        sections += ["", f"## capsnet {name}", "", "```text", text, "```"]
        usage = text.splitlines()[0] if text else ""
        nested = NESTED.search(usage)
        for child in nested.group(1).split(",") if nested else []:
            sections += ["", f"### capsnet {name} {child}", "", "```text", help_text(main, [child]), "```"]
    return "\n".join(sections) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cli.reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="exit 1 if the page differs from the parsers")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        stale = not PAGE.is_file() or PAGE.read_text() != text
        if stale:
            print(f"{PAGE} is stale: run python -m cli.reference", file=sys.stderr)
        return int(stale)
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(text)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
