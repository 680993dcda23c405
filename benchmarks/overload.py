"""Overload: what a running `bentoml serve` answers when more clients call it than it can serve.

Closed-loop clients (each sends its next request when the last one is answered) on each protocol:
`http` (the BentoML JSON API /classify), `oip-binary` (Open Inference Protocol REST, raw FP32 bytes)
and `grpc` (OIP ModelInfer), at 1, 8, 64, 256 and 512 clients. Above the server's capacity each level
runs twice: clients that wait as long as Retry-After says (gRPC: the `retry-after` trailing metadata)
before their next request after a 503 / UNAVAILABLE, and clients that retry at once. Per run, what
perf_analyzer reports: requests offered, answered 200 per second (goodput), every status, p50/p99
latency of the answered ones, and the server's RSS (all its processes) and CPU seconds at start and
end. The cost of a refusal is estimated from CPU: (CPU of the run - answered x the CPU per answered
request at 64 clients, where nothing is refused) / refused.

    bentoml serve &   # one worker; from the repository root
    python benchmarks/overload.py --server-pid PID [--out benchmarks/results/overload-cpu.jsonl]
    python benchmarks/overload.py --server-pid PID --soak 600     # 10 minutes at 64 clients, RSS over time

The load generator shares the machine with the server (on this 2-core CPU it takes about one core);
pin it with `taskset -c 1` to keep it off the server's other core.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp
import grpc
import numpy as np
import psutil
from common.load import encoded_requests, metadata, run_clients
from common.machine import cpu_words
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from training.data import synthetic_digits

PROTOCOLS = ["http", "oip-binary", "grpc"]
LEVELS = [1, 8, 64, 256, 512]
SATURATED = 64  # the level the server saturates at, and the baseline of the goodput ratio


def server_usage(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds) of the server and every process under it."""
    root = psutil.Process(pid)
    rss = cpu = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            rss += process.memory_info().rss
            times = process.cpu_times()
            cpu += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return rss / 2**20, cpu


def retry_after(value: str | None) -> float:
    try:
        return max(float(value), 0.0) if value is not None else 1.0
    except ValueError:
        return 1.0


async def run(protocol: str, clients: int, seconds: float, backoff: bool, http: dict, grpc_requests: list,
              args: argparse.Namespace) -> dict:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    offered = 0
    deadline = time.perf_counter() + seconds

    async def pause(value: str | None) -> None:
        if backoff:
            await asyncio.sleep(min(retry_after(value), max(deadline - time.perf_counter(), 0)))

    async def http_client(session: aiohttp.ClientSession, load, k: int) -> None:
        nonlocal offered
        while time.perf_counter() < deadline:
            t, i = time.perf_counter(), k % len(load.bodies)
            offered += 1
            try:
                async with session.post(load.path, data=load.bodies[i], headers=load.headers[i]) as r:
                    body = await r.read()
                ok = r.status == 200 and body.startswith(load.answer_starts)
                statuses["200" if ok else str(r.status)] += 1
                if ok:
                    latencies.append(time.perf_counter() - t)
                elif r.status == 503:
                    statuses["503 with Retry-After"] += "retry-after" in r.headers
                    await pause(r.headers.get("retry-after"))
            except (TimeoutError, aiohttp.ClientError) as e:
                statuses[type(e).__name__] += 1
            k += clients

    async def grpc_client(stub: pb_grpc.GRPCInferenceServiceStub, k: int) -> None:
        nonlocal offered
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            offered += 1
            try:
                response = await stub.ModelInfer(grpc_requests[k % len(grpc_requests)], timeout=30)
                ok = len(response.raw_output_contents) == 2
                statuses["OK" if ok else "missing outputs"] += 1
                if ok:
                    latencies.append(time.perf_counter() - t)
            except grpc.aio.AioRpcError as e:
                statuses[e.code().name] += 1
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    await pause(dict(e.trailing_metadata() or ()).get("retry-after"))
            k += clients

    rss_start, cpu_start = server_usage(args.server_pid)
    start = time.perf_counter()
    await run_clients(http.get(protocol), args.grpc, clients, http_client, grpc_client)
    elapsed = time.perf_counter() - start
    rss_end, cpu_end = server_usage(args.server_pid)
    ms = sorted(1000 * x for x in latencies)

    def pct(p: float) -> float | None:
        return ms[min(len(ms) - 1, int(p * len(ms)))] if ms else None

    return {"protocol": protocol, "clients": clients, "backoff": backoff, "seconds": elapsed, "offered": offered,
            "answered_200": len(ms), "goodput_per_sec": len(ms) / elapsed, "statuses": dict(statuses),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "server_rss_mb": [rss_start, rss_end],
            "server_cpu_s": cpu_end - cpu_start}


