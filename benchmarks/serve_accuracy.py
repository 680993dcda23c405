"""Accuracy of a running server on MNIST test digits sent as PNG files (classify_image, with the
MNIST-style preprocessing) against the same digits sent as arrays (classify), in the same run.

    bentoml serve &   # from the repository root
    python benchmarks/serve_accuracy.py [--url http://127.0.0.1:3000] [--count 1000] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import io
import json

import httpx
import numpy as np
from PIL import Image

from training.data import DATA_DIR_HELP, load_split


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = p.parse_args()

    images, labels = load_split("mnist", "test", args.data_dir)
    pixels, labels = images[:args.count, 0].numpy(), labels[:args.count].numpy()
    with httpx.Client(timeout=120) as client:
        from_arrays, from_png = [], []
        for start in range(0, len(pixels), 64):
            chunk = (pixels[start:start + 64] / 255.0).astype(np.float32)
            response = client.post(args.url + "/classify", json={"images": chunk.tolist()})
            response.raise_for_status()
            from_arrays += [r["label"] for r in response.json()]
        for start in range(0, len(pixels), 16):
            files = []
            for k, digit in enumerate(pixels[start:start + 16]):
                buf = io.BytesIO()
                Image.fromarray(digit).save(buf, "PNG")
                files.append(("images", (f"{start + k}.png", buf.getvalue(), "image/png")))
            response = client.post(args.url + "/classify_image", files=files)
            response.raise_for_status()
            from_png += [r["label"] for r in response.json()]
    acc_arrays = float(np.mean(np.array(from_arrays) == labels))
    acc_png = float(np.mean(np.array(from_png) == labels))
    agreement = float(np.mean(np.array(from_png) == np.array(from_arrays)))
    print(f"{len(labels)} MNIST test digits: arrays (classify) {acc_arrays:.2%}, PNG files (classify_image) "
          f"{acc_png:.2%}, difference {100 * (acc_png - acc_arrays):+.2f} pp; same label on {agreement:.2%}")
    print(json.dumps({"count": len(labels), "accuracy_arrays": acc_arrays, "accuracy_png": acc_png,
                      "label_agreement": agreement}))


if __name__ == "__main__":
    main()
