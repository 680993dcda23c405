"""benchmarks/capsule_claims.py, the claims report, runs end to end at the tiny scale (tiny networks,
synthetic digits, a few steps per run) so that it cannot rot, and a second invocation resumes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from tests.helpers import REPO

SCRIPT = REPO / "benchmarks" / "capsule_claims.py"


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_the_tiny_report_has_every_claim_and_a_fresh_clone_rebuilds_it_from_its_records(synthetic_data_dir, tmp_path):
    args = ("--scale", "tiny", "--data-dir", str(synthetic_data_dir), "--out", str(tmp_path / "runs"),
            "--report", str(tmp_path / "report"))
    result = run_report(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    report = (tmp_path / "report" / "report.md").read_text()
    for claim in ("robust to affine", "less training data", "routing iterations", "crowded scenes"):
        assert claim in report
    for plot in ("affine", "efficiency", "routing", "crowded"):
        assert f"({plot}.png)" in report and Image.open(tmp_path / "report" / f"{plot}.png").size[0] > 200
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    affine = results["affine"]
    # every run says where it trained, and the report names the machines (here: one, for every run)
    machine = affine["models"]["capsnet"]["machine"]
    assert machine.startswith("CPU ") and f"Runs trained on: {machine}: " in report and "not recorded" not in report
    assert results["scale"] == "tiny" and results["budget"]["affine_digits"] == 3
    for run in affine["models"].values():  # each model stopped where it first reached the matched accuracy
        assert run["matched"]["val_accuracy"] >= affine["matched_val_accuracy"]
        assert all(v < affine["matched_val_accuracy"] for v in run["val_curve"][:run["matched"]["epoch"] - 1])
        assert run["best"]["val_accuracy"] == max(run["val_curve"])
        assert run["matched"]["affine"]["count"] == 3 * 32
    # every seed compared on its own runs; the first seed's is the top level; the gap over seeds
    assert list(affine["seeds"]) == ["0", "1"] and affine["seeds"]["0"]["models"] == affine["models"]
    assert (tmp_path / "runs" / "tiny" / "affine" / "seed1" / "capsnet" / "result.json").is_file()
    gaps = [one["models"]["capsnet"]["matched"]["affine"]["accuracy"] - one["models"]["cnn"]["matched"]["affine"][
        "accuracy"] for one in affine["seeds"].values()]
    assert affine["gap"]["per_seed"] == gaps and affine["gap"]["mean"] == pytest.approx(sum(gaps) / 2)
    assert "Against `cnn-tiny` over 2 seeds:" in report and "Incomplete" not in report
    assert "Gap against `cnn-tiny` at the matched stop" in report
    # the other CNN is compared with the same CapsNet runs, matched on its own, in its own folder
    other = affine["other_cnns"]["cnn-tiny"]
    assert list(other["seeds"]) == ["0", "1"] and len(other["gap"]["per_seed"]) == 2
    for seed, one in other["seeds"].items():
        assert one["models"]["capsnet"]["val_curve"] == affine["seeds"][seed]["models"]["capsnet"]["val_curve"]
        assert one["matched_val_accuracy"] == min(max(r["val_curve"]) for r in one["models"].values())
    assert (tmp_path / "runs" / "tiny" / "affine" / "seed1" / "cnn-tiny" / "result.json").is_file()
    assert report.count("Gap against `cnn-tiny`") == 2
    rows = results["efficiency"]["rows"]
    assert len(rows) == 2 * 2 * 2 and len({r["steps"] for r in rows}) == 1  # same steps for every fraction
    assert {(r["routing_iters"], r["reconstruction"]) for r in results["routing"]["rows"]} == \
        {(1, True), (1, False), (3, True), (3, False)}
    assert all("exact_pair_error" in m["test_metrics"] for m in results["crowded"]["models"].values())

    # A fresh clone has the report but not the run folders: --from-report rebuilds the whole report from
    # the records in runs.json alone, training nothing (no time to train) and writing no checkpoint.
    runs = json.loads((tmp_path / "report" / "runs.json").read_text())
    assert runs["scale"] == "tiny" and len(runs["records"]) == len(list((tmp_path / "runs").rglob("result.json")))
    fresh = run_report("--scale", "tiny", "--data-dir", str(synthetic_data_dir), "--out", str(tmp_path / "fresh"),
                       "--report", str(tmp_path / "fresh-report"), "--time-limit", "0",
                       "--from-report", str(tmp_path / "report"))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert f"restored {len(runs['records'])} run and score records" in fresh.stderr
    assert json.loads((tmp_path / "fresh-report" / "results.json").read_text()) == results
    assert json.loads((tmp_path / "fresh-report" / "runs.json").read_text()) == runs
    assert not list((tmp_path / "fresh").rglob("*.pt"))

    # A finished run made with other settings (say, an older budget) is refused, not silently reused.
    done = tmp_path / "runs" / "tiny" / "affine" / "capsnet" / "result.json"
    stale = json.loads(done.read_text())
    stale["key"]["epochs"] += 1
    done.write_text(json.dumps(stale))
    refused = run_report(*args)
    assert refused.returncode == 2 and "made with other settings" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_from_report_refuses_another_scales_runs_and_a_report_without_them(tmp_path, monkeypatch, caplog):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import capsule_claims

    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "runs.json").write_text(json.dumps({"scale": "tiny", "records": {}}))
    args = ["--scale", "cpu", "--out", str(tmp_path / "runs"), "--from-report"]
    assert capsule_claims.main([*args, str(tmp_path / "report")]) == 2
    assert "holds the runs of the 'tiny' scale, not 'cpu'" in caplog.text
    assert capsule_claims.main([*args, str(tmp_path)]) == 2
    assert "carry no runs.json" in caplog.text and not (tmp_path / "runs").exists()


def test_a_used_up_time_box_stops_cleanly_and_writes_no_report(synthetic_data_dir, tmp_path):
    result = run_report("--scale", "tiny", "--data-dir", str(synthetic_data_dir), "--out", str(tmp_path / "runs"),
                        "--report", str(tmp_path / "report"), "--time-limit", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "time box used up" in result.stderr and "run the same command again" in result.stderr
    assert not (tmp_path / "report").exists() and "Traceback" not in result.stderr


def test_the_time_box_hands_each_run_what_is_left_and_stops_at_an_interrupted_one(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from claims.experiments import OutOfTime, TimeBox

    from training.config import TrainConfig

    seen = []

    def run(run_dir, config, data_dir, interrupted=False):
        seen.append(config.time_limit_s)
        return {"interrupted": interrupted}

    now = [1000.0]
    box = TimeBox(100.0, clock=lambda: now[0])
    now[0] += 30.0  # 30 s pass before the first run
    assert box.train(tmp_path, TrainConfig(variant="tiny"), None, run) == {"interrupted": False}
    assert seen[0] == 70.0  # what is left of the box
    with pytest.raises(OutOfTime, match="saved its last.pt"):
        box.train(tmp_path, TrainConfig(variant="tiny"), None, lambda *a: run(*a, interrupted=True))
    now[0] += 70.0  # the box is used up: the next run does not start
    with pytest.raises(OutOfTime, match="time box used up"):
        box.train(tmp_path, TrainConfig(variant="tiny"), None, run)
    assert len(seen) == 2
    assert TimeBox(None).train(tmp_path, TrainConfig(variant="tiny"), None, run) and seen[-1] is None


def test_a_run_stopped_before_its_first_epoch_ends_is_interrupted_not_a_crash(synthetic_data_dir, tmp_path,
                                                                               monkeypatch):
    # seen on a real cpu-long run stopped by SIGTERM a minute in: no epoch in metrics.jsonl yet
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from common.runs import train_run

    from training.config import TrainConfig

    config = TrainConfig(variant="tiny", epochs=1, batch_size=8, val_size=120, time_limit_s=1e-6)
    result = train_run(tmp_path / "run", config, str(synthetic_data_dir))
    assert result["interrupted"] and result["val_curve"] == [] and result["train_images_per_sec"] is None


def test_a_time_box_ending_after_the_first_comparison_reports_what_finished(synthetic_data_dir, tmp_path,
                                                                           monkeypatch):
    """cpu-long takes hours in 90-minute pieces: each piece reports the comparisons finished so far."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from claims.experiments import SCALES, OutOfTime, TimeBox, affine_experiment
    from claims.report import write_report

    class TwoRunsBox(TimeBox):  # the CapsNet and the CNN of seed 0, then the time is up
        def train(self, run_dir, config, data_dir, run=None):
            if len(list(tmp_path.rglob("metrics.jsonl"))) >= 2:  # two runs trained
                raise OutOfTime(f"time box used up before {run_dir}")
            return super().train(run_dir, config, data_dir)

    scale = SCALES["tiny"]
    with pytest.raises(OutOfTime) as stopped:
        affine_experiment(scale, tmp_path / "affine", str(synthetic_data_dir), TwoRunsBox(None))
    partial = stopped.value.partial
    assert list(partial["seeds"]) == ["0"] and partial["other_cnns"] == {}
    assert partial["incomplete"] == "1 of 4 comparisons finished (each: the CapsNet against one CNN on one seed)"
    assert partial["gap"]["per_seed"] == [partial["models"]["capsnet"]["matched"]["affine"]["accuracy"]
                                         - partial["models"]["cnn"]["matched"]["affine"]["accuracy"]]
    report = write_report({"affine": partial}, "tiny", tmp_path / "report", {"affine": 1.0}).read_text()
    assert "**Incomplete**: 1 of 4 comparisons" in report and "over 1 seed (of 2, so far)" in report

    # nothing finished: nothing to report, the plain OutOfTime
    with pytest.raises(OutOfTime) as nothing:
        affine_experiment(scale, tmp_path / "other", str(synthetic_data_dir), TwoRunsBox(None))
    assert nothing.value.partial is None


