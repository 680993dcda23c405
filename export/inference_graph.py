"""The module that gets exported: images in, the chosen outputs out, no branches at run time."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.model import CapsNet, capsule_length

ALL_OUTPUTS = ("probabilities", "poses", "reconstruction", "routing", "reconstructions_top2")


class InferenceGraph(nn.Module):
    """The exported module: images -> the chosen outputs, branch-free (choices fixed at build time).

    image [B, 1, S, S] float32 in [0, 1] (S = 28 for digits, 36 for overlapping pairs) ->
        probabilities         [B, N_out]            capsule lengths
        poses                 [B, N_out, D_out]
        reconstruction        [B, 1, S, S]          decoder masked by the predicted class (optional)
        routing               [B, N_in, N_out]      final coupling coefficients (optional)
        reconstructions_top2  [B, 2, 1, S, S]       decoder masked by each of the two longest
                                                    capsules, longest first (optional; for pairs)
    With `dtype=torch.float16` the network runs in half precision; inputs and outputs stay float32.
    """

    def __init__(self, model: CapsNet, outputs: tuple[str, ...] = ("probabilities", "poses"),
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        unknown = set(outputs) - set(ALL_OUTPUTS)
        if unknown or outputs[:2] != ("probabilities", "poses"):
            raise ValueError(f"outputs must start with probabilities, poses; unknown: {sorted(unknown)}")
        self.model = model.eval().to(dtype)
        self.outputs = outputs
        self.dtype = dtype

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        poses, coupling = self.model.encode(image.to(self.dtype))
        produced = {"probabilities": capsule_length(poses), "poses": poses}
        if "reconstruction" in self.outputs:
            produced["reconstruction"] = self.model.reconstruct(poses)
        if "routing" in self.outputs:
            produced["routing"] = coupling
        if "reconstructions_top2" in self.outputs:
            top2 = produced["probabilities"].topk(2, dim=1).indices  # [B, 2]
            produced["reconstructions_top2"] = torch.stack(
                [self.model.decode(poses, top2[:, k]) for k in range(2)], dim=1)
        return tuple(produced[name].float() for name in self.outputs)
