"""The prepared GPU check (issue 9): one command for a machine with one CUDA GPU that finishes within
the time budget (default 450 s, under 8 minutes with start-up) and writes one JSON file and a log.

Sections, in order, each timed and each recording its error instead of ending the check (the JSON is
rewritten atomically after every section, so a killed check still leaves what it measured):

  environment          GPU, driver, CUDA/cuDNN of torch, torch / ONNX Runtime versions, providers,
                       why ONNX Runtime cannot use CUDA (if it cannot)
  training_throughput  training images/s of the paper network, ours vs the broadcast reference of
                       benchmarks/train_throughput.py, same batch: fp32 (TF32 on) and bf16 autocast;
                       the epoch time they imply
  paper_run            the paper profile through capsnet train's own loop, as many of its 50 epochs
                       as the budget leaves (resumable: run the check again to go on), then the
                       val-selected checkpoint's test accuracy
  export               that checkpoint exported with parity proven, on ONNX Runtime's CUDA provider
                       where it is usable (else recorded as not available, and why)
  inference            images/s at batch 1 / 64 / 1024 for torch eager, torch compiled, ONNX Runtime
                       (CUDA where usable, and CPU), and p50 latency at batch 1
  weights_file         when the val-selected checkpoint reaches --weights-min-accuracy (99.6 %) on the
                       test set: it as a float16 weights file + manifest (training/weights_file.py),
                       evaluated as users load it (default weights/, where make pretrained looks)
  training_compiled    ours under torch.compile in the faster precision (last: compiling must
                       not eat the paper run's time)

    python benchmarks/gpu_check.py                       # on the GPU machine
    python benchmarks/gpu_check.py --tiny --device cpu --data-dir DIR --compile-backend eager \\
        --out /tmp/check.json --run-dir /tmp/check-run   # the test suite's CPU run, seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from common.machine import cpu_name
from common.timing import median_latency_ms, median_rate
from common.train_steps import BroadcastCapsNet, train_step_fn

from export.inference_graph import InferenceGraph
from export.onnx_export import export_onnx
from export.onnx_io import open_session
from export.parity_report import parity_summary
from serving.engine.providers import CPU, CUDA, cuda_unavailable_reason, cuda_usable
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import PROFILES, TrainConfig, variant_config
from training.data import DATA_DIR_HELP
from training.distributed import resolve_device
from training.errors import setup_cli_logging
from training.fileio import write_json
from training.model import CapsNet
from training.run_dir import BEST, has_run, read_metrics, resumed_config
from training.tasks import training_data
from training.train import record_test_metrics, train
from training.weights_file import evaluate_weights, pack_weights

log = logging.getLogger("gpu_check")

MNIST_TRAIN_IMAGES = 60_000  # the training split, before validation is carved from it
# Kept back from the training run for what follows it (export with parity, inference with
# compilation), by the size of the check: measured on nothing yet for the GPU, so generous.
RESERVE_AFTER_RUN_S = {"full": 210.0, "tiny": 20.0}
RESERVE_COMPILE_S = {"full": 60.0, "tiny": 0.0}  # compiling the training step, then timing it
PAPER_GRADE_ACCURACY = 0.996  # issue 9: a run this good is kept as a weights file for CPU users


@dataclasses.dataclass(frozen=True)
class Size:
    """What the check runs on: the paper network (GPU), or a tiny one (the CPU run in the tests)."""

    name: str
    variant: str
    train_batch: int
    run_config: TrainConfig
    infer_batches: tuple[int, ...]
    parity_limit: int | None
    timing_scale: float = 1.0  # times the timed rounds' minimum length (tiny: the sections, not the speeds)


def check_size(tiny: bool, train_batch: int, device: str) -> Size:
    if tiny:
        config = TrainConfig(variant="tiny", epochs=2, batch_size=32, val_size=120, train_limit=256,
                             eval_batch_size=100, device=device)
        return Size("tiny", "tiny", 32, config, (1, 8, 32), 64, timing_scale=0.1)
    # The paper profile as capsnet train runs it; another batch would need its own learning-rate
    # scaling and evidence that accuracy holds, so the run keeps the paper's 128.
    return Size("full", "paper", train_batch, dataclasses.replace(PROFILES["paper"], device=device),
                (1, 64, 1024), 1024)


def device_sync(device: torch.device) -> Callable[[], None]:
    """What to call before reading the clock: kernels on a GPU run asynchronously."""
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


class Check:
    """The results so far, the time budget, and the JSON file they are written to."""

    def __init__(self, out: Path, budget_s: float, args: dict[str, Any]) -> None:
        self.out = out
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.results: dict[str, Any] = {"check": "gpu_check", "started": now_iso(), "budget_s": budget_s,
                                        "args": args}

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def section(self, name: str, run: Callable[[], dict[str, Any]], needs_s: float = 0.0) -> dict[str, Any]:
        """Run one section: its result, or status 'error' with the error (traceback in the log), or
        'skipped' when fewer than `needs_s` seconds of the budget are left."""
        t = time.monotonic()
        if self.remaining() < needs_s:
            result: dict[str, Any] = {"status": "skipped",
                                      "reason": f"{self.remaining():.0f} s of the budget left, {needs_s:.0f} s needed"}
            log.warning("%s: skipped (%s)", name, result["reason"])
        else:
            log.info("%s: starting (%.0f s of the budget left)", name, self.remaining())
            try:
                result = {"status": "ok", **run()}
            except Exception as e:  # recorded, and the check goes on with the next section
                log.error("%s failed:\n%s", name, traceback.format_exc())
                result = {"status": "error", "error": f"{type(e).__name__}: {e}"}
        result["seconds"] = round(time.monotonic() - t, 2)
        self.results[name] = result
        self.write()
        log.info("%s: %s in %.1f s", name, result["status"], result["seconds"])
        return result

    def write(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.started, 2)
        self.results["finished"] = now_iso()
        write_json(self.out, self.results)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def environment(device: torch.device) -> dict[str, Any]:
    cuda = device.type == "cuda"
    props = torch.cuda.get_device_properties(device) if cuda else None
    return {
        "device": str(device),
        "gpu": props.name if props else None,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1) if props else None,
        "compute_capability": f"{props.major}.{props.minor}" if props else None,
        "driver": nvidia_driver(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32},
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": ort.get_available_providers(),
        "onnxruntime_cuda_unavailable": cuda_unavailable_reason(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def training_models(size: Size, device: torch.device) -> tuple[CapsNet, BroadcastCapsNet, torch.Tensor, torch.Tensor]:
    """Ours and the reference with the same seeded weights, and one training batch (images, labels)."""
    torch.manual_seed(0)
    ours = CapsNet(variant_config(size.variant)).to(device)
    reference = BroadcastCapsNet(ours.config).to(device)
    reference.load_state_dict(ours.state_dict())
    side = ours.config.image_size
    x = torch.rand(size.train_batch, 1, side, side, device=device)
    y = torch.randint(0, ours.config.num_classes, (size.train_batch,), device=device)
    return ours, reference, x, y


def training_throughput(size: Size, device: torch.device, repeats: int, train_images: int) -> dict[str, Any]:
    """Training images/s in eager mode, ours vs the reference, same weights and batch, per precision."""
    ours, reference, x, y = training_models(size, device)
    with torch.no_grad():
        max_diff = float((ours(x)[0] - reference(x)[0]).abs().max())
    sync = device_sync(device)
    rates: dict[str, float] = {}
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        for name, model in (("ours", ours), ("reference", reference)):
            rates[f"{name} {precision}"] = median_rate(train_step_fn(model, x, y, bf16=bf16), size.train_batch,
                                                       repeats, min_seconds=0.5 * size.timing_scale, sync=sync)
            log.info("training %s %s: %.0f images/s", name, precision, rates[f"{name} {precision}"])
    faster = max(("fp32", "bf16"), key=lambda p: rates[f"ours {p}"])
    return {"batch": size.train_batch, "variant": size.variant,
            "parameters": sum(p.numel() for p in ours.parameters()),
            "max_abs_diff_probabilities_vs_reference": max_diff,
            "images_per_sec": rates,
            "speedup_vs_reference": {p: rates[f"ours {p}"] / rates[f"reference {p}"] for p in ("fp32", "bf16")},
            "best_speedup_vs_reference_fp32": rates[f"ours {faster}"] / rates["reference fp32"],
            "best_speedup_vs_reference_best": rates[f"ours {faster}"] / max(rates["reference fp32"],
                                                                             rates["reference bf16"]),
            "faster_eager_precision": faster,
            "train_images_per_epoch": train_images,
            "epoch_seconds_implied": {k: train_images / v for k, v in rates.items()}}


def training_compiled(size: Size, device: torch.device, repeats: int, backend: str,
                      eager: dict[str, Any]) -> dict[str, Any]:
    """Ours under torch.compile in the faster eager precision, against the eager numbers (measured
    after the paper run, so that compiling does not eat its time)."""
    ours, _, x, y = training_models(size, device)
    precision = eager["faster_eager_precision"]
    step = train_step_fn(ours, x, y, bf16=precision == "bf16", compile_backend=backend)
    sync = device_sync(device)
    t = time.monotonic()
    step()
    sync()
    compile_seconds = time.monotonic() - t
    rate = median_rate(step, size.train_batch, repeats, min_seconds=0.5 * size.timing_scale, sync=sync)
    rates = eager["images_per_sec"]
    return {"backend": backend, "precision": precision, "compile_seconds": round(compile_seconds, 2),
            "images_per_sec": rate, "speedup_vs_eager": rate / rates[f"ours {precision}"],
            "speedup_vs_reference_fp32": rate / rates["reference fp32"],
            "speedup_vs_reference_best": rate / max(rates["reference fp32"], rates["reference bf16"]),
            "epoch_seconds_implied": eager["train_images_per_epoch"] / rate}


def paper_run(size: Size, run_dir: Path, data_dir: str | None, bf16: bool, epoch_estimate_s: float | None,
              time_left_s: float) -> dict[str, Any]:
    """As many epochs of the run profile as fit in `time_left_s` (resuming `run_dir` if it holds a
    run), then the test accuracy of the val-selected checkpoint."""
    resume = has_run(run_dir)
    done = len(read_metrics(run_dir))  # completed epochs
    config = dataclasses.replace(size.run_config, bf16=bf16, time_limit_s=max(1.0, time_left_s))
    if resume:  # the saved run's settings win; only how far and how long may change
        config = resumed_config(run_dir, epochs=config.epochs, time_limit_s=config.time_limit_s,
                                device=config.device, eval_batch_size=config.eval_batch_size)
    if epoch_estimate_s:  # stop at an epoch boundary rather than at the time limit when we can
        fit = int(time_left_s // (epoch_estimate_s * 1.25))  # + loop overhead and validation
        config = dataclasses.replace(config, epochs=min(size.run_config.epochs, max(done + 1, done + fit)))
    log.info("training %s for epochs %d..%d (time limit %.0f s, bf16 %s, resume %s)", config.variant,
             done + 1, config.epochs, config.time_limit_s, config.bf16, resume)
    data = training_data(config, data_dir)
    summary = train(config, run_dir, data_dir, resume=resume, progress=False, data=data)
    epochs = read_metrics(run_dir)
    result: dict[str, Any] = {
        "run_dir": str(run_dir), "resumed_from_epoch": done, "epochs_done": summary["epochs"],
        "epochs_of_profile": size.run_config.epochs, "complete": summary["epochs"] >= size.run_config.epochs,
        "bf16": config.bf16, "batch_size": config.batch_size, "steps": summary["steps"],
        "stopped_by_time_limit": summary["stopped_by_time_limit"],
        "epoch_seconds": [round(e["epoch_seconds"], 3) for e in epochs],
        "validation_seconds": [round(e.get("validation_seconds", 0.0), 3) for e in epochs],
        "val_accuracy": [e["val_accuracy"] for e in epochs],
        "best_val_accuracy": summary["best_val_accuracy"],
    }
    if epochs:
        result["median_epoch_seconds"] = statistics.median(e["epoch_seconds"] for e in epochs)
        result["median_train_images_per_sec"] = statistics.median(e["train_images_per_sec"] for e in epochs)
    if (run_dir / BEST).exists():
        # A finished train() has scored best.pt on the test set; a time-limited one has not.
        result["test_accuracy"] = summary.get("test_accuracy") or record_test_metrics(
            run_dir / BEST, data, config.eval_batch_size, torch.device(config.device))["accuracy"]
        result["best_checkpoint_epoch"] = load_checkpoint(run_dir / BEST)["epoch"]
    return result


def export_section(run_dir: Path, data_dir: str | None, limit: int | None) -> dict[str, Any]:
    checkpoint = run_dir / BEST
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint (the training run did not finish an epoch)")
    reason = cuda_unavailable_reason() if torch.cuda.is_available() else "no CUDA device visible to torch"
    exported = export_onnx(checkpoint, run_dir / "export", data_dir=data_dir, limit=limit)
    report = exported["parity"]
    sections = parity_summary(report)["sections"]
    on_cuda = [s for s in sections if s["provider"] == CUDA]
    return {"onnx": str(run_dir / "export" / "model.onnx"), "parity_passed": report["passed"],
            "parity_inputs": report["inputs"]["kind"], "sections": sections,
            "cuda_parity": ("passed" if all(s["passed"] for s in on_cuda) else "failed") if on_cuda
            else f"not available: {reason or 'ONNX Runtime did not create its CUDA provider'}"}


def inference(size: Size, device: torch.device, run_dir: Path, repeats: int,
              compile_backend: str | None) -> dict[str, Any]:
    """images/s per batch size and engine, p50 latency at batch 1; same weights for every engine."""
    checkpoint, onnx_path = run_dir / BEST, run_dir / "export" / "model.onnx"
    if checkpoint.exists():
        model = model_from_checkpoint(load_checkpoint(checkpoint))
    else:
        torch.manual_seed(0)
        model = CapsNet(variant_config(size.variant))
    graph = InferenceGraph(model.to(device))
    engines: dict[str, Callable[[np.ndarray], Any]] = {}
    sync = device_sync(device)

    def torch_engine(module: Callable) -> Callable[[np.ndarray], Any]:
        def run(x: np.ndarray) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(x).to(device))[0].cpu()  # answers leave the GPU, as served
        return run

    engines[f"torch eager ({device.type})"] = torch_engine(graph)
    if compile_backend:
        engines[f"torch compiled ({compile_backend}, {device.type})"] = torch_engine(
            torch.compile(graph, backend=compile_backend, dynamic=False))
    providers_used = {}
    if onnx_path.exists():
        for providers in ([CUDA, CPU], [CPU]) if cuda_usable() else ([CPU],):
            session = open_session(onnx_path, providers)
            name = f"onnxruntime {session.get_providers()[0]}"
            providers_used[name] = session.get_providers()
            engines[name] = lambda x, s=session: s.run(["probabilities"], {"image": x})[0]
    rng = np.random.default_rng(0)
    side = model.config.image_size
    rows = []
    for batch in size.infer_batches:
        x = rng.random((batch, 1, side, side), dtype=np.float32)
        row: dict[str, Any] = {"batch": batch}
        for name, run in engines.items():
            t = time.monotonic()
            run(x)  # the first call at a new shape compiles / plans; timed apart
            row[f"{name} first call s"] = round(time.monotonic() - t, 3)
            row[name] = median_rate(lambda run=run, x=x: run(x), batch, repeats,
                                    min_seconds=0.3 * size.timing_scale, sync=sync)
            log.info("inference batch %d, %s: %.0f images/s", batch, name, row[name])
        rows.append(row)
    one = rng.random((1, 1, side, side), dtype=np.float32)
    latency = {name: median_latency_ms(lambda run=run: run(one), 50, sync) for name, run in engines.items()}
    return {"weights": str(checkpoint) if checkpoint.exists() else f"seeded {size.variant}",
            "images_per_sec": rows, "p50_latency_ms_batch_1": latency, "onnxruntime_sessions": providers_used}


def weights_section(run: dict[str, Any], run_dir: Path, name: Path, min_accuracy: float,
                    data_dir: str | None, device: torch.device) -> dict[str, Any]:
    """Pack the run's val-selected checkpoint as a float16 weights file when its test accuracy is
    at least `min_accuracy` (issue 9: a paper-grade model for users without a GPU)."""
    accuracy = run.get("test_accuracy")
    if accuracy is None or accuracy < min_accuracy:
        return {"packed": False, "reason": f"test accuracy {accuracy} below {min_accuracy}"}
    manifest = pack_weights(run_dir / BEST, name)
    evaluation = evaluate_weights(name, data_dir, device=str(device))
    return {"packed": True, "weights": manifest["weights_file"], "sha256": manifest["sha256"],
            "bytes": manifest["bytes"], "parameters": manifest["parameters"],
            "checkpoint_test_accuracy": accuracy, "float16_test_accuracy": evaluation["accuracy"]}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_check.json"),
                   help="the JSON file (the log goes beside it, .log)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/gpu-check-paper"),
                   help="the paper run's folder; a run already there is resumed")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--budget-s", type=float, default=450.0, help="time budget for all sections (s)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny network and run: the CPU check in the tests")
    p.add_argument("--train-batch", type=int, default=128, help="batch of the training throughput (paper: 128)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per measurement (median)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend ('none' skips compilation; the tests use 'eager')")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast for the paper run (auto: if it trained faster in eager mode)")
    p.add_argument("--weights-out", type=Path, default=Path("weights/capsnet-mnist-paper"),
                   help="where a paper-grade run's float16 weights file goes (NAME.safetensors + NAME.json)")
    p.add_argument("--weights-min-accuracy", type=float, default=PAPER_GRADE_ACCURACY,
                   help="test accuracy a run needs to be packed as a weights file (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    setup_cli_logging(args.out.with_suffix(".log"))
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # "fp32" on the GPU means TF32 tensor cores
        torch.backends.cudnn.allow_tf32 = True
    else:
        log.warning("no CUDA device: running on %s (numbers say nothing about a GPU)", device)
    size = check_size(args.tiny, args.train_batch, str(device))
    backend = None if args.compile_backend == "none" else args.compile_backend
    check = Check(args.out, args.budget_s, {k: str(v) for k, v in vars(args).items()})
    c = size.run_config
    train_images = min(c.train_limit or MNIST_TRAIN_IMAGES, MNIST_TRAIN_IMAGES - c.val_size)  # one epoch

    check.section("environment", lambda: environment(device))
    throughput = check.section("training_throughput", lambda: training_throughput(
        size, device, args.repeats, train_images), needs_s=30 if size.name == "full" else 0)
    eager = throughput.get("faster_eager_precision", "fp32")
    bf16 = {"auto": eager == "bf16", "on": True, "off": False}[args.bf16]
    estimate = throughput.get("images_per_sec", {}).get(f"ours {'bf16' if bf16 else 'fp32'}")
    reserve = RESERVE_AFTER_RUN_S[size.name]
    run = check.section("paper_run", lambda: paper_run(size, args.run_dir, args.data_dir, bf16,
                                                 train_images / estimate if estimate else None,
                                                 check.remaining() - reserve), needs_s=reserve + 10)
    check.section("export", lambda: export_section(args.run_dir, args.data_dir, size.parity_limit))
    check.section("inference", lambda: inference(size, device, args.run_dir, args.repeats, backend))
    check.section("weights_file", lambda: weights_section(run, args.run_dir, args.weights_out,
                                                          args.weights_min_accuracy, args.data_dir, device))
    if backend and throughput["status"] == "ok":
        check.section("training_compiled", lambda: training_compiled(size, device, args.repeats, backend, throughput),
                      needs_s=RESERVE_COMPILE_S[size.name])
    failed = [k for k, v in check.results.items() if isinstance(v, dict) and v.get("status") == "error"]
    log.info("wrote %s (%.0f s); sections with errors: %s", args.out, time.monotonic() - check.started,
             ", ".join(failed) or "none")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
