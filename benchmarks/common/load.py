"""The load clients of the serving benchmarks (serve_load.py, overload.py): requests encoded once
before the clock starts, for each protocol (the BentoML JSON API, OIP REST as JSON and binary, OIP
gRPC), and the closed-loop clients that send them, a connection each."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class HttpLoad:
    """One HTTP protocol's requests, encoded before the clock starts: where they go and what a good
    answer starts with."""

    base_url: str
    path: str
    bodies: list[bytes]
    headers: list[dict[str, str]]
    answer_starts: bytes


async def metadata(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url + "/metadata") as r:
        return await r.json()


async def batch_totals(url: str) -> tuple[float, float]:
    """(images batched, batches) so far, summed over all server workers and model versions: Triton's
    nv_inference_count and nv_inference_exec_count; for a server from before 2026-12-06 (BentoML's
    batcher), BentoML's histogram bentoml_service_adaptive_batch_size (its _sum and _count) of `infer`."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as r:
        text = await r.text()
    ours = {"nv_inference_count{": 0.0, "nv_inference_exec_count{": 0.0}
    bentoml_histogram = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        for prefix in ours:
            if name.startswith(prefix):
                ours[prefix] += float(value)
        for suffix in bentoml_histogram:
            if name.startswith("bentoml_service_adaptive_batch_size" + suffix + "{") and 'method_name="infer"' in name:
                bentoml_histogram[suffix] += float(value)
    if any(ours.values()) or not any(bentoml_histogram.values()):
        return ours["nv_inference_count{"], ours["nv_inference_exec_count{"]
    return bentoml_histogram["_sum"], bentoml_histogram["_count"]


def encoded_requests(images: np.ndarray, model: str, args: argparse.Namespace
                     ) -> tuple[dict[str, HttpLoad], list[pb.ModelInferRequest]]:
    """Each image as a ready body for every HTTP protocol and a ready gRPC ModelInferRequest.

    Encoded once, before the clock starts: on a 2-core machine the load generator shares the CPU
    with the server, and re-encoding 784 floats per request would be load-generator work counted
    against the server."""
    shape = [1, 1, *images.shape[-2:]]
    raw = [np.ascontiguousarray(image[None], "<f4").tobytes() for image in images]
    json_headers = [{"Content-Type": "application/json"}] * len(images)
    binary_headers, binary_bodies = [], []
    for data in raw:
        header = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": shape,
                                         "parameters": {"binary_data_size": len(data)}}],
                             "parameters": {"binary_data_output": True}}).encode()
        binary_headers.append({"Content-Type": "application/octet-stream",
                               "Inference-Header-Content-Length": str(len(header))})
        binary_bodies.append(header + data)
    infer = f"/v2/models/{model}/infer"
    http = {
        "http": HttpLoad(args.url, "/classify", [json.dumps({"images": image[None].tolist()}).encode()
                                                 for image in images], json_headers, b"[{"),
        "oip-json": HttpLoad(args.oip_url, infer, [json.dumps({"inputs": [
            {"name": "image", "datatype": "FP32", "shape": shape, "data": image.reshape(-1).tolist()}]}).encode()
            for image in images], json_headers, b"{"),
        "oip-binary": HttpLoad(args.oip_url, infer, binary_bodies, binary_headers, b"{"),
    }
    requests = []
    for data in raw:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="image", datatype="FP32", shape=shape)
        request.raw_input_contents.append(data)
        requests.append(request)
    return http, requests


async def run_clients(load: HttpLoad | None, grpc_address: str, count: int, http_client: Callable,
                      grpc_client: Callable) -> None:
    """`count` concurrent clients until they return: `http_client(session, load, k)` over one aiohttp
    session with a connection per client when `load` is given, else `grpc_client(stub, k)`, each
    on a gRPC connection of its own."""
    if load is not None:
        async with aiohttp.ClientSession(load.base_url, connector=aiohttp.TCPConnector(limit=count),
                                         timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(*(http_client(session, load, k) for k in range(count)))
        return
    # a connection per client, as independent clients would have (gRPC would otherwise share one
    # TCP connection between channels, and with several server workers reach only one of them)
    channels = [grpc.aio.insecure_channel(grpc_address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(count)]
    try:
        await asyncio.gather(*(grpc_client(pb_grpc.GRPCInferenceServiceStub(c), k) for k, c in enumerate(channels)))
    finally:
        await asyncio.gather(*(c.close() for c in channels))
