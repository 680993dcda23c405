"""Load a running `bentoml serve` with single-image requests and compare with direct ONNX Runtime.

For each protocol and concurrency level, `level` clients send one image per request for a fixed
time. Protocols: `http` (the BentoML JSON API, /classify), `grpc` (Open Inference Protocol ModelInfer),
`oip-json` and `oip-binary` (Open Inference Protocol REST on its own port, the image as JSON numbers or
as raw FP32 bytes with the binary tensor data extension, outputs asked for as binary too). Per level:
requests/s, p50/p95/p99 latency, errors, and the mean batch size the model saw (nv_inference_count /
nv_inference_exec_count in /metrics, before and after, summed over server workers). In the same run: direct ONNX
Runtime throughput at batch 64 on the served model file, and the ratio.

    bentoml serve &   # from the repository root
    python benchmarks/serve_load.py [--url http://127.0.0.1:3000] [--grpc 127.0.0.1:8001] \
        [--oip-url http://127.0.0.1:8000] [--profile oip-binary --server-pid PID]

--profile samples the server's CPU with py-spy (all its processes) during that protocol's highest
level and splits it into where the time goes: ONNX Runtime, batching, our protocol code (parsing,
validation, encoding), the HTTP/gRPC framework and event loop, other. The load generator shares the
machine with the server; on a 2-core machine it takes a real share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import bentoml
import grpc
import numpy as np
from common.load import HttpLoad, batch_totals, encoded_requests, metadata, run_clients
from common.machine import cpu_words
from common.timing import median_rate
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from export.onnx_io import open_session
from training.data import synthetic_digits

PROTOCOLS = ["http", "grpc", "oip-json", "oip-binary"]


async def run_level(protocol: str, level: int, seconds: float, http: dict[str, HttpLoad],
                    grpc_requests: list[pb.ModelInferRequest], args: argparse.Namespace) -> dict:
    latencies: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}  # what went wrong, so an error count can be explained

    def failed(what: str) -> None:
        nonlocal errors
        errors += 1
        kinds[what] = kinds.get(what, 0) + 1

    deadline = time.perf_counter() + seconds

    async def http_worker(session: aiohttp.ClientSession, load: HttpLoad, k: int) -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            i = k % len(load.bodies)
            try:
                async with session.post(load.path, data=load.bodies[i], headers=load.headers[i]) as r:
                    body = await r.read()
                if r.status == 200 and body.startswith(load.answer_starts):
                    latencies.append(time.perf_counter() - t)
                else:
                    failed(f"HTTP {r.status}")
            except (TimeoutError, aiohttp.ClientError) as e:
                failed(type(e).__name__)
            k += level

    async def grpc_worker(stub: pb_grpc.GRPCInferenceServiceStub, k: int) -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                response = await stub.ModelInfer(grpc_requests[k % len(grpc_requests)], timeout=30)
                if len(response.raw_output_contents) == 2:
                    latencies.append(time.perf_counter() - t)
                else:
                    failed("missing outputs")
            except grpc.aio.AioRpcError as e:
                failed(e.code().name)
            k += level

    before = await batch_totals(args.url)
    start = time.perf_counter()
    await run_clients(http.get(protocol), args.grpc, level, http_worker, grpc_worker)
    elapsed = time.perf_counter() - start
    after = await batch_totals(args.url)
    batches = after[1] - before[1]
    ms = sorted(1000 * x for x in latencies)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p * len(ms)))] if ms else float("nan")

    return {"protocol": protocol, "concurrency": level, "requests": len(ms), "errors": errors, "error_kinds": kinds,
            "requests_per_sec": len(ms) / elapsed, "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
            # requests per batch; each request carries one image, so also images per batch
            "mean_batch_size": (after[0] - before[0]) / batches if batches else 0.0}


def direct_throughput(model_path: str, images: np.ndarray, batch: int = 64, repeats: int = 7) -> float:
    """Images/s of ONNX Runtime (CPU) on the served model file at `batch`, no server involved."""
    session = open_session(model_path, ["CPUExecutionProvider"])
    x = np.ascontiguousarray(np.resize(images, (batch, 1, 28, 28)))
    return median_rate(lambda: session.run(None, {"image": x}), batch, repeats)


# Where a sampled stack's CPU time goes: the first category any of its frames names (ONNX Runtime first,
# so a model call made from our code counts as the model's).
PROFILE_CATEGORIES = [
    ("ONNX Runtime", ("onnxruntime",)),
    ("batching", ("serving/engine/batcher.py", "marshal/dispatcher.py")),
    ("our protocol code (parse, validate, encode)", ("serving/",)),
    ("framework + event loop", ("uvicorn", "h11", "httptools", "starlette", "grpc", "asyncio", "bentoml",
                                "uvloop", "selectors")),
]
SAMPLES_PER_SEC = 250


def start_profile(pid: int, seconds: float, out: Path) -> subprocess.Popen:
    """py-spy sampling every process of the server (the BentoML arbiter and its workers) for `seconds`,
    without pausing them, as collapsed stacks ("frame;frame;... count" per line)."""
    py_spy = Path(sys.executable).with_name("py-spy")  # the venv's, whether or not it is activated
    py_spy = str(py_spy) if py_spy.exists() else "py-spy"
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
                             "--rate", str(SAMPLES_PER_SEC), "--duration", str(round(seconds)),
                             "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def profile_breakdown(collapsed: str, requests: int) -> dict[str, dict[str, float]]:
    """Per category: its share of the sampled server CPU and its CPU milliseconds per request."""
    samples = dict.fromkeys([name for name, _ in PROFILE_CATEGORIES] + ["other"], 0)
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        category = next((name for name, marks in PROFILE_CATEGORIES if any(m in stack for m in marks)), "other")
        samples[category] += int(count)
    total = sum(samples.values()) or 1
    return {name: {"share": n / total, "cpu_ms_per_request": 1000 * n / SAMPLES_PER_SEC / max(requests, 1)}
            for name, n in samples.items()}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--grpc", default="127.0.0.1:8001")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--oip-url", default="http://127.0.0.1:8000", help="Open Inference Protocol REST")
    p.add_argument("--protocols", nargs="+", default=PROTOCOLS, choices=PROTOCOLS)
    p.add_argument("--profile", choices=PROTOCOLS, help="sample the server's CPU (py-spy) during this "
                   "protocol's highest level; needs --server-pid")
    p.add_argument("--server-pid", type=int, help="the `bentoml serve` process (its workers are included)")
    args = p.parse_args()
    if args.profile and not args.server_pid:
        p.error("--profile needs --server-pid (the pid of `bentoml serve`)")

    images = synthetic_digits(256, seed=5)[0][:, None].astype(np.float32) / 255.0
    meta = await metadata(args.url)
    http, grpc_requests = encoded_requests(images, meta["model_tag"].split(":")[0], args)
    # Levels in rising order, both protocols at each: BentoML's batcher (servers before 2026-12-06)
    # learned from recent traffic how long to hold requests, and after a 64-client level held lone
    # requests for ~40 ms for minutes, which would distort a low-concurrency level that came after it.
    rows, profile = [], None
    for level in sorted(args.levels):
        for proto in args.protocols:
            profiling = proto == args.profile and level == max(args.levels)
            if profiling:
                out = Path(tempfile.mkdtemp()) / "server.collapsed"
                sampler = start_profile(args.server_pid, args.seconds, out)
            rows.append(await run_level(proto, level, args.seconds, http, grpc_requests, args))
            if profiling:
                _, error = sampler.communicate(timeout=args.seconds + 60)
                if sampler.returncode or not out.exists():
                    raise SystemExit(f"py-spy failed ({sampler.returncode}): {error.strip()[-400:]}")
                profile = {"protocol": proto, "concurrency": level,
                           "categories": profile_breakdown(out.read_text(), rows[-1]["requests"])}
    rows.sort(key=lambda r: args.protocols.index(r["protocol"]))
    direct = direct_throughput(bentoml.models.get(meta["model_tag"]).path_of("model.onnx"), images)

    print(f"model {meta['model_tag']} on {meta['provider']}; max batch {meta['batching']['max_batch_size']}, "
          f"max latency {meta['batching']['max_latency_ms']} ms; {cpu_words()}, {args.seconds:g} s per level")
    print(f"{'protocol':>8}{'conc':>6}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"
          f"{'batch':>7}{'vs direct':>11}")
    for r in rows:
        print(f"{r['protocol']:>8}{r['concurrency']:>6}{r['requests_per_sec']:>9.1f}{r['p50_ms']:>9.1f}"
              f"{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{r['errors']:>8}{r['mean_batch_size']:>7.1f}"
              f"{r['requests_per_sec'] / direct:>10.2f}x")
    for r in rows:
        if r["errors"]:
            print(f"{r['protocol']} at {r['concurrency']}: errors {r['error_kinds']}")
    print(f"direct ONNX Runtime (CPU) at batch 64: {direct:.1f} images/s")
    if profile:
        print(f"server CPU per request, {profile['protocol']} at {profile['concurrency']} clients (py-spy):")
        for name, part in profile["categories"].items():
            print(f"  {name:<45}{100 * part['share']:>6.1f} %{part['cpu_ms_per_request']:>8.3f} ms")
    print(json.dumps({"model": meta["model_tag"], "provider": meta["provider"], "direct_batch64_images_per_sec": direct,
                      "machine": cpu_words(), "rows": rows, "profile": profile}))


if __name__ == "__main__":
    asyncio.run(main())
