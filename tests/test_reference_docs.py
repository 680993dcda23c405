"""The reference pages cannot drift from the code: the CLI page is regenerated from the parsers and
compared, and every CAPSNET_* setting the server reads is in docs/serving.md's settings table (and no
row there names a setting the code does not read)."""

from __future__ import annotations

import re

from cli import reference
from tests.helpers import REPO


def test_the_cli_reference_is_what_the_parsers_print():
    assert reference.PAGE.read_text() == reference.render(), "stale: run python -m cli.reference"


def test_every_serving_setting_is_documented_and_every_documented_one_is_read():
    read = set(re.findall(r'"(CAPSNET_[A-Z_]+)"', (REPO / "serving" / "settings.py").read_text()))
    table = [line for line in (REPO / "docs" / "serving.md").read_text().splitlines() if line.startswith("| `")]
    documented = {m for line in table for m in re.findall(r"^\| `(CAPSNET_[A-Z_]+)`", line)}
    assert len(read) >= 10 and read == documented, {"undocumented": read - documented, "not read": documented - read}


def test_every_make_target_and_variable_is_on_the_makefile_page():
    makefile = (REPO / "Makefile").read_text()
    page = (REPO / "docs" / "reference" / "make.md").read_text()
    targets = re.findall(r"^([a-z-]+):.*## ", makefile, re.MULTILINE)
    variables = re.findall(r"^(?:export )?([A-Z_]+) \?=", makefile, re.MULTILINE) + ["RUN_DIR"]
    assert len(targets) >= 8 and len(variables) >= 10
    missing = [f"make {t}" for t in targets if f"`make {t}`" not in page]
    missing += [v for v in variables if f"`{v}`" not in page]
    assert not missing, missing
