"""One home per figure: a measured number quoted in the docs matches the file that records it (the
shipped weights' manifests, benchmarks/results/), lives on one page (its home, which tells the run) and
appears elsewhere only where this list says it is quoted (the README's results table, an example of
output); every other page links to the home. When a result is re-measured this fails until every page
quoting it is updated, and a new copy of a figure on another page fails until it is listed here or
replaced by a link, the way the docs-examples test keeps code examples honest."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.helpers import REPO


def manifest(name: str) -> dict:
    return json.loads((REPO / "weights" / f"{name}.json").read_text())


def result(name: str) -> dict:
    return json.loads((REPO / "benchmarks" / "results" / name).read_text())


def overload_ratio(protocol: str) -> str:
    """Goodput at 512 clients over 64, honouring Retry-After (the final sweep: the file's last line)."""
    last = json.loads((REPO / "benchmarks" / "results" / "overload-cpu.jsonl").read_text().splitlines()[-1])
    rate = {r["clients"]: r["goodput_per_sec"] for r in last["rows"] if r["protocol"] == protocol and r["backoff"]}
    return f"**{rate[512] / rate[64]:.2f}**"


def cpu_long_affine() -> dict:
    return json.loads((REPO / "docs" / "claims" / "cpu-long" / "results.json").read_text())["affine"]


def signed(fraction: float) -> str:
    """A difference of two accuracies as the docs write it: points with an explicit sign and a real minus."""
    return f"{100 * fraction:+.1f}".replace("-", "−")


def claims_gap() -> str:
    """The cpu-long affine gap (CapsNet minus the pooled CNN at matched validation, first seed)."""
    return signed(cpu_long_affine()["gap"]["per_seed"][0]) + " points"


def claims_gap_over_seeds(cnn: str | None = None) -> str:
    """The cpu-long affine gap against the pooled CNN (or the other CNN `cnn`) over the seeds run so far:
    mean ± half the range."""
    affine = cpu_long_affine()
    gap = affine["gap"] if cnn is None else affine["other_cnns"][cnn]["gap"]
    return f"{signed(gap['mean'])} ± {100 * gap['spread']:.1f} points"


def pooled_cnn_rerun() -> str:
    """A second run of the cpu-long pooled CNN's seed 1 against the recorded one: affine accuracy at epoch 12."""
    runs = result("claims_cpu_long_rerun-cpu.json")
    rerun, recorded = (runs[which]["affine/seed1/cnn/scores-epoch-012"]["affine"]["accuracy"]
                       for which in ("rerun", "recorded"))
    return f"**{100 * rerun:.2f} against {100 * recorded:.2f} %**"


def quick_seeds() -> str:
    spread = result("seed_spread-quick-cpu.json")
    return f"{100 * spread['test_accuracy_mean']:.2f} ± {100 * spread['test_accuracy_half_range']:.2f} %"


@dataclass(frozen=True)
class Figure:
    name: str
    value: Callable[[], str]  # the figure as the docs write it, computed from its results file
    home: str  # the page that tells the run
    quoted_in: tuple[str, ...] = ("README.md",)  # the only other pages that may repeat it


DOC_PAGES = sorted(str(p.relative_to(REPO)) for p in [REPO / "README.md", *(REPO / "docs").rglob("*.md"),
                                                       REPO / "benchmarks" / "README.md"])

FIGURES = [
    Figure("shipped MNIST test accuracy",
           lambda: f"{100 * manifest('capsnet-mnist-cpu-best')['evaluation']['accuracy']:.2f} %",
           "docs/weights.md", ("README.md", "docs/serving.md")),  # serving.md: its start-up line, verbatim
    Figure("shipped pair model's exact-pair error",
           lambda: f"{100 * manifest('capsnet-multimnist-cpu-best')['evaluation']['exact_pair_error']:.1f} %",
           "docs/crowded-scenes.md"),
    Figure("shipped Fashion-MNIST test accuracy (float32 checkpoint)",
           lambda: f"{100 * result('fashion_cpu_best-cpu.json')['test_accuracy']:.2f} %", "docs/training.md"),
    Figure("shipped Fashion-MNIST weights as loaded (float16)",
           lambda: f"{100 * manifest('capsnet-fashion-mnist-cpu-best')['evaluation']['accuracy']:.2f} %",
           "docs/training.md", ()),
    Figure("fashion-quick test accuracy", lambda: f"{100 * result('fashion_quick-cpu.json')['test_accuracy']:.2f} %",
           "docs/training.md"),
    Figure("quick profile over three seeds", quick_seeds, "docs/training.md"),
    Figure("affine gap at matched validation (cpu-long, seed 0)", claims_gap, "docs/claims.md", ()),
    Figure("affine gap over seeds (cpu-long)", claims_gap_over_seeds, "docs/claims.md", ("README.md",)),
    Figure("affine gap over seeds against the unpooled CNN (cpu-long)", lambda: claims_gap_over_seeds("cnn-small"),
           "docs/claims.md", ("README.md", "docs/claims/cpu-long/report.md")),  # the report is generated
    Figure("a second run of the pooled CNN's seed 1 (cpu-long)", pooled_cnn_rerun, "docs/claims.md", ()),
    *[Figure(f"overload goodput ratio, {p}", lambda p=p: overload_ratio(p), "docs/performance.md", ())
      for p in ("http", "oip-binary", "grpc")],
]


@pytest.mark.parametrize("figure", FIGURES, ids=[f.name for f in FIGURES])
def test_a_quoted_figure_matches_its_results_file_and_lives_only_where_listed(figure):
    value = figure.value()
    listed = {figure.home, *figure.quoted_in}
    holding = {page for page in DOC_PAGES if value in (REPO / page).read_text()}
    assert not listed - holding, f"{figure.name} is {value} in its results file, but not on {sorted(listed - holding)}"
    assert not holding - listed, (f"{figure.name} ({value}) is copied onto {sorted(holding - listed)}: link to "
                                  f"{figure.home} instead, or list the page as quoting it")
