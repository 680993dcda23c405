"""INT8 against float32 in ONNX Runtime, measured against the machine's limit (issue 44, item 3).

For an export folder made with `capsnet export --int8` (model.onnx and model.int8.onnx side by side):
- the multiply-adds per image of each graph's Conv nodes, read from the graph (ONNX shape inference
  at batch 1): ~94 % of the work; the capsule transform and routing (a few million more, in
  batched products whose shapes inference leaves open) are not counted, so the shares of peak below
  are lower bounds;
- the machine's peak in the same runtime and threads: a 1024x1024 float32 MatMul, and the same as
  an 8-bit MatMulInteger, each as a one-node ONNX graph;
- images/s of both graphs at batch 1, 64 and 256 (the `probabilities` output; rounds alternate
  between the two graphs), the INT8/float32 ratio, and each one's share of its precision's peak.

    python benchmarks/int8_throughput.py EXPORT_DIR [--threads 2] [--out benchmarks/results/int8-cpu.json]
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from common.machine import cpu_words
from common.timing import median_rate
from onnx import TensorProto, helper, shape_inference

GEMM = 1024
BATCHES = (1, 64, 256)


def multiply_adds(path: Path) -> int:
    """Multiply-adds per image of the graph's Conv nodes (QDQ graphs: the same nodes, their weights fed
    by DequantizeLinear), from shape inference with the batch axis set to 1."""
    model = onnx.load(path)
    for axis in model.graph.input[0].type.tensor_type.shape.dim[:1]:
        axis.dim_value = 1
    model = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    for node in model.graph.node:  # a QDQ weight is DequantizeLinear(int8 initializer): the same shape
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes:
            shapes.setdefault(node.output[0], shapes[node.input[0]])
    total = 0
    for node in model.graph.node:
        out, weight = shapes.get(node.output[0]), shapes.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "Conv" and out and weight:  # [1, C_out, H, W] x (C_in/groups * kH * kW) each
            total += int(np.prod(out)) * int(np.prod(weight[1:]))
    return total


def peak_session(integer: bool, threads: int) -> tuple[ort.InferenceSession, dict[str, np.ndarray]]:
    """A one-node 1024x1024x1024 GEMM: float32 MatMul, or uint8 x int8 MatMulInteger."""
    kind_a, kind_b = (TensorProto.UINT8, TensorProto.INT8) if integer else (TensorProto.FLOAT, TensorProto.FLOAT)
    node = helper.make_node("MatMulInteger" if integer else "MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", kind_a, [GEMM, GEMM]),
                                               helper.make_tensor_value_info("b", kind_b, [GEMM, GEMM])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32 if integer else TensorProto.FLOAT,
                                                             [GEMM, GEMM])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    rng = np.random.default_rng(0)
    feeds = ({"a": rng.integers(0, 255, (GEMM, GEMM), dtype=np.uint8),
              "b": rng.integers(-127, 127, (GEMM, GEMM), dtype=np.int8)} if integer else
             {"a": rng.random((GEMM, GEMM), dtype=np.float32), "b": rng.random((GEMM, GEMM), dtype=np.float32)})
    return ort.InferenceSession(model.SerializeToString(), options(threads), providers=["CPUExecutionProvider"]), \
        feeds


def options(threads: int) -> ort.SessionOptions:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.log_severity_level = 3
    return o


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", type=Path, help="an export folder with model.onnx and model.int8.onnx")
    p.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, help="write the result here (JSON)")
    args = p.parse_args()
    graphs = {"fp32": args.export_dir / "model.onnx", "int8": args.export_dir / "model.int8.onnx"}
    macs = {name: multiply_adds(path) for name, path in graphs.items()}
    peaks = {}
    for name, integer in (("fp32", False), ("int8", True)):
        session, feeds = peak_session(integer, args.threads)
        ops_per_call = 2 * GEMM ** 3  # a multiply and an add per multiply-add
        peaks[name] = median_rate(lambda s=session, f=feeds: s.run(None, f), ops_per_call, args.repeats) / 1e9
    sessions = {name: ort.InferenceSession(str(path), options(args.threads), providers=["CPUExecutionProvider"])
                for name, path in graphs.items()}
    size = sessions["fp32"].get_inputs()[0].shape[-1]
    rows = []
    for batch in BATCHES:
        images = np.random.default_rng(batch).random((batch, 1, size, size), dtype=np.float32)
        rates: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.repeats):  # alternating rounds: drift on a shared machine hits both alike
            for name, session in sessions.items():
                rates[name].append(median_rate(lambda s=session, x=images: s.run(["probabilities"], {"image": x}),
                                               batch, repeats=1))
        row = {"batch": batch, **{f"{n}_images_per_sec": float(np.median(r)) for n, r in rates.items()}}
        row["int8_over_fp32"] = row["int8_images_per_sec"] / row["fp32_images_per_sec"]
        for name in sessions:
            gops = 2 * macs[name] * row[f"{name}_images_per_sec"] / 1e9
            row[f"{name}_share_of_peak"] = gops / peaks[name]
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"date": date.today().isoformat(), "machine": cpu_words(), "onnxruntime": ort.__version__,
              "threads": args.threads, "export": str(args.export_dir), "conv_multiply_adds_per_image": macs,
              "peak_gops": peaks, "rows": rows}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
