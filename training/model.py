"""The CapsNet of Sabour, Frosst & Hinton (2017), pure: no I/O, no devices, no globals.

Shape legend used in every comment:
    B      batch size
    N_in   primary capsules (1152 for the paper network: 32 types x 6 x 6)
    N_out  digit capsules, one per class (10)
    D_in   primary capsule dimension (8)
    D_out  digit capsule dimension (16)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.config import CapsNetConfig

# Keeps squash and capsule lengths differentiable at the zero vector (d sqrt(x)/dx is infinite
# at 0). Small enough to change a capsule length of 1e-2 by about 5e-7.
EPS = 1e-8


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """squash(s) = (|s|^2 / (1 + |s|^2)) * s / |s|, finite (zero) at s = 0. Shape preserved."""
    norm_sq = (s * s).sum(dim, keepdim=True)
    return s * (norm_sq / (1.0 + norm_sq)) * torch.rsqrt(norm_sq + EPS)


def capsule_length(v: Tensor, dim: int = -1) -> Tensor:
    """Euclidean length of capsule vectors along `dim`, differentiable at zero."""
    return torch.sqrt((v * v).sum(dim) + EPS)


def softmax_over_parents(b: Tensor) -> Tensor:
    """Softmax of routing logits [B, N_out, N_in] over the parents (dim 1), written out.

    Library softmax kernels are slow on this shape in both runtimes we ship: PyTorch's over a
    10-wide last axis, ONNX Runtime's (which transposes) over any other axis. max/exp/sum is fast
    in both and numerically the same.
    """
    e = torch.exp(b - b.amax(dim=1, keepdim=True))
    return e / e.sum(dim=1, keepdim=True)


def dynamic_routing(u_hat: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Routing-by-agreement (Procedure 1 of the paper), unrolled for a fixed `iters`.

    Args:
        u_hat: predictions u_hat[j|i] of every primary capsule i for every parent j,
            [B, N_in, N_out, D_out]; may be a strided view.
        iters: number of routing iterations (a Python int: the loop unrolls when traced).

    Returns:
        v: parent capsules [B, N_out, D_out].
        c: coupling coefficients of the last iteration [B, N_out, N_in]; sum over N_out is 1.

    Both sums are dense batched GEMMs against u_hat seen as [B, N_in, N_out*D_out]: s takes the
    diagonal blocks of c @ u_hat (10x the useful multiply-adds, but one streaming read of u_hat
    beats gathering blocks), the agreement multiplies by a block-diagonal matrix of v.
    """
    _, n_in, n_out, d_out = u_hat.shape
    votes = u_hat.reshape(-1, n_in, n_out * d_out)  # [B, N_in, N_out*D_out]
    if votes.requires_grad:  # backward through the strided view is slow; training pays one copy
        votes = votes.contiguous()
    eye = torch.eye(n_out, dtype=u_hat.dtype, device=u_hat.device)  # [N_out, N_out]
    # Iteration 1: b = 0, so c_ij = 1/N_out for every pair and s_j = sum_i u_hat[j|i] / N_out.
    c = u_hat.new_full((u_hat.shape[0], n_out, n_in), 1.0 / n_out)
    v = squash(votes.sum(dim=1).view(-1, n_out, d_out) / n_out)  # [B, N_out, D_out]
    b = None
    for _ in range(iters - 1):
        # agreement u_hat[j|i] . v_j: block-diagonal [B, N_out, N_out*D_out] @ [B, N_out*D_out, N_in]
        v_blocks = (v.unsqueeze(2) * eye[:, :, None]).reshape(-1, n_out, n_out * d_out)
        agreement = torch.matmul(v_blocks, votes.transpose(1, 2))  # [B, N_out, N_in]
        b = agreement if b is None else b + agreement
        c = softmax_over_parents(b)  # sum_j c_ij = 1 for every i
        # s_j = sum_i c_ij u_hat[j|i]: diagonal blocks of [B, N_out, N_in] @ [B, N_in, N_out*D_out]
        every_pair = torch.matmul(c, votes).view(-1, n_out, n_out, d_out)  # [B, j, j', D_out]
        v = squash((every_pair * eye[:, :, None]).sum(dim=2))  # [B, N_out, D_out]
    return v, c


