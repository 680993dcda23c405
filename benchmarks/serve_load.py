"""Load a running `bentoml serve` with single-image requests and compare with direct ONNX Runtime.

For each protocol (HTTP classify, gRPC ModelInfer) and concurrency level, `level` clients send
one image per request for a fixed time. Per level: requests/s, p50/p95/p99 latency, errors, and the
mean batch size the model saw (BentoML's batch-size histogram in /metrics, before and after, summed
over server workers). In the same run: direct ONNX Runtime throughput at batch 64 on the served
model file, and the ratio.

    bentoml serve &   # from the repository root
    python benchmarks/serve_load.py [--url http://127.0.0.1:3000] [--grpc 127.0.0.1:8001]

The load generator shares the machine with the server; on a 2-core machine it takes a real share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time

import aiohttp
import bentoml
import grpc
import numpy as np
from bench_timing import median_rate
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from export.onnx_io import open_session
from training.data import synthetic_digits


async def metadata(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.post(url + "/metadata", json={}) as r:
        return await r.json()


async def batch_totals(url: str) -> tuple[float, float]:
    """(requests batched, batches) so far for the `infer` batcher, summed over all server workers:
    BentoML's Prometheus histogram bentoml_service_adaptive_batch_size (its _sum and _count)."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as r:
        text = await r.text()
    totals = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        for suffix in totals:
            if name.startswith("bentoml_service_adaptive_batch_size" + suffix + "{") and 'method_name="infer"' in name:
                totals[suffix] += float(value)
    return totals["_sum"], totals["_count"]


def encoded_requests(images: np.ndarray, model: str) -> tuple[list[bytes], list[pb.ModelInferRequest]]:
    """Each image as a ready HTTP JSON body for /classify and a ready gRPC ModelInferRequest.

    Encoded once, before the clock starts: on a 2-core machine the load generator shares the CPU
    with the server, and re-encoding 784 floats per request would be load-generator work counted
    against the server."""
    bodies = [json.dumps({"images": image[None].tolist()}).encode() for image in images]
    requests = []
    for image in images:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="image", datatype="FP32", shape=[1, 1, 28, 28])
        request.raw_input_contents.append(np.ascontiguousarray(image[None], "<f4").tobytes())
        requests.append(request)
    return bodies, requests


async def run_level(protocol: str, level: int, seconds: float, bodies: list[bytes],
                    grpc_requests: list[pb.ModelInferRequest], args) -> dict:
    latencies: list[float] = []
    errors = 0
    kinds: dict[str, int] = {}  # what went wrong, so an error count can be explained

    def failed(what: str) -> None:
        nonlocal errors
        errors += 1
        kinds[what] = kinds.get(what, 0) + 1

    deadline = time.perf_counter() + seconds

    async def http_worker(session: aiohttp.ClientSession, k: int) -> None:
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                async with session.post("/classify", data=bodies[k % len(bodies)],
                                        headers={"Content-Type": "application/json"}) as r:
                    body = await r.read()
                if r.status == 200 and body.startswith(b"[{"):
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
    if protocol == "http":
        connector = aiohttp.TCPConnector(limit=level)
        async with aiohttp.ClientSession(args.url, connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(http_worker(session, k) for k in range(level)))
    else:
        # a connection per client, as independent clients would have (gRPC would otherwise share one
        # TCP connection between channels, and with several server workers reach only one of them)
        channels = [grpc.aio.insecure_channel(args.grpc, options=[("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(level)]
        try:
            await asyncio.gather(*(grpc_worker(pb_grpc.GRPCInferenceServiceStub(c), k) for k, c in enumerate(channels)))
        finally:
            await asyncio.gather(*(c.close() for c in channels))
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


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--grpc", default="127.0.0.1:8001")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--protocols", nargs="+", default=["http", "grpc"], choices=["http", "grpc"])
    args = p.parse_args()

    images = synthetic_digits(256, seed=5)[0][:, None].astype(np.float32) / 255.0
    meta = await metadata(args.url)
    bodies, grpc_requests = encoded_requests(images, meta["model_tag"].split(":")[0])
    # Levels in rising order, both protocols at each: BentoML's batcher learns from recent traffic how
    # long to hold requests, and after a 64-client level it holds lone requests for ~40 ms for minutes,
    # which would distort a low-concurrency level that came after it.
    rows = [await run_level(proto, level, args.seconds, bodies, grpc_requests, args)
            for level in sorted(args.levels) for proto in args.protocols]
    rows.sort(key=lambda r: args.protocols.index(r["protocol"]))
    direct = direct_throughput(bentoml.models.get(meta["model_tag"]).path_of("model.onnx"), images)

    print(f"model {meta['model_tag']} on {meta['provider']}; max batch {meta['batching']['max_batch_size']}, "
          f"max latency {meta['batching']['max_latency_ms']} ms; {platform.machine()}, {args.seconds:g} s per level")
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
    print(json.dumps({"model": meta["model_tag"], "provider": meta["provider"], "direct_batch64_images_per_sec": direct,
                      "rows": rows}))


if __name__ == "__main__":
    asyncio.run(main())
