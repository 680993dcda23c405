"""benchmarks/gpu_check.py, the prepared GPU check, runs end to end on the CPU with a tiny network, so
that it cannot rot between the rare sessions that have a GPU."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def run_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_help_works_from_the_repository_root():
    result = run_check("--help")
    assert result.returncode == 0 and "--budget-s" in result.stdout and "paper_run" in result.stdout


@pytest.mark.slow
def test_the_tiny_cpu_check_writes_every_section(synthetic_data_dir, tmp_path):
    out, run_dir = tmp_path / "check.json", tmp_path / "run"
    args = ("--tiny", "--device", "cpu", "--data-dir", str(synthetic_data_dir), "--compile-backend", "eager",
            "--repeats", "1", "--out", str(out), "--run-dir", str(run_dir),
            "--weights-out", str(tmp_path / "weights" / "tiny"), "--weights-min-accuracy", "0")
    result = run_check(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # the shared atomic writer's mode, not mkstemp's 0600
    sections = ("environment", "training_throughput", "paper_run", "export", "inference", "weights_file",
                "training_compiled")
    assert {name: report[name]["status"] for name in sections} == dict.fromkeys(sections, "ok")
    assert "paper_run: ok" in out.with_suffix(".log").read_text()

    env = report["environment"]
    assert env["device"] == "cpu" and env["gpu"] is None and env["onnxruntime_cuda_unavailable"]

    speed = report["training_throughput"]
    assert speed["max_abs_diff_probabilities_vs_reference"] < 1e-5  # same weights, same network
    assert set(speed["images_per_sec"]) == {"ours fp32", "reference fp32", "ours bf16", "reference bf16"}
    assert all(rate > 0 for rate in speed["images_per_sec"].values())
    compiled = report["training_compiled"]  # measured last, in the faster eager precision
    assert compiled["backend"] == "eager" and compiled["precision"] == speed["faster_eager_precision"]
    assert compiled["images_per_sec"] > 0 and compiled["speedup_vs_eager"] > 0

    run = report["paper_run"]
    assert run["epochs_done"] == 2 and run["complete"] and len(run["epoch_seconds"]) == 2
    assert 0.0 <= run["test_accuracy"] <= 1.0 and run["best_checkpoint_epoch"] in (1, 2)

    export = report["export"]
    assert export["parity_passed"] and Path(export["onnx"]).exists()
    assert export["cuda_parity"].startswith("not available: ")

    infer = report["inference"]
    assert [row["batch"] for row in infer["images_per_sec"]] == [1, 8, 32]
    engines = {"torch eager (cpu)", "torch compiled (eager, cpu)", "onnxruntime CPUExecutionProvider"}
    assert all(row[name] > 0 for row in infer["images_per_sec"] for name in engines)
    assert set(infer["p50_latency_ms_batch_1"]) == engines

    weights = report["weights_file"]  # packed because the tiny check asks for 0 %, scored as loaded
    assert weights["packed"] and (tmp_path / "weights" / weights["weights"]).is_file()
    assert weights["checkpoint_test_accuracy"] == run["test_accuracy"]
    assert abs(weights["float16_test_accuracy"] - run["test_accuracy"]) <= 0.02

    # a second check resumes the finished run instead of starting over; below the bar, nothing is packed
    again = run_check(*args, "--bf16", "off", "--weights-min-accuracy", "1.01")
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads(out.read_text())
    assert second["paper_run"]["resumed_from_epoch"] == 2
    assert not second["weights_file"]["packed"] and "below 1.01" in second["weights_file"]["reason"]


def test_a_failing_section_is_recorded_and_the_check_goes_on(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_check import Check

    check = Check(tmp_path / "check.json", budget_s=60, args={})

    def broken() -> dict:
        raise RuntimeError("no such GPU")

    assert check.section("first", broken)["status"] == "error"
    assert check.section("second", lambda: {"value": 1})["status"] == "ok"
    assert check.section("third", lambda: {}, needs_s=3600)["status"] == "skipped"
    written = json.loads((tmp_path / "check.json").read_text())
    assert written["first"]["error"] == "RuntimeError: no such GPU" and written["second"]["value"] == 1
    assert "3600 s needed" in written["third"]["reason"]
