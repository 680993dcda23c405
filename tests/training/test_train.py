import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from tests.helpers import REPO, free_port
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.errors import ConfigError
from training.evaluate import evaluate_checkpoint
from training.train import train


def run_train(config, out, data_dir, **kw):
    return train(config, out, data_dir, progress=False, **kw)


def test_short_run_writes_loadable_checkpoints_and_metrics(tiny_train_config, synthetic_data_dir, tmp_path):
    summary = run_train(tiny_train_config, tmp_path / "run", synthetic_data_dir)
    assert summary["epochs"] == 2 and summary["steps"] == 2 * (520 // 32)
    assert not summary["interrupted"] and 0.0 <= summary["test_accuracy"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    assert lines[1]["train_loss"] < lines[0]["train_loss"]
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)  # plain data only
    assert best["metrics"]["test_accuracy"] == summary["test_accuracy"]
    assert best["train_config"]["variant"] == "tiny" and best["model_config"]["routing_iters"] == 3
    assert best["class_names"] == [str(d) for d in range(10)]
    model = model_from_checkpoint(best)
    assert model(torch.rand(1, 1, 28, 28))[0].shape == (1, 10)
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_same_seed_same_loss_different_seed_different(tiny_train_config, synthetic_data_dir, tmp_path):
    cfg = dataclasses.replace(tiny_train_config, epochs=1)
    run_train(cfg, tmp_path / "a", synthetic_data_dir)
    run_train(cfg, tmp_path / "b", synthetic_data_dir)
    run_train(dataclasses.replace(cfg, seed=1), tmp_path / "c", synthetic_data_dir)
    loss = {k: json.loads((tmp_path / k / "metrics.jsonl").read_text())["train_loss"] for k in "abc"}
    assert loss["a"] == loss["b"]
    assert loss["a"] != loss["c"]


def test_resume_in_the_middle_matches_straight_run(tiny_train_config, synthetic_data_dir, tmp_path):
    # 16 steps per epoch: stopping at 10 is mid-epoch, and 20 crosses the epoch boundary.
    straight = dataclasses.replace(tiny_train_config, max_steps=20)
    run_train(straight, tmp_path / "straight", synthetic_data_dir)
    first = run_train(dataclasses.replace(straight, max_steps=10), tmp_path / "resumed", synthetic_data_dir)
    assert first["interrupted"] and first["steps"] == 10
    second = run_train(straight, tmp_path / "resumed", synthetic_data_dir, resume=True)
    assert second["steps"] == 20
    a = load_checkpoint(tmp_path / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, tensor in a["model_state"].items():
        assert torch.equal(tensor, b["model_state"][name]), name
    assert a["optimizer_state"]["state"][0]["step"] == b["optimizer_state"]["state"][0]["step"]
    metrics = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in metrics] == [1]


def test_a_time_limit_stops_resumably_and_resume_finishes(tiny_train_config, synthetic_data_dir, tmp_path):
    limited = dataclasses.replace(tiny_train_config, epochs=1, time_limit_s=0.0)  # due after the first step
    first = run_train(limited, tmp_path / "run", synthetic_data_dir)
    assert first["interrupted"] and first["stopped_by_time_limit"] and not first["stopped_by_signal"]
    assert first["steps"] == 1 and "test_accuracy" not in first
    # the limit is per invocation and may change on resume, like --epochs
    second = run_train(dataclasses.replace(limited, time_limit_s=None), tmp_path / "run", synthetic_data_dir,
                       resume=True)
    assert not second["interrupted"] and second["steps"] == 520 // 32 and 0.0 <= second["test_accuracy"] <= 1.0


def test_a_target_validation_accuracy_ends_the_run_early_and_finished(tiny_train_config, synthetic_data_dir,
                                                                       tmp_path):
    # any accuracy reaches 0.0: the run stops after its first epoch, as a finished run (scored on test)
    reached = run_train(dataclasses.replace(tiny_train_config, epochs=3, target_val_accuracy=0.0),
                        tmp_path / "run", synthetic_data_dir)
    assert reached["epochs"] == 1 and not reached["interrupted"] and 0.0 <= reached["test_accuracy"] <= 1.0
    # a target no run can reach leaves the epoch count in charge; the target may change on resume
    rest = run_train(dataclasses.replace(tiny_train_config, epochs=3, target_val_accuracy=1.01),
                     tmp_path / "run", synthetic_data_dir, resume=True)
    assert rest["epochs"] == 3 and not rest["interrupted"]


def test_resume_refuses_a_different_run_config(tiny_train_config, synthetic_data_dir, tmp_path):
    run_train(dataclasses.replace(tiny_train_config, max_steps=2), tmp_path / "run", synthetic_data_dir)
    with pytest.raises(ValueError, match="cannot resume.*lr="):
        run_train(dataclasses.replace(tiny_train_config, lr=0.1), tmp_path / "run", synthetic_data_dir,
                  resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        run_train(tiny_train_config, tmp_path / "run", synthetic_data_dir)


def test_truncated_checkpoint_is_a_clear_error(tiny_train_config, synthetic_data_dir, tmp_path):
    run_train(dataclasses.replace(tiny_train_config, max_steps=1), tmp_path / "run", synthetic_data_dir)
    data = (tmp_path / "run" / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_evaluate_writes_json_and_figures(tiny_train_config, synthetic_data_dir, tmp_path):
    run_train(dataclasses.replace(tiny_train_config, epochs=1), tmp_path / "run", synthetic_data_dir)
    result = evaluate_checkpoint(tmp_path / "run" / "best.pt", synthetic_data_dir)
    saved = json.loads((tmp_path / "run" / "evaluation.json").read_text())
    assert saved["num_images"] == 200 and saved["accuracy"] == result["accuracy"]
    cm = torch.tensor(saved["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 200
    assert cm.diag().sum() == 200 - saved["errors"]
    assert set(saved["per_class_accuracy"]) == {str(d) for d in range(10)}
    fig4 = Image.open(tmp_path / "run" / "pose_perturbations.png")
    assert fig4.size == (2 + 11 * 30, 2 + 8 * 30)  # 11 perturbations x 8 pose dims (tiny), 28+2 px tiles
    assert Image.open(tmp_path / "run" / "reconstructions.png").size == (2 + 8 * 30, 2 + 8 * 30)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "training.train", "--variant", "tiny", "--batch-size", "32",
            "--val-size", "120", "--device", "cpu", "--no-progress", *args]


@pytest.mark.slow
def test_two_process_gloo_ddp_run_completes(synthetic_data_dir, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "training.train",
           *cli("--out", str(tmp_path / "ddp"), "--data-dir", str(synthetic_data_dir), "--epochs", "1")[3:]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s)" in proc.stderr
    ckpt = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ckpt["step"] == 520 // 32 and ckpt["epoch"] == 1
    assert not any(k.startswith("module.") for k in ckpt["model_state"])


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_continues(synthetic_data_dir, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli("--out", str(out), "--data-dir", str(synthetic_data_dir), "--epochs", "500"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (out / "last.pt").exists() and time.time() < deadline:  # first epoch done
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "SIGTERM" in stderr
    stopped = load_checkpoint(out / "last.pt")
    assert stopped["step"] >= 16
    resumed = subprocess.run(cli("--out", str(out), "--data-dir", str(synthetic_data_dir), "--resume",
                                 "--max-steps", str(stopped["step"] + 3)),
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(out / "last.pt")["step"] == stopped["step"] + 3


def test_full_disk_keeps_the_previous_checkpoint_intact(tiny_train_config, synthetic_data_dir, tmp_path,
                                                        monkeypatch):
    import errno

    import training.checkpoint

    cfg = dataclasses.replace(tiny_train_config, max_steps=2)
    run_train(cfg, tmp_path / "run", synthetic_data_dir)
    before = (tmp_path / "run" / "last.pt").read_bytes()

    def disk_full(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(training.checkpoint.torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_train(dataclasses.replace(cfg, max_steps=4), tmp_path / "run", synthetic_data_dir, resume=True)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt"]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2


class InMemoryDigits:
    """A TrainingData that is not MNIST: fixed tensors, no files, no augmentation."""

    class_names = tuple("abcdefghij")

    def __init__(self, n: int) -> None:
        from training.data import synthetic_digits

        images, labels = synthetic_digits(n + 40, seed=5)
        self.images = torch.from_numpy(images).unsqueeze(1)
        self.labels = torch.from_numpy(labels).long()
        self.n = n

    def __len__(self) -> int:
        return self.n

    def train_batch(self, indices, generator):
        from training.data import Batch
        from training.metrics import to_float

        x = to_float(self.images[indices])
        return Batch(x, self.labels[indices], torch.zeros_like(x))

    def validation_set(self):
        return self.images[self.n:], self.labels[self.n:]

    def test_set(self):
        return self.images[-10:], self.labels[-10:]

    def count_correct(self, lengths, labels) -> int:
        return int((lengths.argmax(1) == labels).sum())

    def metrics(self, probabilities, labels):
        return {"accuracy": float((probabilities.argmax(1) == labels).double().mean())}


def test_the_loop_takes_any_data_source_and_loss(tiny_train_config, tmp_path):
    from training.losses import capsnet_loss

    targets_seen = []

    def loss(model, images, labels, targets):
        targets_seen.append(float(targets.abs().sum()))
        return capsnet_loss(model, images, labels, targets, recon_weight=0.0005)

    cfg = dataclasses.replace(tiny_train_config, epochs=1)
    summary = train(cfg, tmp_path / "run", data=InMemoryDigits(64), loss=loss, progress=False)
    assert summary["steps"] == 2 and targets_seen == [0.0, 0.0]  # our targets, our loss, 64 // 32 steps
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["class_names"] == list("abcdefghij")


def test_cli_user_mistakes_exit_2_with_one_line_and_bugs_keep_their_traceback(synthetic_data_dir, tmp_path):
    mistakes = [
        ["--out", str(tmp_path / "a"), "--data-dir", str(tmp_path / "nowhere"), "--max-steps", "1"],
        ["--out", str(tmp_path / "b"), "--data-dir", str(synthetic_data_dir), "--val-size", "999999"],
        ["--out", str(tmp_path / "c"), "--resume"],
    ]
    env = {**os.environ, "CAPSNET_DATA_DIR": str(tmp_path / "nowhere")}
    for args in mistakes:
        proc = subprocess.run(cli(*args), cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and "ERROR" in proc.stderr, proc.stderr[-2000:]
    # A RuntimeError from inside torch is a bug, not a user mistake: it must not be swallowed.
    from training import train as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("a bug deep inside")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "train", broken)
        with pytest.raises(RuntimeError, match="a bug deep inside"):
            train_module.main(["--out", str(tmp_path / "d")])


def test_epoch_order_cuts_or_repeats_permutations():
    from training.train import epoch_order

    short, full = epoch_order(3, 1, 100, 40), epoch_order(3, 1, 100, 100)
    assert torch.equal(short, full[:40]) and sorted(full.tolist()) == list(range(100))
    long = epoch_order(3, 1, 10, 25)  # a subset gone through 2.5 times: each pass a permutation
    assert len(long) == 25 and sorted(long[:10].tolist()) == sorted(long[10:20].tolist()) == list(range(10))
    assert not torch.equal(long[:10], long[10:20])


def test_epoch_size_and_train_fraction_give_every_fraction_the_same_steps(tiny_train_config, synthetic_data_dir,
                                                                            tmp_path):
    steps = {}
    for fraction in (0.05, 1.0):
        config = dataclasses.replace(tiny_train_config, epochs=1, epoch_size=256, train_fraction=fraction,
                                     keep_epoch_checkpoints=True)
        steps[fraction] = run_train(config, tmp_path / str(fraction), synthetic_data_dir)["steps"]
        assert (tmp_path / str(fraction) / "epoch-001.pt").is_file()
    assert steps == {0.05: 8, 1.0: 8}  # 256 / 32 either way, though 5 % is 26 of the 520 images


def test_train_fraction_picks_a_seeded_subset(synthetic_data_dir):
    from training.tasks import training_data

    def subset(seed):
        return training_data(TrainConfig(variant="tiny", val_size=120, train_fraction=0.1, seed=seed),
                             synthetic_data_dir).train_images

    assert len(subset(0)) == 52 and torch.equal(subset(0), subset(0)) and not torch.equal(subset(0), subset(1))
    with pytest.raises(ConfigError, match="train_fraction"):
        TrainConfig(train_fraction=0.0)


def test_a_translated_mnist_run_is_scored_on_the_affine_set(synthetic_data_dir, tmp_path):
    config = TrainConfig(variant="tiny", dataset="translated-mnist", max_shift=6, epochs=1, batch_size=32,
                         val_size=120, epoch_size=64, device="cpu")
    run_train(config, tmp_path / "run", synthetic_data_dir)
    result = evaluate_checkpoint(tmp_path / "run" / "best.pt", synthetic_data_dir, affine_digits=3)
    affine = result["affine"]
    assert affine["digits"] == 3 and affine["per_digit"] == 32 and affine["count"] == 96
    assert affine["translation_within_6px"]["count"] + affine["translation_beyond_6px"]["count"] == 96
    assert 0 <= result["translation_only_6px"] <= 1 and 0 <= result["centred"] <= 1
    assert result["num_images"] == 200 and result["accuracy"] == pytest.approx(result["translation_only_6px"])


def test_a_metrics_line_cut_short_by_a_crash_does_not_break_the_resume(tiny_train_config, synthetic_data_dir,
                                                                        tmp_path, caplog):
    """A process killed while appending metrics.jsonl leaves a cut-short last line (the epoch's last.pt
    was not saved yet): the resume reads past it, drops it and goes on; damage before the last line is
    an error that names the file and line."""
    from training.run_dir import read_metrics

    run = tmp_path / "run"
    run_train(dataclasses.replace(tiny_train_config, epochs=1), run, synthetic_data_dir)
    metrics = run / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(whole + whole[: len(whole) // 2])  # epoch 2's line, torn half way
    with caplog.at_level("WARNING"):
        assert [r["epoch"] for r in read_metrics(run)] == [1]
    assert "cut short" in caplog.text
    resumed = run_train(dataclasses.replace(tiny_train_config, epochs=2), run, synthetic_data_dir, resume=True)
    assert resumed["epochs"] == 2 and not resumed["interrupted"]
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]  # no torn line left
    metrics.write_text("{broken\n" + metrics.read_text())
    with pytest.raises(ConfigError, match="metrics.jsonl: line 1 is not a JSON record"):
        read_metrics(run)
