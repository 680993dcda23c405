"""Regenerate tests/export/golden_tiny.npz. Run only when the model's numerics change on purpose:

    python -m tests.export.make_golden

The file holds a fixed-seed tiny model's weights, 10 input images (6 synthetic digits and the 4
degenerate images) and the outputs the code produced when it was written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from export.inference_graph import ALL_OUTPUTS, InferenceGraph
from export.parity import degenerate_images
from training.config import variant_config
from training.data import synthetic_digits
from training.model import CapsNet

GOLDEN = Path(__file__).with_name("golden_tiny.npz")


def golden_inputs() -> np.ndarray:
    digits = synthetic_digits(6, seed=7)[0][:, None].astype(np.float32) / 255.0
    return np.concatenate([digits, *degenerate_images().values()])


def main() -> None:
    torch.manual_seed(1234)
    model = CapsNet(variant_config("tiny")).eval()
    images = golden_inputs()
    with torch.no_grad():
        outputs = InferenceGraph(model, ALL_OUTPUTS)(torch.from_numpy(images))
    arrays = {f"weight/{k}": v.numpy() for k, v in model.state_dict().items()}
    arrays.update({f"output/{k}": o.numpy() for k, o in zip(ALL_OUTPUTS, outputs, strict=True)})
    np.savez_compressed(GOLDEN, images=images, **arrays)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