class CapsNet(nn.Module):
    """Conv1 -> PrimaryCaps -> DigitCaps (dynamic routing) -> optional decoder.

    `forward` is the branch-free inference path that export uses; `encode` also exposes the
    coupling coefficients and `decode` reconstructs from poses masked by a given class.
    """

    def __init__(self, config: CapsNetConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.conv1 = nn.Conv2d(c.in_channels, c.conv1_channels, c.conv1_kernel)
        self.primary = nn.Conv2d(
            c.conv1_channels, c.primary_types * c.primary_dim, c.primary_kernel, c.primary_stride
        )
        # One D_out x D_in matrix per (primary, digit) pair: [N_in, N_out, D_out, D_in].
        self.digit_weights = nn.Parameter(
            0.01 * torch.randn(c.num_primary, c.num_classes, c.digit_dim, c.primary_dim)
        )
        widths = [c.num_classes * c.digit_dim, *c.decoder_hidden]
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(w_in, w_out), nn.ReLU(inplace=True)]
        layers += [nn.Linear(widths[-1], c.in_channels * c.image_size**2), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)

    def primary_capsules(self, images: Tensor) -> Tensor:
        """images [B, C, H, W] -> squashed primary capsules u [B, N_in, D_in]."""
        c = self.config
        x = torch.relu(self.conv1(images))  # [B, conv1_channels, 20, 20]
        x = self.primary(x)  # [B, types * D_in, G, G]
        g = c.primary_grid
        # Channels are grouped per capsule type: [B, types, D_in, G, G] -> [B, types, G, G, D_in]
        x = x.view(-1, c.primary_types, c.primary_dim, g, g).permute(0, 1, 3, 4, 2)
        return squash(x.reshape(-1, c.num_primary, c.primary_dim))

    def predictions(self, u: Tensor) -> Tensor:
        """u [B, N_in, D_in] -> u_hat [B, N_in, N_out, D_out] (u_hat[j|i] = W_ij u_i), a strided view.

        One batched matmul over the N_in primary capsules instead of a broadcast over
        [B, N_in, N_out, D_out, D_in], which would materialise a B-fold copy of W.
        """
        n_in, n_out, d_out, d_in = self.digit_weights.shape
        w = self.digit_weights.reshape(n_in, n_out * d_out, d_in).transpose(1, 2)  # [N_in,D_in,N_out*D_out]
        u_hat = torch.bmm(u.transpose(0, 1), w)  # [N_in, B, N_out * D_out]
        return u_hat.transpose(0, 1).view(-1, n_in, n_out, d_out)

    def encode(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, C, H, W] in [0, 1] -> (poses [B, N_out, D_out], coupling [B, N_in, N_out])."""
        _, poses, coupling = self.encode_parts(images)
        return poses, coupling

    def encode_parts(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """encode, also returning the parts: images [B, C, H, W] -> (primary capsules u [B, N_in, D_in],
        poses [B, N_out, D_out], coupling [B, N_in, N_out])."""
        u = self.primary_capsules(images)
        poses, coupling = dynamic_routing(self.predictions(u), self.config.routing_iters)
        return u, poses, coupling.transpose(1, 2)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images [B, C, H, W] in [0, 1] -> (probabilities [B, N_out], poses [B, N_out, D_out]).

        "Probabilities" are the digit capsules' lengths, each in [0, 1) but not summing to 1.
        """
        poses, _ = self.encode(images)
        return capsule_length(poses), poses

    def decode(self, poses: Tensor, labels: Tensor) -> Tensor:
        """Reconstruct from poses [B, N_out, D_out] masked to class labels [B] -> [B, C, H, W]."""
        c = self.config
        mask = nn.functional.one_hot(labels, c.num_classes).to(poses.dtype)  # [B, N_out]
        flat = (poses * mask.unsqueeze(2)).flatten(1)  # [B, N_out * D_out]
        return self.decoder(flat).view(-1, c.in_channels, c.image_size, c.image_size)

    def reconstruct(self, poses: Tensor) -> Tensor:
        """Inference-time reconstruction, masked by the longest capsule. [B,N_out,D_out] -> [B,C,H,W]."""
        return self.decode(poses, capsule_length(poses).argmax(dim=1))


def count_parameters(model: CapsNet, include_decoder: bool = True) -> int:
    """Number of trainable parameters, optionally without the reconstruction decoder."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if include_decoder or not name.startswith("decoder.")
    )
