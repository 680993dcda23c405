"""Comparing ONNX Runtime outputs with reference outputs, and the report that becomes parity.json.

Per output: same shape and dtype, no NaN/Inf, every value within |onnx - torch| <= atol +
rtol * |torch|, and the same predicted class for every image. Numpy only: the registry reads
these reports without torch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

BATCH_SIZES = (1, 7, 64, 256)


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


FP32 = Tolerance(rtol=1e-4, atol=1e-5)
# float16 keeps ~3 significant digits; capsule lengths pass through three squashes.
FP16 = Tolerance(rtol=1e-2, atol=1e-3)
# fp16 may flip a near-tie; at most this share of images may change their predicted class.
FP16_MAX_ARGMAX_FLIPS = 1e-3


def run_onnx(session: ort.InferenceSession, feeds: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Run the graph over `feeds` (input name -> [N, ...]) in chunks of `batch_size`; outputs
    concatenated by name."""
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(feeds.values())))
    chunks = [session.run(names, {name: value[i:i + batch_size] for name, value in feeds.items()})
              for i in range(0, n, batch_size)]
    return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(names)}


def compare(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """Shape, dtype, finiteness and elementwise closeness of one output; locates the worst value."""
    result: dict[str, Any] = {
        "shape": list(candidate.shape), "expected_shape": list(reference.shape),
        "dtype": str(candidate.dtype), "expected_dtype": str(reference.dtype),
        "shape_ok": candidate.shape == reference.shape,
        "dtype_ok": candidate.dtype == reference.dtype,
        "finite": bool(np.isfinite(candidate).all()),
        # a NaN or infinity in the PyTorch reference is as much a failure as one in ONNX: it would
        # otherwise compare as "no violation" (NaN > tolerance is false)
        "reference_finite": bool(np.isfinite(reference).all()),
    }
    if not result["shape_ok"]:
        result["passed"] = False
        return result
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN/Inf become violations below, not warnings
        return _closeness(reference, candidate, tol, result)


def _closeness(reference: np.ndarray, candidate: np.ndarray, tol: Tolerance, result: dict[str, Any]
               ) -> dict[str, Any]:
    """`compare`'s elementwise part, for outputs of the same shape."""
    diff = np.abs(candidate.astype(np.float64) - reference.astype(np.float64))
    diff = np.where(np.isfinite(diff), diff, np.inf)
    excess = diff - (tol.atol + tol.rtol * np.abs(reference.astype(np.float64)))
    excess = np.where(np.isnan(excess), np.inf, excess)  # a non-finite reference value is a violation
    worst = np.unravel_index(int(np.argmax(excess)), diff.shape)
    result.update({
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "max_rel_diff": float((diff / np.maximum(np.abs(reference), 1e-12)).max()) if diff.size else 0.0,
        "violations": int((excess > 0).sum()),
        "worst": {"index": [int(i) for i in worst], "onnx": float(candidate[worst]),
                  "torch": float(reference[worst]), "abs_diff": float(diff[worst])} if diff.size else None,
    })
    result["passed"] = bool(result["shape_ok"] and result["dtype_ok"] and result["finite"]
                            and result["reference_finite"] and result["violations"] == 0)
    return result


def parity_section(session: ort.InferenceSession, reference: dict[str, np.ndarray], feeds: dict[str, np.ndarray],
                   tol: Tolerance, precision: str, batch_sizes: tuple[int, ...] = BATCH_SIZES,
                   max_argmax_flips: float = 0.0, graph: str = "model.onnx") -> dict[str, Any]:
    """Compare one session against the reference at every batch size. Graphs with a 'probabilities'
    output must also predict the same class for (nearly) every input."""
    per_batch: dict[str, Any] = {}
    n = len(next(iter(feeds.values())))
    for bs in batch_sizes:
        outputs = run_onnx(session, feeds, bs)
        missing = sorted(set(reference) - set(outputs))
        checks = {name: compare(reference[name], outputs[name], tol) for name in reference if name in outputs}
        if "probabilities" not in reference:
            flips = np.arange(0)
        elif checks.get("probabilities", {}).get("shape_ok"):
            flips = np.flatnonzero(outputs["probabilities"].argmax(1) != reference["probabilities"].argmax(1))
        else:
            flips = np.arange(n)
        per_batch[str(bs)] = {
            "outputs": checks,
            "missing_outputs": missing,
            "argmax_agreement": 1.0 - len(flips) / n,
            "argmax_mismatches": [int(i) for i in flips[:20]],
            "passed": not missing and all(c["passed"] for c in checks.values())
            and len(flips) <= max_argmax_flips * n,
        }
    return {
        "graph": graph,
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
            where = f"{section.get('graph', 'model.onnx')} {section['precision']} on {section['provider']}, batch {bs}"
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
                    + ("" if c["finite"] else "; NaN/Inf in the ONNX output")
                    + ("" if c.get("reference_finite", True) else "; NaN/Inf in the PyTorch reference")
                    + ("" if c["dtype_ok"] else
                    f"; dtype {c['dtype']} != {c['expected_dtype']}"))
            if result["argmax_agreement"] < 1.0:
                lines.append(f"{where}: predicted class differs on {len(result['argmax_mismatches'])}+ images "
                             f"(agreement {result['argmax_agreement']:.4%}), e.g. {result['argmax_mismatches'][:5]}")
    return "\n".join(lines)


def parity_inputs_kind(report: dict[str, Any]) -> str:
    """'test-split' (real images of the dataset) or 'synthetic' (no data folder was there)."""
    inputs = report["inputs"]
    return inputs.get("kind") or ("synthetic" if inputs["source"].startswith("synthetic") else "test-split")


def parity_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The few numbers worth showing in model metadata and service responses."""
    return {
        "passed": report["passed"],
        "inputs_kind": parity_inputs_kind(report),
        "inputs": report["inputs"]["source"],
        "images": report["inputs"]["total"],
        "inputs_sha256": report["inputs"].get("sha256"),  # reports before 2026-12-06 have none
        "sections": [{
            "graph": s.get("graph", "model.onnx"),
            "precision": s["precision"], "provider": s["provider"], "tolerance": s["tolerance"],
            "passed": s["passed"],
            "max_abs_diff": {name: max(b["outputs"][name].get("max_abs_diff", float("inf"))
                                       for b in s["batch_sizes"].values() if name in b["outputs"])
                             for name in next(iter(s["batch_sizes"].values()))["outputs"]},
            "argmax_agreement": min(b["argmax_agreement"] for b in s["batch_sizes"].values()),
            "batch_sizes": [int(b) for b in s["batch_sizes"]],
        } for s in report["sections"]],
    }