def test_a_restored_run_whose_checkpoint_is_needed_is_trained_again_and_restores_as_such(synthetic_data_dir,
                                                                                         tmp_path, monkeypatch):
    """Run folders stay on the machine that trained them; their records travel. A comparison that needs a
    stop nobody scored, of a run whose checkpoints are elsewhere, trains that model again."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from claims.experiments import SCALES, OutOfTime, TimeBox, affine_pair, restore_runs, run_records

    from training.errors import UserError

    scale, data = SCALES["tiny"], str(synthetic_data_dir)
    here = affine_pair(scale, tmp_path / "here", "cnn-tiny", "cnn", data, TimeBox(None), seed=0)
    assert not any(run.get("retrained") for run in here["models"].values())

    elsewhere = tmp_path / "elsewhere"  # the records without a checkpoint: the same comparison, nothing trains
    assert restore_runs(run_records(tmp_path / "here"), elsewhere) >= 4
    assert affine_pair(scale, elsewhere, "cnn-tiny", "cnn", data, TimeBox(0), seed=0) == here

    for scores in (elsewhere / "capsnet").glob("scores-epoch-*"):  # the CapsNet's stops were never scored there
        (scores / "result.json").unlink()
    with pytest.raises(OutOfTime):  # it would have to train
        affine_pair(scale, elsewhere, "cnn-tiny", "cnn", data, TimeBox(0), seed=0)
    again = affine_pair(scale, elsewhere, "cnn-tiny", "cnn", data, TimeBox(None), seed=0)
    assert again["models"]["capsnet"]["retrained"] is True and "retrained" not in again["models"]["cnn"]
    assert (elsewhere / "capsnet-retrained" / "epoch-001.pt").is_file()
    for run in again["models"].values():
        assert run["matched"]["val_accuracy"] >= again["matched_val_accuracy"]

    third = tmp_path / "third"  # restored once more: the retrained run's records come along, nothing trains
    restore_runs(run_records(elsewhere), third)
    assert affine_pair(scale, third, "cnn-tiny", "cnn", data, TimeBox(0), seed=0) == again
    assert not list(third.rglob("*.pt"))
    with pytest.raises(UserError, match="outside the run folder"):
        restore_runs({"../escaped": {}}, third)

    from claims.report import seeds_section
    lines = seeds_section({"seeds": {"0": again, "1": here}, "gap": {"mean": 0.0, "spread": 0.0,
                                                                    "per_seed": [0.0, 0.0]}}, scale, "cnn-tiny")
    assert sum("(trained again)" in line for line in lines) == 1 and any("*Trained again*" in x for x in lines)


def test_a_run_is_scored_at_its_best_as_soon_as_it_finishes(synthetic_data_dir, tmp_path, monkeypatch):
    """The lower model's best is also its matched stop: scored before the other model trains, it survives a
    time box that ends there, when this machine's checkpoints will be gone by the next invocation."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from claims.experiments import SCALES, OutOfTime, TimeBox, affine_pair, best_epoch, scores_folder

    class OneRunBox(TimeBox):
        def train(self, run_dir, config, data_dir, run=None):
            if list(tmp_path.rglob("metrics.jsonl")):
                raise OutOfTime(f"time box used up before {run_dir}")
            return super().train(run_dir, config, data_dir)

    with pytest.raises(OutOfTime):
        affine_pair(SCALES["tiny"], tmp_path, "cnn-tiny", "cnn", str(synthetic_data_dir), OneRunBox(None), seed=0)
    run = json.loads((tmp_path / "capsnet" / "result.json").read_text())
    assert (scores_folder(tmp_path / "capsnet", best_epoch(run)) / "result.json").is_file()
    assert not any((tmp_path / "cnn").iterdir())  # the CNN never started


