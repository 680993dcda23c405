"""Numerical parity of an exported ONNX graph against the PyTorch model it came from.

`check_parity` is the core: a loaded model against a graph file, returning the report that becomes
parity.json. `verify_parity` is the path-based wrapper that `capsnet verify` (export/verify.py)
calls: it loads the checkpoint once and checks that it fits the graph first.

Compared: the MNIST test images when they are on disk (else fixed-seed synthetic digits) plus
degenerate images a real client sends, at batch sizes 1, 7, 64 and 256 through the one
dynamic-batch graph; on the CPU provider, and on CUDA where it is usable. How outputs are
compared lives in export/parity_report.py.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.inference_graph import DecoderGraph, InferenceGraph
from export.onnx_io import UnusableInputError, load_checked, open_session
from export.parity_report import (
    BATCH_SIZES,
    FP16,
    FP16_MAX_ARGMAX_FLIPS,
    FP32,
    Tolerance,
    parity_section,
)
from serving.engine.providers import CPU, CUDA, cuda_usable
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.config import CapsNetConfig
from training.data import (
    SPLIT_FILES,
    DataUnavailableError,
    ensure_dataset,
    load_split,
    resolve_data_dir,
    synthetic_digits,
)
from training.fileio import sha256_file
from training.model import CapsNet
from training.task_registry import Task
from training.tasks import task_test_inputs

SYNTHETIC_COUNT = 512


def degenerate_images(size: int = 28) -> dict[str, np.ndarray]:
    """What real clients send besides digits: [1, 1, size, size] float32 each."""
    single = np.zeros((1, 1, size, size), np.float32)
    single[0, 0, size // 2, size // 2] = 1.0
    return {
        "all_black": np.zeros((1, 1, size, size), np.float32),
        "all_white": np.ones((1, 1, size, size), np.float32),
        "single_pixel": single,
        "noise": np.random.default_rng(0).random((1, 1, size, size), dtype=np.float32),
    }


def parity_inputs(task: Task, max_shift: int, data_dir: str | Path | None = None,
                  limit: int | None = None, download: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Images float32 [N, 1, S, S] in [0, 1] of `task` (with the run's `max_shift`), and where they came from.

    The test split when its files are on disk (`download`: fetched with checksums first when missing;
    export never downloads, `capsnet verify` does), else synthetic digits; for
    overlapping pairs, one fixed-seed pair per test digit made of those (translated digits: placed on
    their canvas at fixed-seed shifts). The degenerate images are appended at the end. `kind` says
    which: "test-split" or "synthetic".
    """
    files_of = task.source
    directory = resolve_data_dir(files_of, data_dir)
    download_failed = None
    if download and not all((directory / f).is_file() for f in SPLIT_FILES["test"]):
        try:
            ensure_dataset(files_of, data_dir)
        except DataUnavailableError as e:  # offline: say so, and fall back to synthetic images
            download_failed = str(e).splitlines()[0]
    if all((directory / f).is_file() for f in SPLIT_FILES["test"]):
        images, labels = load_split(files_of, "test", data_dir)
        kind, source = "test-split", f"{files_of} test split ({directory})"
    else:
        raw, raw_labels = synthetic_digits(SYNTHETIC_COUNT, seed=0)
        images, labels = torch.from_numpy(raw).unsqueeze(1), torch.from_numpy(raw_labels).long()
        kind, source = "synthetic", f"synthetic digit-like images (seed 0): no {files_of} test files in {directory}" \
            + (f" ({download_failed})" if download_failed else "")
    if task.multi_label or task.image_size != images.shape[-1]:
        images = task_test_inputs(task, max_shift, images, labels)
        made = "one fixed-seed overlapping pair" if task.multi_label else "one fixed-seed placement"
        source = f"{made} (max shift {max_shift}) per image of the {source}"
    images = images.numpy()
    if limit:
        images = images[:limit]
    extra = degenerate_images(images.shape[-1])
    batch = np.concatenate([images.astype(np.float32) / 255.0, *extra.values()])
    # the inputs' fingerprint: two reports that name the same hash compared the same images
    fingerprint = hashlib.sha256(np.ascontiguousarray(batch).tobytes()).hexdigest()
    return batch, {"kind": kind, "source": source, "images": int(len(images)), "degenerate": list(extra),
                   "total": int(len(batch)), "sha256": fingerprint}


@torch.no_grad()
def run_torch(graph: torch.nn.Module, names: list[str], feeds: dict[str, np.ndarray],
              batch_size: int = 256) -> dict[str, np.ndarray]:
    """The PyTorch reference: the same wrapper that was exported, float32 on the CPU, over `feeds`
    (input name -> [N, ...], in the graph's input order)."""
    n = len(next(iter(feeds.values())))
    with torch.no_grad():
        chunks = [graph(*(torch.from_numpy(v[i:i + batch_size]) for v in feeds.values()))
                  for i in range(0, n, batch_size)]
    return {name: torch.cat([c[k] for c in chunks]).numpy() for k, name in enumerate(names)}


