"""Images/s of PyTorch eager against the exported ONNX graph in ONNX Runtime (CPU, and CUDA when
usable), same weights, same inputs, in the same run, at batch 1, 32 and 256; prints the ratios
and the providers actually used.

    python benchmarks/inference_throughput.py [--checkpoint RUN/best.pt] [--variant paper]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common.machine import machine_words
from common.timing import median_rate

from export.inference_graph import InferenceGraph
from export.onnx_export import export_graph
from export.onnx_io import open_session
from serving.engine.providers import cuda_usable
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import variant_config
from training.model import CapsNet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="benchmark these weights (default: fixed-seed --variant model)")
    p.add_argument("--variant", default="paper")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    if args.checkpoint:
        model = model_from_checkpoint(load_checkpoint(args.checkpoint))
    else:
        torch.manual_seed(0)
        model = CapsNet(variant_config(args.variant)).eval()
    graph = InferenceGraph(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_graph(graph, path, {})
        sessions = {"onnxruntime-cpu": open_session(path, ["CPUExecutionProvider"])}
        if cuda_usable():
            sessions["onnxruntime-cuda"] = open_session(path, ["CUDAExecutionProvider", "CPUExecutionProvider"])

        rng = np.random.default_rng(0)
        rows = []
        for batch in args.batches:
            x = rng.random((batch, 1, 28, 28), dtype=np.float32)
            xt = torch.from_numpy(x)
            with torch.inference_mode():
                reference = graph(xt)[0].numpy()
                row = {"batch": batch,
                       "torch-eager-cpu": median_rate(lambda xt=xt: graph(xt), batch, args.repeats)}
            for name, s in sessions.items():
                out = s.run(["probabilities"], {"image": x})[0]
                row[f"{name} max_abs_diff"] = float(np.abs(out - reference).max())
                row[name] = median_rate(lambda s=s, x=x: s.run(None, {"image": x}), batch, args.repeats)
                row[f"{name} / torch"] = row[name] / row["torch-eager-cpu"]
            rows.append(row)
        providers = {name: s.get_providers()[0] for name, s in sessions.items()}

    print(f"CapsNet {'checkpoint ' + args.checkpoint if args.checkpoint else repr(args.variant)}; "
          f"{machine_words()} ({torch.get_num_threads()} threads), "
          f"onnxruntime {ort.__version__}; providers used: {providers}; median of {args.repeats}")
    header = f"{'batch':>6}{'torch eager':>14}" + "".join(f"{n:>18}{'ratio':>8}" for n in sessions)
    print(header + "   (images/s)")
    for row in rows:
        line = f"{row['batch']:>6}{row['torch-eager-cpu']:>14.1f}"
        line += "".join(f"{row[n]:>18.1f}{row[n + ' / torch']:>7.2f}x" for n in sessions)
        print(line)
    print(json.dumps({"providers": providers, "rows": rows}))


if __name__ == "__main__":
    main()
