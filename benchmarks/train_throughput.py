"""Training and inference images/s of our CapsNet against a reference written the way most public
ports write it, same weights, same batch, in the same run; prints the ratios.

The reference (`BroadcastCapsNet`) computes u_hat with a broadcast matmul of W [1,1152,10,16,8]
against u [B,1152,1,8,1] and routes by multiply-and-sum over the full [B,1152,10,16] tensor.
Conv layers, decoder and losses are shared, so the difference is the capsule layer alone.

    python benchmarks/train_throughput.py [--variant paper] [--batch 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json

import torch
from common.machine import machine_words
from common.timing import median_rate
from common.train_steps import BroadcastCapsNet, train_step_fn

from training.config import variant_config
from training.model import CapsNet, dynamic_routing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="paper")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    torch.manual_seed(0)
    ours = CapsNet(variant_config(args.variant))
    reference = BroadcastCapsNet(ours.config)
    reference.load_state_dict(ours.state_dict())
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))

    with torch.no_grad():
        (p_ours, _), (p_ref, _) = ours(x), reference(x)
        max_diff = float((p_ours - p_ref).abs().max())
        infer = {name: median_rate(lambda m=m: m(x), args.batch, args.repeats)
                 for name, m in (("ours", ours), ("reference", reference))}
        u_hat = ours.predictions(ours.primary_capsules(x))
        routing = median_rate(lambda: dynamic_routing(u_hat, ours.config.routing_iters), args.batch, args.repeats)
    train = {name: median_rate(train_step_fn(m, x, y), args.batch, args.repeats, min_seconds=0)
             for name, m in (("ours", ours), ("reference", reference))}

    result = {
        "variant": args.variant, "batch": args.batch, "repeats": args.repeats,
        "hardware": machine_words(),
        "torch": str(torch.__version__),
        "max_abs_diff_probabilities": max_diff,
        "inference_images_per_sec": infer,
        "training_images_per_sec": train,
        "inference_speedup": infer["ours"] / infer["reference"],
        "training_speedup": train["ours"] / train["reference"],
        "routing_share_of_forward": infer["ours"] / routing,
    }
    print(f"CapsNet '{args.variant}', batch {args.batch}, median of {args.repeats} "
          f"({result['hardware']}, torch {result['torch']})")
    print(f"{'':12}{'ours':>12}{'reference':>12}{'speedup':>10}")
    for kind in ("training", "inference"):
        r = result[f"{kind}_images_per_sec"]
        print(f"{kind:12}{r['ours']:>12.1f}{r['reference']:>12.1f}{result[f'{kind}_speedup']:>9.2f}x  images/s")
    print(f"routing = {100 * result['routing_share_of_forward']:.1f}% of our forward time; "
          f"outputs agree to {max_diff:.1e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
