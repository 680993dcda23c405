"""Image grids of the paper's figures, as uint8 arrays (pure), and a PNG writer (the I/O edge)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from training.fileio import atomic_path
from training.model import CapsNet

# Figure 4 of the paper: each pose dimension tweaked by -0.25..0.25 in steps of 0.05.
PERTURBATIONS = tuple(round(-0.25 + 0.05 * k, 2) for k in range(11))


def tile(images: Tensor, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """[rows*cols, C, H, W] floats in [0, 1], C = 1 (gray) or 3 (RGB) -> one uint8 image
    [rows*(H+pad)+pad, cols*(W+pad)+pad] (gray) or the same with 3 channels last (RGB)."""
    _, c, h, w = images.shape
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, dtype=np.uint8)
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for k in range(min(len(pixels), rows * cols)):
        r, col = divmod(k, cols)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[top:top + h, left:left + w] = pixels[k]
    return canvas[:, :, 0] if c == 1 else canvas


@torch.no_grad()
def reconstruction_grid(model: CapsNet, images: Tensor, cols: int = 8) -> np.ndarray:
    """Inputs [N, 1, H, W] in [0, 1] on even rows, their reconstructions (masked by the
    predicted class) on the row below."""
    model.eval()
    _, poses = model(images)
    recon = model.reconstruct(poses)
    rows = (len(images) + cols - 1) // cols
    pairs = []
    for r in range(rows):
        chunk = slice(r * cols, (r + 1) * cols)
        for part in (images[chunk], recon[chunk]):
            pairs.append(torch.cat([part, part.new_zeros(cols - len(part), *part.shape[1:])]))
    return tile(torch.cat(pairs), 2 * rows, cols)


@torch.no_grad()
def pose_perturbation_grid(model: CapsNet, image: Tensor) -> np.ndarray:
    """Figure 4: a row per pose dimension of the predicted capsule, a column per perturbation.

    image: [1, 1, H, W] -> uint8 grid of D_out rows x len(PERTURBATIONS) columns.
    """
    model.eval()
    lengths, poses = model(image)
    label = lengths.argmax(dim=1)  # [1]
    d_out = poses.shape[2]
    deltas = torch.tensor(PERTURBATIONS, dtype=poses.dtype, device=poses.device)
    # [D_out, n_perturb, N_out, D_out]: copy the poses, add delta to one dimension of the predicted capsule
    tweaked = poses.expand(d_out, len(deltas), *poses.shape[1:]).clone()
    dims = torch.arange(d_out, device=poses.device)
    tweaked[dims, :, label, dims] += deltas
    flat = tweaked.reshape(-1, *poses.shape[1:])
    recon = model.decode(flat, label.expand(len(flat)))
    return tile(recon, d_out, len(deltas))


@torch.no_grad()
def pair_figure(model: CapsNet, images: Tensor, labels: Tensor) -> np.ndarray:
    """The paper's Figure 5 for overlapping digits: per pair, a row of the input (gray), the two
    reconstructions from the true labels, and the two from the two longest capsules, each pair
    of reconstructions overlaid in two colours (first red, second green; yellow where both draw).

    images [N, 1, H, W] in [0, 1], labels [N, 2] -> uint8 RGB [N*(H+2)+2, 3*(W+2)+2, 3].
    """
    model.eval()
    lengths, poses = model(images)
    predicted = lengths.topk(2, dim=1).indices  # [N, 2]

    def overlay(classes: Tensor) -> Tensor:  # [N, 2] -> [N, 3, H, W]: red, green, no blue
        first, second = model.decode(poses, classes[:, 0]), model.decode(poses, classes[:, 1])
        return torch.cat([first, second, torch.zeros_like(first)], dim=1)

    gray = images.expand(-1, 3, -1, -1)
    rows = torch.stack([gray, overlay(labels), overlay(predicted)], dim=1)  # [N, 3 panels, 3, H, W]
    return tile(rows.flatten(0, 1), len(images), 3)


def save_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 array, gray [H, W] or RGB [H, W, 3], as PNG, atomically."""
    from PIL import Image  # imported here: only the figure-writing edge needs Pillow

    with atomic_path(path) as tmp:
        Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB").save(tmp, format="PNG")