def decoder_feeds(model: CapsNet, images: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """What the explorer sends the decoder graph, from the parity images' own poses [N, K, D]: each
    image's poses with its predicted class, the same poses with the next class, and the poses with
    one dimension of the predicted capsule moved by -0.25 or +0.25 (the paper's Fig. 4 range).
    -> {"poses": float32 [3N, K, D], "label": int64 [3N]}."""
    with torch.no_grad():
        poses = torch.cat([model.encode(torch.from_numpy(images[i:i + 256]))[0]
                           for i in range(0, len(images), 256)]).numpy()
    n, k, d = poses.shape
    predicted = np.sqrt((poses ** 2).sum(-1)).argmax(1)
    rng = np.random.default_rng(seed)
    edited = poses.copy()
    edited[np.arange(n), predicted, rng.integers(0, d, n)] += rng.choice([-0.25, 0.25], n).astype(np.float32)
    return {"poses": np.concatenate([poses, poses, edited]),
            "label": np.concatenate([predicted, (predicted + 1) % k, predicted]).astype(np.int64)}


def check_parity(model: CapsNet, onnx_path: str | Path, meta: dict[str, Any], *,
                 data_dir: str | Path | None = None, limit: int | None = None,
                 batch_sizes: tuple[int, ...] = BATCH_SIZES, tolerance: Tolerance | None = None,
                 download: bool = False) -> dict[str, Any]:
    """Compare the graph at `onnx_path` (with capsnet metadata `meta`) against `model`, float32 on the CPU,
    for the outputs and precision the metadata declares, on inputs of the task the metadata records (the
    decoder graph: on the poses of those inputs, see decoder_feeds). Returns the report; 'passed'
    says it all."""
    precision = meta.get("precision", "fp32")
    images, inputs = parity_inputs(Task.from_dict(meta["task"]), meta["train_config"]["max_shift"], data_dir, limit,
                                   download)
    graph: torch.nn.Module
    if meta.get("graph") == "decoder":
        graph, feeds = DecoderGraph(model), decoder_feeds(model, images)
    else:
        graph = InferenceGraph(model, outputs=tuple(meta.get("outputs", ["probabilities", "poses"])))
        feeds = {"image": images}
    reference = run_torch(graph, list(graph.outputs), feeds)
    sections = []
    for providers in [[CPU]] + ([[CUDA, CPU]] if cuda_usable() else []):
        sections.append(parity_section(open_session(onnx_path, providers), reference, feeds,
                                       tolerance or (FP16 if precision == "fp16" else FP32), precision,
                                       batch_sizes, FP16_MAX_ARGMAX_FLIPS if precision == "fp16" else 0.0,
                                       graph=Path(onnx_path).name))
    return {
        "passed": all(s["passed"] for s in sections),
        "onnx_model": Path(onnx_path).name,
        "onnx_sha256": sha256_file(onnx_path),
        "inputs": inputs,
        "compared": "ONNX Runtime outputs vs the PyTorch model rebuilt from the checkpoint (float32, CPU)",
        "sections": sections,
        "notes": [],
        "versions": library_versions(),
    }


def verify_parity(onnx_path: str | Path, checkpoint: str | Path, *, data_dir: str | Path | None = None,
                  limit: int | None = None, batch_sizes: tuple[int, ...] = BATCH_SIZES,
                  tolerance: Tolerance | None = None, download: bool = False) -> dict[str, Any]:
    """Compare an exported graph with the checkpoint it should implement (files on disk).

    The reference is rebuilt from the checkpoint alone at the checkpoint's routing depth, so a graph
    unrolled for another depth fails. Raises UnusableInputError when either file is unreadable or
    the architectures differ.
    """
    try:
        ckpt = load_checkpoint(checkpoint)
    except CheckpointError as e:
        raise UnusableInputError(str(e)) from e
    _, meta = load_checked(onnx_path)
    if "source" not in meta.get("task", {}):
        raise UnusableInputError(f"{onnx_path} was exported before exports recorded their task: export it again")
    exported, trained = CapsNetConfig.from_dict(meta["model_config"]).to_dict(), ckpt["model_config"]
    structural = sorted(k for k, v in exported.items() if trained.get(k) != v and k != "routing_iters")
    if structural:
        raise UnusableInputError(f"{onnx_path} and {checkpoint} come from different architectures: " + ", ".join(
            f"{k}: onnx {exported[k]} vs checkpoint {trained.get(k)}" for k in structural))
    report = check_parity(model_from_checkpoint(ckpt), onnx_path, meta, data_dir=data_dir, limit=limit,
                          batch_sizes=batch_sizes, tolerance=tolerance, download=download)
    checkpoint_sha256 = sha256_file(checkpoint)
    if meta.get("routing_iters") != trained["routing_iters"]:
        report["notes"].append(f"graph unrolls {meta.get('routing_iters')} routing iterations, "
                               f"checkpoint was trained with {trained['routing_iters']}")
    if meta.get("checkpoint_sha256") not in (None, checkpoint_sha256):
        report["notes"].append("graph metadata names a different checkpoint SHA-256")
    return {**report, "checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256}


def library_versions() -> dict[str, str]:
    import onnxscript

    return {"torch": str(torch.__version__), "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "onnxscript": onnxscript.__version__, "python": sys.version.split()[0]}


def quiet_third_party_loggers() -> None:
    """CLIs log at INFO; the ONNX exporter's dependencies chat at INFO/WARNING about things that
    do not concern our users (torchvision ops they never use, unused-node removal)."""
    for name in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
