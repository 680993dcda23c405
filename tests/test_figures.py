"""Measured figures quoted in the docs still match the files that record them (the shipped weights'
manifests, benchmarks/results/): when a result is re-measured, this fails until every page quoting it
is updated, the way the docs-examples test keeps code examples honest. Each figure names its one home
(the results file) and the pages that quote it."""

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


@dataclass(frozen=True)
class Figure:
    name: str
    value: Callable[[], str]  # the figure as the docs write it, computed from its results file
    quoted_in: tuple[str, ...]


FIGURES = [
    Figure("shipped MNIST test accuracy",
           lambda: f"{100 * manifest('capsnet-mnist-cpu-best')['evaluation']['accuracy']:.2f} %",
           ("README.md", "docs/weights.md", "docs/training.md", "docs/development.md")),
    Figure("shipped pair model's exact-pair error",
           lambda: f"{100 * manifest('capsnet-multimnist-cpu-best')['evaluation']['exact_pair_error']:.1f} %",
           ("README.md", "docs/weights.md", "docs/crowded-scenes.md", "docs/development.md")),
    Figure("shipped Fashion-MNIST test accuracy (float32 checkpoint)",
           lambda: f"{100 * result('fashion_cpu_best-cpu.json')['test_accuracy']:.2f} %",
           ("README.md", "docs/training.md")),
    Figure("shipped Fashion-MNIST weights as loaded (float16)",
           lambda: f"{100 * manifest('capsnet-fashion-mnist-cpu-best')['evaluation']['accuracy']:.2f} %",
           ("docs/weights.md", "docs/training.md")),
    Figure("fashion-quick test accuracy", lambda: f"{100 * result('fashion_quick-cpu.json')['test_accuracy']:.2f} %",
           ("README.md", "docs/training.md")),
    *[Figure(f"overload goodput ratio, {p}", lambda p=p: overload_ratio(p), ("docs/performance.md",))
      for p in ("http", "oip-binary", "grpc")],
]


@pytest.mark.parametrize("figure", FIGURES, ids=[f.name for f in FIGURES])
def test_a_quoted_figure_matches_its_results_file(figure):
    value = figure.value()
    stale = [page for page in figure.quoted_in if value not in (REPO / page).read_text()]
    assert not stale, f"{figure.name} is {value} in its results file, but not on {stale}"
