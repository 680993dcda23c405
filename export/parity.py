"""Numerical parity of an exported ONNX graph against the PyTorch model it came from.

`verify_parity` returns a report (the content of parity.json); `main` is `capsnet-verify`, what a
user's CI calls: exit 0 on pass, 1 on parity failure, 2 on unusable input.

Parity means, per output: same shape and dtype, no NaN/Inf, every value within
|onnx - torch| <= atol + rtol * |torch|, and the same predicted class for every image; at batch
sizes 1, 7, 64 and 256 through the one dynamic-batch graph; on the MNIST test images when they
are on disk (else fixed-seed synthetic digits) plus degenerate images a real client sends.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.inference_graph import InferenceGraph
from training.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from training.config import CapsNetConfig
from training.data import SPLIT_FILES, load_split, resolve_data_dir, synthetic_digits
from training.fileio import sha256_file, write_json

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 7, 64, 256)
SYNTHETIC_COUNT = 512
METADATA_PREFIX = "capsnet."


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


FP32 = Tolerance(rtol=1e-4, atol=1e-5)
# float16 keeps ~3 significant digits; capsule lengths pass through three squashes.
FP16 = Tolerance(rtol=1e-2, atol=1e-3)
# fp16 may flip a near-tie; at most this share of images may change their predicted class.
FP16_MAX_ARGMAX_FLIPS = 1e-3


class UnusableInputError(ValueError):
    """The model or checkpoint cannot be compared at all (missing, corrupt, other architecture)."""


def degenerate_images() -> dict[str, np.ndarray]:
    """What real clients send besides digits: [1, 1, 28, 28] float32 each."""
    single = np.zeros((1, 1, 28, 28), np.float32)
    single[0, 0, 14, 14] = 1.0
    return {
        "all_black": np.zeros((1, 1, 28, 28), np.float32),
        "all_white": np.ones((1, 1, 28, 28), np.float32),
        "single_pixel": single,
        "noise": np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32),
    }


def parity_inputs(dataset: str = "mnist", data_dir: str | Path | None = None,
                  limit: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Images float32 [N, 1, 28, 28] in [0, 1] and a description of where they came from.

    The test split when its files are on disk (never downloaded here), else synthetic digits;
    the degenerate images are appended at the end.
    """
    directory = resolve_data_dir(dataset, data_dir)
    if all((directory / f).is_file() for f in SPLIT_FILES["test"]):
        images, _ = load_split(dataset, "test", directory)
        images = images.numpy()
        source = f"{dataset} test split ({directory})"
    else:
        images = synthetic_digits(SYNTHETIC_COUNT, seed=0)[0][:, None]
        source = f"synthetic digit-like images (seed 0): no {dataset} test files in {directory}"
    if limit:
        images = images[:limit]
    extra = degenerate_images()
    batch = np.concatenate([images.astype(np.float32) / 255.0, *extra.values()])
    return batch, {"source": source, "images": int(len(images)), "degenerate": list(extra),
                   "total": int(len(batch))}


