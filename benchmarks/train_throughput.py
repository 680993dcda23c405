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
from collections.abc import Callable

import torch
from bench_timing import median_rate
from machine import machine_words
from torch import Tensor

from training.config import TrainConfig, variant_config
from training.model import CapsNet, dynamic_routing, squash
from training.tasks import training_loss
from training.train import TrainingModule


class BroadcastCapsNet(CapsNet):
    """The common public formulation of DigitCaps + routing (same parameters as CapsNet)."""

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        u = self.primary_capsules(images)  # [B, N_in, D_in]
        w = self.digit_weights.unsqueeze(0)  # [1, N_in, N_out, D_out, D_in]
        u_hat = torch.matmul(w, u[:, :, None, :, None]).squeeze(-1)  # [B, N_in, N_out, D_out]
        b = torch.zeros_like(u_hat[..., :1])  # [B, N_in, N_out, 1]
        for it in range(self.config.routing_iters):
            c = torch.softmax(b, dim=2)
            v = squash((c * u_hat).sum(dim=1, keepdim=True))  # [B, 1, N_out, D_out]
            if it < self.config.routing_iters - 1:
                b = b + (u_hat * v).sum(dim=-1, keepdim=True)
        return v.squeeze(1), c.squeeze(-1)


def train_step_fn(model: CapsNet, x: Tensor, y: Tensor, *, bf16: bool = False,
                  compile_backend: str | None = None) -> Callable[[], None]:
    """One Adam step of the training loss on images x [B, 1, H, W] and labels y [B] (on the model's
    device), as a function that restores the weights afterwards so every call times the same step.
    `bf16`: autocast as `capsnet train --bf16`; `compile_backend`: torch.compile the step's forward."""
    module = TrainingModule(model, training_loss(TrainConfig()))
    if compile_backend:
        module = torch.compile(module, backend=compile_backend)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        with autocast:
            loss, _ = module(x, y, x)  # the decoder redraws the input
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.load_state_dict(state)  # every repeat times the same weights
    return step


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
