"""The module that gets exported: images in, the chosen outputs out, no branches at run time."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.model import CapsNet, capsule_length

ALL_OUTPUTS = ("probabilities", "poses", "reconstruction", "routing", "reconstructions_top2", "primary_lengths")


class InferenceGraph(nn.Module):
    """The exported module: images -> the chosen outputs, branch-free (choices fixed at build time).

    image [B, 1, S, S] float32 in [0, 1] (S = 28 for digits, 36 for overlapping pairs) ->
        probabilities         [B, N_out]            capsule lengths
        poses                 [B, N_out, D_out]
        reconstruction        [B, 1, S, S]          decoder masked by the predicted class (optional)
        routing               [B, N_in, N_out]      final coupling coefficients (optional)
        reconstructions_top2  [B, 2, 1, S, S]       decoder masked by each of the two longest
                                                    capsules, longest first (optional; for pairs)
        primary_lengths       [B, N_in]             each primary capsule's length: how present its
                                                    part is (optional; with routing, the part-whole map)
    With `dtype=torch.float16` the network runs in half precision; inputs and outputs stay float32.
    """

    input_names = ("image",)

    def __init__(self, model: CapsNet, outputs: tuple[str, ...] = ("probabilities", "poses"),
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        unknown = set(outputs) - set(ALL_OUTPUTS)
        if unknown or outputs[:2] != ("probabilities", "poses"):
            raise ValueError(f"outputs must start with probabilities, poses; unknown: {sorted(unknown)}")
        self.model = model.eval().to(dtype)
        self.outputs = outputs
        self.dtype = dtype

    def example_inputs(self, batch: int = 2) -> tuple[Tensor, ...]:
        s = self.model.config.image_size
        return (torch.rand(batch, 1, s, s),)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        parts, poses, coupling = self.model.encode_parts(image.to(self.dtype))
        produced = {"probabilities": capsule_length(poses), "poses": poses}
        if "primary_lengths" in self.outputs:
            produced["primary_lengths"] = capsule_length(parts)
        if "reconstruction" in self.outputs:
            produced["reconstruction"] = self.model.reconstruct(poses)
        if "routing" in self.outputs:
            produced["routing"] = coupling
        if "reconstructions_top2" in self.outputs:
            top2 = produced["probabilities"].topk(2, dim=1).indices  # [B, 2]
            produced["reconstructions_top2"] = torch.stack(
                [self.model.decode(poses, top2[:, k]) for k in range(2)], dim=1)
        return tuple(produced[name].float() for name in self.outputs)


class DecoderGraph(nn.Module):
    """The decoder alone, so that edited poses are redrawn without running the encoder again.

    poses [B, N_out, D_out] float32 (any values: the explorer moves them), label int64 [B] in
    [0, N_out) -> image [B, 1, S, S] float32 in [0, 1]: the decoder masked to `label`'s capsule, as in
    CapsNet.decode. With `dtype=torch.float16` it runs in half precision; inputs and outputs stay float32.
    """

    input_names = ("poses", "label")
    outputs = ("image",)

    def __init__(self, model: CapsNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.model = model.eval().to(dtype)
        self.dtype = dtype

    def forward(self, poses: Tensor, label: Tensor) -> tuple[Tensor]:
        return (self.model.decode(poses.to(self.dtype), label).float(),)

    def example_inputs(self, batch: int = 2) -> tuple[Tensor, ...]:
        c = self.model.config
        return torch.randn(batch, c.num_classes, c.digit_dim) * 0.3, torch.arange(batch) % c.num_classes