def test_the_report_counts_each_run_once_under_the_machine_it_trained_on(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from claims.report import run_machines

    capsnet = {"key": {"variant": "small", "seed": 0}, "val_curve": [0.9], "machine": "CPU A (AVX512)",
               "matched": {"key": {"epoch": 1}}}  # a score's record is not a run
    again = {**capsnet, "val_curve": [0.8], "machine": "CPU B (AVX2)"}  # the same settings, trained again
    old = {"key": {"variant": "small", "seed": 1}, "val_curve": [0.9]}
    results = {"affine": {"models": {"capsnet": capsnet}, "seeds": {"0": {"models": {"capsnet": capsnet}},
                                                                   "1": {"models": {"capsnet": old}}},
                          "other_cnns": {"x": {"seeds": {"0": {"models": {"capsnet": again}}}}}}}
    assert run_machines(results) == \
        "CPU A (AVX512): 1 run; not recorded (runs before 2026-12-07): 1 run; CPU B (AVX2): 1 run"


def test_the_gap_line_says_which_model_each_seed_favours_and_nothing_for_one_seed(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from claims.report import who_is_ahead

    assert who_is_ahead([0.0]) == who_is_ahead([-0.05]) == "."
    assert who_is_ahead([-0.063, -0.08, -0.073]) == "; the CNN ahead on every seed."
    assert who_is_ahead([0.0001, -0.02, -0.03]) == \
        "; a tie (under 0.05 points) on 1, the CNN ahead on 2 of the 3 seeds."  # +0.01 points rounds to 0.0
    assert who_is_ahead([0.01, -0.02]) == "; the CapsNet ahead on 1, the CNN ahead on 1 of the 2 seeds."
