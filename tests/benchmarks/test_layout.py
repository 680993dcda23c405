"""benchmarks/: the scripts share code through benchmarks/common/ only, and no script imports
another; every script says which machine its numbers came from through common/machine.py."""

from __future__ import annotations

from tests.helpers import REPO, imports_in

BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))


def test_no_script_imports_another_script():
    scripts = {p.stem for p in SCRIPTS}
    crossings = [f"{p.name} imports {name}" for p in SCRIPTS for name in imports_in(p) if name.split(".")[0] in scripts]
    assert not crossings, crossings


def test_no_script_describes_its_machine_by_itself():
    """platform.machine() said 'x86_64' for two CPUs 3-4x apart in speed: common/machine.py says more."""
    homemade = [p.name for p in SCRIPTS
                if any(own in p.read_text() for own in ("platform.machine()", "platform.node()", "os.uname()"))]
    assert not homemade, homemade
