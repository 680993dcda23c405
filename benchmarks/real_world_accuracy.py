"""Accuracy on generated photos and scans of digits (benchmarks/common/photo_digits.py) beside MNIST, for
the upload preparation as served (serving/handlers/preprocess.py: background to 0, ink to ~1, robust crop)
and the earlier one (crop to every pixel above 0.1, no clean-up), same model, same images.

    python benchmarks/real_world_accuracy.py --model runs/quick-.../export/model.onnx [--n 1000]

The model is an exported graph (ONNX Runtime, CPU). MNIST rows: the first --mnist test digits,
encoded as PNG and prepared as an upload would be. Writes one JSON line at the end.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
import onnxruntime as ort
from common.machine import cpu_words
from common.photo_digits import KINDS, font_files, photo_digits
from PIL import Image

from serving.handlers.preprocess import decode_grayscale, to_mnist
from training.data import DATA_DIR_HELP, load_split


def predict(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    """[N, 28, 28] float32 -> predicted labels [N]."""
    return np.concatenate([session.run(["probabilities"], {"image": images[i:i + 256, None]})[0].argmax(1)
                           for i in range(0, len(images), 256)])


def prepared(files: list[bytes], clean: bool) -> np.ndarray:
    return np.stack([to_mnist(decode_grayscale(data), 28, clean=clean) for data in files])


def png(digit: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(digit).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="an exported model.onnx (28x28 digits)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--n", type=int, default=1000, help="generated photos")
    p.add_argument("--mnist", type=int, default=2000, help="MNIST test digits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples-dir", help="also write the generated files here (to look at them)")
    args = p.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    images, labels = load_split("mnist", "test", args.data_dir)
    images, labels = images[:, 0].numpy(), labels.numpy()
    started = time.perf_counter()
    samples = photo_digits(args.n, args.seed, images, labels)
    generated_s = time.perf_counter() - started
    if args.samples_dir:
        from pathlib import Path

        out = Path(args.samples_dir)
        out.mkdir(parents=True, exist_ok=True)
        for k, s in enumerate(samples[:200]):
            (out / f"{k:04d}-{s.kind}-{s.label}.{s.settings['format'].lower()}").write_bytes(s.data)
    truth = np.array([s.label for s in samples])
    kinds = np.array([s.kind for s in samples])
    mnist_files = [png(d) for d in images[:args.mnist]]
    result = {"model": args.model, "photos": args.n, "seed": args.seed, "fonts": len(font_files()),
              "mnist_digits": args.mnist, "machine": f"{cpu_words()}, onnxruntime {ort.__version__}",
              "generation_s": round(generated_s, 1), "accuracy": {}, "prepare_ms_per_photo": {}}
    for name, clean in (("served (clean-up)", True), ("earlier (no clean-up)", False)):
        started = time.perf_counter()
        photos = prepared([s.data for s in samples], clean)
        result["prepare_ms_per_photo"][name] = round(1000 * (time.perf_counter() - started) / args.n, 2)
        hits = predict(session, photos) == truth
        row = {"photos": float(hits.mean())}
        row.update({kind: float(hits[kinds == kind].mean()) for kind in KINDS if (kinds == kind).any()})
        row["mnist"] = float((predict(session, prepared(mnist_files, clean)) == labels[:args.mnist]).mean())
        result["accuracy"][name] = row
    print(f"{args.n} generated photos (seed {args.seed}; {result['fonts']} fonts) and {args.mnist} MNIST test "
          f"digits as uploads; model {args.model}")
    print(f"{'preparation':24}" + "".join(f"{k:>13}" for k in result["accuracy"]["served (clean-up)"]))
    for name, row in result["accuracy"].items():
        print(f"{name:24}" + "".join(f"{100 * v:>12.1f}%" for v in row.values()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