def refusal_cost(rows: list[dict]) -> None:
    """Add each overloaded run's estimated server CPU per refused request (ms), from its protocol's
    CPU per answered request at SATURATED clients."""
    per_ok = {r["protocol"]: r["server_cpu_s"] / max(r["answered_200"], 1) for r in rows
              if r["clients"] == SATURATED}
    for r in rows:
        refused = r["offered"] - r["answered_200"]
        if r["protocol"] in per_ok and refused > 0:
            spare = r["server_cpu_s"] - r["answered_200"] * per_ok[r["protocol"]]
            r["cpu_ms_per_refusal"] = 1000 * max(spare, 0.0) / refused


def print_table(rows: list[dict]) -> None:
    base = {r["protocol"]: r["goodput_per_sec"] for r in rows if r["clients"] == SATURATED}
    print(f"{'protocol':>10}{'clients':>8}{'backoff':>8}{'offered':>9}{'200/s':>8}{'vs 64':>7}{'p50 ms':>8}"
          f"{'p99 ms':>8}{'refuse ms':>10}{'RSS MB':>14}  statuses")
    for r in rows:
        ratio = r["goodput_per_sec"] / base[r["protocol"]] if base.get(r["protocol"]) else float("nan")
        p50, p99 = (f"{x:.0f}" if x is not None else "-" for x in (r["p50_ms"], r["p99_ms"]))
        cost = f"{r['cpu_ms_per_refusal']:.2f}" if "cpu_ms_per_refusal" in r else "-"
        rss = f"{r['server_rss_mb'][0]:.0f}->{r['server_rss_mb'][1]:.0f}"
        print(f"{r['protocol']:>10}{r['clients']:>8}{'yes' if r['backoff'] else 'no':>8}{r['offered']:>9}"
              f"{r['goodput_per_sec']:>8.0f}{ratio:>7.2f}{p50:>8}{p99:>8}{cost:>10}{rss:>14}  {r['statuses']}")


async def soak(seconds: float, http: dict, grpc_requests: list, args: argparse.Namespace) -> dict:
    """SATURATED clients on the first protocol for `seconds`, the server's RSS sampled every 10 s."""
    samples: list[tuple[float, float]] = []
    start = time.perf_counter()

    async def sample() -> None:
        while True:
            samples.append((time.perf_counter() - start, server_usage(args.server_pid)[0]))
            await asyncio.sleep(10)

    sampler = asyncio.create_task(sample())
    row = await run(args.protocols[0], SATURATED, seconds, True, http, grpc_requests, args)
    sampler.cancel()
    samples.append((time.perf_counter() - start, server_usage(args.server_pid)[0]))
    after_minute = next((mb for t, mb in samples if t >= 60), samples[-1][1])
    print(f"soak: {args.protocols[0]}, {SATURATED} clients, {row['seconds']:.0f} s: {row['goodput_per_sec']:.0f} "
          f"answered/s, statuses {row['statuses']}; server RSS {samples[0][1]:.0f} MB at start, "
          f"{after_minute:.0f} MB after 1 min, {samples[-1][1]:.0f} MB at the end")
    return {**row, "rss_samples": samples}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server-pid", type=int, required=True, help="the `bentoml serve` process")
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--oip-url", default="http://127.0.0.1:8000")
    p.add_argument("--grpc", default="127.0.0.1:8001")
    p.add_argument("--protocols", nargs="+", default=PROTOCOLS, choices=PROTOCOLS)
    p.add_argument("--levels", type=int, nargs="+", default=LEVELS)
    p.add_argument("--seconds", type=float, default=10.0, help="per run")
    p.add_argument("--soak", type=float, metavar="SECONDS", help="instead of the sweep: a soak at 64 clients")
    p.add_argument("--note", default="", help="recorded with the results (e.g. the settings under test)")
    p.add_argument("--out", type=Path, help="append the results as one JSON line")
    args = p.parse_args()

    images = synthetic_digits(256, seed=5)[0][:, None].astype(np.float32) / 255.0
    meta = await metadata(args.url)
    http, grpc_requests = encoded_requests(images, meta["model_tag"].split(":")[0], args)
    if args.soak:
        result: dict = {"soak": await soak(args.soak, http, grpc_requests, args)}
    else:
        # Levels in rising order, every protocol at each: after heavy load BentoML's batcher holds lone
        # requests for batch-mates for minutes (up to ~0.3 s measured here), which would distort a
        # one-client run that came after an overloaded one.
        rows = []
        for clients in sorted(args.levels):
            for protocol in args.protocols:
                for backoff in ([True, False] if clients > SATURATED else [True]):
                    rows.append(await run(protocol, clients, args.seconds, backoff, http, grpc_requests, args))
                    await asyncio.sleep(2)  # let the refused clients' connections close
        rows.sort(key=lambda r: args.protocols.index(r["protocol"]))
        refusal_cost(rows)
        print_table(rows)
        result = {"rows": rows}
    result.update({"date": datetime.date.today().isoformat(), "machine": cpu_words(), "model": meta["model_tag"],
                   "admission": meta.get("admission"),
                   "batching": {k: meta["batching"][k] for k in ("max_batch_size", "max_latency_ms", "workers")},
                   "note": args.note})
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
