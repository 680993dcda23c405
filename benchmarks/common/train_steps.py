"""The training step the speed benchmarks time, and the reference formulation they time it against:
`BroadcastCapsNet` computes u_hat with a broadcast matmul of W [1,1152,10,16,8] against u
[B,1152,1,8,1] and routes by multiply-and-sum over the full [B,1152,10,16] tensor, the way most
public ports write it. Shared by train_throughput.py and gpu_check.py."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from training.config import TrainConfig
from training.model import CapsNet, squash
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
