"""Serving throughput of this source tree against another one (a baseline commit's checkout), side by
side on the same machine: each round starts `bentoml serve` from each tree in turn, with the same
model and settings, runs serve_load.py against it, and stops it. Reports requests/s, p50/p99 and the
mean batch per protocol and level, and candidate / baseline ratios (medians over rounds).

    git worktree add /tmp/baseline <commit>
    python benchmarks/compare_servers.py --baseline /tmp/baseline --model capsnet-mnist:VERSION \\
        [--rounds 2] [--levels 1 16 64] [--seconds 10] [--out benchmarks/results/NAME.jsonl]
    # two versions from one tree, e.g. INT8 (candidate) against float32 (baseline):
    python benchmarks/compare_servers.py --baseline . --model capsnet-mnist:INT8 --baseline-model capsnet-mnist:FP32
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import date
from pathlib import Path

from common.machine import cpu_words

HERE = Path(__file__).resolve().parent
CANDIDATE = HERE.parent


def serve(tree: Path, model: str) -> subprocess.Popen:
    env = {**os.environ, "CAPSNET_MODEL_TAG": model, "BENTOML_DO_NOT_TRACK": "True"}
    server = subprocess.Popen([sys.executable, "-m", "bentoml", "serve", "--port", "3000"], cwd=tree, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen("http://127.0.0.1:3000/readyz", timeout=2).status == 200:
                return server
        except OSError:
            time.sleep(0.5)
    stop(server)
    raise SystemExit(f"the server in {tree} did not become ready in 120 s")


def stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(timeout=30)


def load(levels: list[int], seconds: float, protocols: list[str]) -> dict:
    done = subprocess.run([sys.executable, str(HERE / "serve_load.py"), "--levels", *map(str, levels),
                           "--seconds", str(seconds), "--protocols", *protocols],
                          capture_output=True, text=True, check=True)
    print(done.stdout)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, type=Path, help="the other source tree (a git worktree)")
    p.add_argument("--model", required=True, help="the registered model both serve, NAME:VERSION")
    p.add_argument("--baseline-model", help="another version for the baseline to serve (default: --model): "
                   "the same tree twice then compares two versions, e.g. float32 against INT8")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--protocols", nargs="+", default=["http", "grpc", "oip-binary"])
    p.add_argument("--out", type=Path, help="append the result as one JSON line")
    args = p.parse_args()
    runs: dict[str, list[dict]] = {"candidate": [], "baseline": []}
    for _ in range(args.rounds):
        for name, tree, model in (("candidate", CANDIDATE, args.model),
                                  ("baseline", args.baseline, args.baseline_model or args.model)):
            server = serve(tree, model)
            try:
                runs[name].append(load(args.levels, args.seconds, args.protocols))
            finally:
                stop(server)

    def median(name: str, protocol: str, level: int, key: str) -> float:
        return statistics.median(row[key] for run in runs[name] for row in run["rows"]
                                 if row["protocol"] == protocol and row["concurrency"] == level)

    table = []
    print(f"{'protocol':>10}{'clients':>8}{'req/s new':>11}{'req/s base':>11}{'ratio':>7}{'p99 new':>9}"
          f"{'p99 base':>9}{'batch new':>10}{'batch base':>11}")
    for protocol in args.protocols:
        for level in args.levels:
            row = {"protocol": protocol, "clients": level,
                   **{f"{k}_{n}": median(n, protocol, level, k) for k in ("requests_per_sec", "p50_ms", "p99_ms",
                                                                          "mean_batch_size")
                      for n in ("candidate", "baseline")}}
            row["ratio"] = row["requests_per_sec_candidate"] / row["requests_per_sec_baseline"]
            table.append(row)
            print(f"{protocol:>10}{level:>8}{row['requests_per_sec_candidate']:>11.1f}"
                  f"{row['requests_per_sec_baseline']:>11.1f}{row['ratio']:>7.2f}{row['p99_ms_candidate']:>9.1f}"
                  f"{row['p99_ms_baseline']:>9.1f}{row['mean_batch_size_candidate']:>10.1f}"
                  f"{row['mean_batch_size_baseline']:>11.1f}")
    record = {"date": date.today().isoformat(), "machine": cpu_words(), "model": args.model,
              "baseline_model": args.baseline_model or args.model,
              "baseline": str(args.baseline), "rounds": args.rounds, "seconds": args.seconds, "rows": table,
              "candidate_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=CANDIDATE,
                                                 capture_output=True, text=True).stdout.strip(),
              "baseline_commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.baseline,
                                                capture_output=True, text=True).stdout.strip()}
    if args.out:
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