def run_onnx(session: ort.InferenceSession, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Run the graph over `images` in chunks of `batch_size`; outputs concatenated by name."""
    names = [o.name for o in session.get_outputs()]
    chunks = [session.run(names, {"image": images[i:i + batch_size]})
              for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(names)}


@torch.no_grad()
def run_torch(graph: torch.nn.Module, names: list[str], images: np.ndarray,
              batch_size: int = 256) -> dict[str, np.ndarray]:
    """The PyTorch reference: the same wrapper that was exported, float32 on the CPU."""
    chunks = [graph(torch.from_numpy(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return {name: torch.cat([c[k] for c in chunks]).numpy() for k, name in enumerate(names)}


def compare(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """Shape, dtype, finiteness and elementwise closeness of one output; locates the worst value."""
    result: dict[str, Any] = {
        "shape": list(candidate.shape), "expected_shape": list(reference.shape),
        "dtype": str(candidate.dtype), "expected_dtype": str(reference.dtype),
        "shape_ok": candidate.shape == reference.shape,
        "dtype_ok": candidate.dtype == reference.dtype,
        "finite": bool(np.isfinite(candidate).all()),
    }
    if not result["shape_ok"]:
        result["passed"] = False
        return result
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    diff = np.where(np.isfinite(diff), diff, np.inf)
    excess = diff - (tol.atol + tol.rtol * np.abs(reference.astype(np.float64)))
    worst = np.unravel_index(int(np.argmax(excess)), diff.shape)
    result.update({
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float((diff / np.maximum(np.abs(reference), 1e-12)).max()) if diff.size else 0.0,
        "violations": int((excess > 0).sum()),
        "worst": {"index": [int(i) for i in worst], "onnx": float(candidate[worst]),
                  "torch": float(reference[worst]), "abs_diff": float(diff[worst])} if diff.size else None,
    })
    result["passed"] = bool(result["shape_ok"] and result["dtype_ok"] and result["finite"]
                            and result["violations"] == 0)
    return result


def parity_section(session: ort.InferenceSession, reference: dict[str, np.ndarray], images: np.ndarray,
                   tol: Tolerance, precision: str, batch_sizes: tuple[int, ...] = BATCH_SIZES,
                   max_argmax_flips: float = 0.0) -> dict[str, Any]:
    """Compare one session against the reference at every batch size."""
    per_batch: dict[str, Any] = {}
    for bs in batch_sizes:
        outputs = run_onnx(session, images, bs)
        missing = sorted(set(reference) - set(outputs))
        checks = {name: compare(reference[name], outputs[name], tol) for name in reference if name in outputs}
        flips = np.flatnonzero(outputs["probabilities"].argmax(1) != reference["probabilities"].argmax(1)) \
            if checks.get("probabilities", {}).get("shape_ok") else np.arange(len(images))
        per_batch[str(bs)] = {
            "outputs": checks,
            "missing_outputs": missing,
            "argmax_agreement": 1.0 - len(flips) / len(images),
            "argmax_mismatches": [int(i) for i in flips[:20]],
            "passed": not missing and all(c["passed"] for c in checks.values())
            and len(flips) <= max_argmax_flips * len(images),
        }
    return {
        "precision": precision,
        "provider": session.get_providers()[0],
        "tolerance": asdict(tol),
        "max_argmax_flip_share": max_argmax_flips,
        "batch_sizes": per_batch,
        "passed": all(b["passed"] for b in per_batch.values()),
    }


def failure_summary(report: dict[str, Any]) -> str:
    """One line per failing (section, batch size, output): what failed, where, by how much."""
    lines = []
    for section in report["sections"]:
        for bs, result in section["batch_sizes"].items():
            where = f"{section['precision']} on {section['provider']}, batch {bs}"
            for name in result["missing_outputs"]:
                lines.append(f"{where}: output '{name}' missing from the graph")
            for name, c in result["outputs"].items():
                if c["passed"]:
                    continue
                if not c["shape_ok"]:
                    lines.append(f"{where}: '{name}' shape {c['shape']} != {c['expected_shape']}")
                    continue
                w = c["worst"]
                lines.append(
                    f"{where}: '{name}' {c['violations']} values outside rtol={section['tolerance']['rtol']} "
                    f"atol={section['tolerance']['atol']}; worst at {w['index']}: onnx {w['onnx']:.7g} vs "
                    f"torch {w['torch']:.7g} (|diff| {w['abs_diff']:.3g}, max rel {c['max_rel_diff']:.3g})"
                    + ("" if c["finite"] else "; NaN/Inf present") + ("" if c["dtype_ok"] else
                    f"; dtype {c['dtype']} != {c['expected_dtype']}"))
            if result["argmax_agreement"] < 1.0:
                lines.append(f"{where}: predicted class differs on {len(result['argmax_mismatches'])}+ images "
                             f"(agreement {result['argmax_agreement']:.4%}), e.g. {result['argmax_mismatches'][:5]}")
    return "\n".join(lines)


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """The capsnet.* metadata of an exported graph, JSON-decoded."""
    return {p.key[len(METADATA_PREFIX):]: json.loads(p.value)
            for p in model.metadata_props if p.key.startswith(METADATA_PREFIX)}


def open_session(path: str | Path, providers: list[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a missing GPU is reported by us, not by ORT spam
    return ort.InferenceSession(str(path), options, providers=providers)


def cuda_usable() -> bool:
    """CUDA in ONNX Runtime is only tried where a GPU exists: onnxruntime-gpu lists the CUDA
    provider everywhere and silently falls back to CPU without one."""
    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


def verify_parity(onnx_path: str | Path, checkpoint: str | Path, *, data_dir: str | Path | None = None,
                  limit: int | None = None, batch_sizes: tuple[int, ...] = BATCH_SIZES,
                  tolerance: Tolerance | None = None) -> dict[str, Any]:
    """Compare an exported graph with the checkpoint it should implement.

    Builds the PyTorch reference from the checkpoint alone, with the outputs, precision and
    routing depth the graph's metadata declares, except that the routing depth compared against is
    always the checkpoint's (a graph unrolled for another depth computes something else and fails).
    Raises UnusableInputError when either file is unreadable or the architectures differ.
    """
    onnx_path = Path(onnx_path)
    try:
        ckpt = load_checkpoint(checkpoint)
    except CheckpointError as e:
        raise UnusableInputError(str(e)) from e
    if not onnx_path.is_file():
        raise UnusableInputError(f"{onnx_path}: ONNX model not found")
    try:
        model_proto = onnx.load(str(onnx_path))
        onnx.checker.check_model(model_proto)
        meta = read_metadata(model_proto)
    except Exception as e:  # onnx raises DecodeError, ValidationError, ...: all mean "unusable"
        raise UnusableInputError(f"{onnx_path}: not a readable ONNX model (truncated or corrupt?): {e}") from e
    if "model_config" not in meta:
        raise UnusableInputError(f"{onnx_path}: no capsnet metadata; was it written by capsnet-export?")

    exported = CapsNetConfig.from_dict(meta["model_config"])
    trained = CapsNetConfig.from_dict(ckpt["model_config"])
    structural = {k for k, v in exported.to_dict().items() if trained.to_dict()[k] != v} - {"routing_iters"}
    if structural:
        raise UnusableInputError(
            f"{onnx_path} and {checkpoint} come from different architectures: "
            + ", ".join(f"{k}: onnx {exported.to_dict()[k]} vs checkpoint {trained.to_dict()[k]}"
                        for k in sorted(structural)))

    precision = meta.get("precision", "fp32")
    tol = tolerance or (FP16 if precision == "fp16" else FP32)
    graph = InferenceGraph(model_from_checkpoint(ckpt), outputs=tuple(meta.get("outputs",
                                                                        ["probabilities", "poses"])))
    images, inputs = parity_inputs(ckpt["train_config"]["dataset"], data_dir, limit)
    reference = run_torch(graph, list(graph.outputs), images)

    providers = [["CPUExecutionProvider"]]
    if cuda_usable():
        providers.append(["CUDAExecutionProvider", "CPUExecutionProvider"])
    sections = []
    for provider_list in providers:
        try:
            session = open_session(onnx_path, provider_list)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise UnusableInputError(f"{onnx_path}: ONNX Runtime cannot load it: {e}") from e
        sections.append(parity_section(session, reference, images, tol, precision, batch_sizes,
                                       FP16_MAX_ARGMAX_FLIPS if precision == "fp16" else 0.0))
    notes = []
    if meta.get("routing_iters") != trained.routing_iters:
        notes.append(f"graph unrolls {meta.get('routing_iters')} routing iterations, "
                     f"checkpoint was trained with {trained.routing_iters}")
    if meta.get("checkpoint_sha256") not in (None, sha256_file(checkpoint)):
        notes.append("graph metadata names a different checkpoint SHA-256")
    report = {
        "passed": all(s["passed"] for s in sections),
        "onnx_model": onnx_path.name,
        "onnx_sha256": sha256_file(onnx_path),
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": sha256_file(checkpoint),
        "inputs": inputs,
        "compared": "ONNX Runtime outputs vs the PyTorch model rebuilt from the checkpoint (float32, CPU)",
        "sections": sections,
        "notes": notes,
        "versions": library_versions(),
    }
    return report


def library_versions() -> dict[str, str]:
    import onnxscript

    return {"torch": str(torch.__version__), "onnx": onnx.__version__, "onnxruntime": ort.__version__,
            "onnxscript": onnxscript.__version__, "python": sys.version.split()[0]}


def parity_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth showing in model metadata and service responses."""
    return {
        "passed": report["passed"],
        "inputs": report["inputs"]["source"],
        "images": report["inputs"]["total"],
        "sections": [{
            "precision": s["precision"], "provider": s["provider"], "tolerance": s["tolerance"],
            "passed": s["passed"],
            "max_abs_diff": {name: max(b["outputs"][name].get("max_abs_diff", float("inf"))
                                       for b in s["batch_sizes"].values() if name in b["outputs"])
                             for name in next(iter(s["batch_sizes"].values()))["outputs"]},
            "argmax_agreement": min(b["argmax_agreement"] for b in s["batch_sizes"].values()),
            "batch_sizes": [int(b) for b in s["batch_sizes"]],
        } for s in report["sections"]],
    }


def quiet_third_party_loggers() -> None:
    """CLIs log at INFO; the ONNX exporter's dependencies chat at INFO/WARNING about things that
    do not concern our users (torchvision ops they never use, unused-node removal)."""
    for name in ("torch.onnx", "onnx_ir", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_third_party_loggers()
    p = argparse.ArgumentParser(prog="capsnet-verify", description=(
        "Re-run the parity check of an exported CapsNet against its checkpoint. "
        "Exit 0: parity holds; 1: parity fails; 2: unusable input."))
    p.add_argument("model", help="model.onnx (or model.fp16.onnx) written by capsnet-export")
    p.add_argument("--checkpoint", required=True, help="the .pt the model was exported from")
    p.add_argument("--data-dir", help="MNIST folder for real test images (default: $CAPSNET_DATA_DIR); "
                                      "without one, synthetic digits are used")
    p.add_argument("--limit", type=int, help="compare only the first N test images (default: all)")
    p.add_argument("--report", help="write the full parity report (JSON) here")
    args = p.parse_args(argv)
    try:
        report = verify_parity(args.model, args.checkpoint, data_dir=args.data_dir, limit=args.limit)
    except UnusableInputError as e:
        log.error("%s", e)
        return 2
    if args.report:
        write_json(args.report, report)
    print(json.dumps(parity_summary(report), indent=2))
    for note in report["notes"]:
        log.warning("%s", note)
    if not report["passed"]:
        log.error("parity FAILED:\n%s", failure_summary(report))
        return 1
    log.info("parity passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
