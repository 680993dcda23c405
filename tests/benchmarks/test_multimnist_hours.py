"""benchmarks/multimnist_hours.py: where the hour marks fall in a run's metrics, and the whole script at a
tiny scale (train, stop, resume, score the selected epochs once)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import REPO


@pytest.fixture
def hours(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import multimnist_hours

    return multimnist_hours


def epoch(seconds: float, val: float) -> dict:
    return {"epoch_seconds": seconds - 10, "validation_seconds": 10, "val_accuracy": val}


def test_each_mark_selects_the_best_validation_among_the_epochs_done_by_then(hours):
    curve = [epoch(1500, 0.50), epoch(1500, 0.70), epoch(1500, 0.65), epoch(1500, 0.72), epoch(1500, 0.71)]
    rows = hours.hour_marks(curve, 3600)  # epochs end at 0.42, 0.83, 1.25, 1.67, 2.08 h
    assert [(r["epochs"], r["selected_epoch"], r["val_accuracy"]) for r in rows] == \
        [(2, 2, 0.70), (4, 4, 0.72), (5, 4, 0.72)]
    assert [round(r["hours"], 3) for r in rows] == [1.0, 2.0, round(7500 / 3600, 3)]
    # a run shorter than one mark still reports its last epoch; an empty one nothing
    assert [r["epochs"] for r in hours.hour_marks(curve[:1], 3600)] == [1]
    assert hours.hour_marks([], 3600) == []
    # a mark that falls exactly on the last epoch is not repeated
    assert len(hours.hour_marks([epoch(3600, 0.5)], 3600)) == 1


@pytest.mark.slow
def test_the_script_trains_resumes_and_scores_each_selected_epoch_once(hours, synthetic_data_dir, tmp_path,
                                                                     monkeypatch):
    from training.config import PROFILES, TrainConfig

    tiny = TrainConfig(variant="tiny", dataset="multimnist", epochs=3, batch_size=32, epoch_size=64, val_size=200,
                       test_partners=1, max_shift=4)
    monkeypatch.setitem(PROFILES, "tiny-pairs", tiny)
    args = ["--profile", "tiny-pairs", "--out", str(tmp_path), "--data-dir", str(synthetic_data_dir),
            "--every-hours", "0.00001"]  # a mark every 36 ms: several per epoch
    assert hours.main([*args, "--time-limit", "0.001"]) == 0  # stopped in its first epoch
    stopped = json.loads((tmp_path / "tiny-pairs-hours.json").read_text())
    assert not stopped["complete"]

    assert hours.main(args) == 0  # resumes and finishes
    result = json.loads((tmp_path / "tiny-pairs-hours.json").read_text())
    assert result["complete"] and result["rows"][-1]["epochs"] == 3
    curve = [json.loads(line) for line in (tmp_path / "tiny-pairs" / "metrics.jsonl").read_text().splitlines()]
    for row in result["rows"]:
        assert 0.0 <= row["exact_pair_error"] <= 1.0 and row["test_pairs"] == 200  # 200 test digits x 1 partner
        assert row["val_accuracy"] == curve[row["selected_epoch"] - 1]["val_accuracy"]
    selected = {row["selected_epoch"] for row in result["rows"]}
    assert {p.name for p in (tmp_path / "tiny-pairs" / "scores").iterdir()} == {f"epoch-{e:03d}" for e in selected}

    # a rerun scores nothing again
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "tiny-pairs" / "scores").rglob("evaluation.json")}
    assert hours.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "tiny-pairs" / "scores").rglob("evaluation.json")} == mtimes


def test_a_profile_of_single_digits_is_refused(hours, tmp_path, caplog):
    assert hours.main(["--profile", "quick", "--out", str(tmp_path)]) == 2
    assert "profile quick trains mnist, not overlapping pairs" in caplog.text and not (tmp_path / "quick").exists()
