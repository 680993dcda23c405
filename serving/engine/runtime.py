"""ONNX Runtime around an exported CapsNet: provider choice, warm-up, inference. No torch here."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.engine.facts import ModelFacts
from serving.engine.providers import CPU, CUDA, cuda_unavailable_reason

log = logging.getLogger(__name__)


class CapsNetRuntime:
    """One ONNX Runtime session over an export folder (model.onnx, config.json, decoder.onnx if exported).

    The CUDA provider is asked for only when it can work (`cuda_unavailable_reason`), and the provider
    actually in use is read back from the session: onnxruntime-gpu without a GPU, or without its CUDA
    libraries, quietly runs on the CPU. `cuda_unavailable` says why CUDA is not in use (None if it is).
    """

    def __init__(self, model_dir: str | Path, intra_op_threads: int = 0) -> None:
        """`intra_op_threads`: ONNX Runtime's CPU threads for one run; 0 lets it use every core."""
        model_dir = Path(model_dir)
        self.facts = ModelFacts.read(model_dir)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = intra_op_threads
        self.cuda_unavailable = cuda_unavailable_reason()
        wanted = [CPU] if self.cuda_unavailable else [CUDA, CPU]
        self.session = ort.InferenceSession(str(model_dir / self.facts.model_file), options, providers=wanted)
        self.provider = self.session.get_providers()[0]
        if wanted[0] == CUDA and self.provider != CUDA:
            self.cuda_unavailable = ("a GPU is visible and the CUDA libraries loaded, but ONNX Runtime did not "
                                     "create its CUDA provider")
            log.warning("running on %s: %s", self.provider, self.cuda_unavailable)
        log.info("ONNX Runtime %s on %s (asked for %s)%s", ort.__version__, self.provider, wanted,
                 f"; CUDA not used: {self.cuda_unavailable}" if self.cuda_unavailable else "")
        # decoder.onnx (capsnet export --with-decoder): redraws poses the explorer edits
        decoder = self.facts.config.get("decoder")
        self.decoder = ort.InferenceSession(str(model_dir / decoder["file"]), options, providers=wanted) \
            if decoder else None

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 [N, 1, S, S] -> {output name: [N, ...]} (probabilities [N, K], poses
        [N, K, D], and reconstructions_top2 [N, 2, 1, S, S] when the export has it)."""
        return self.run(self.facts.served_outputs, images)

    def run(self, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
        """Any of the graph's outputs for validated images [N, 1, S, S]. The batcher counts what it runs
        (serving/engine/statistics.py); the explorer's views call this directly, outside it."""
        return dict(zip(names, self.session.run(names, {"image": images}), strict=True))

    def decode(self, poses: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Poses float32 [N, K, D] + labels int64 [N] -> images [N, 1, S, S] (decoder.onnx)."""
        if self.decoder is None:
            raise RuntimeError("this export has no decoder graph")
        return self.decoder.run(["image"], {"poses": poses, "label": labels})[0]

    def pack(self, outputs: dict[str, np.ndarray]) -> np.ndarray:
        """`infer`'s outputs -> [N, W]: every served output flattened into one row per image, in the
        facts' order, what the low-level infer APIs answer (W = facts.packed_width)."""
        names = self.facts.served_outputs
        n = len(outputs[names[0]])
        return np.concatenate([outputs[name].reshape(n, -1) for name in names], axis=1)

    def warm_up(self, max_batch_size: int) -> None:
        """Run the sizes the batcher will use, so the first requests do not pay for allocation."""
        for n in (1, max_batch_size):
            size = self.facts.image_size
            self.session.run(None, {"image": np.zeros((n, 1, size, size), np.float32)})
