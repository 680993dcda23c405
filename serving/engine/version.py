"""One registered export version in service: its ONNX Runtime session, its batcher (shared by every
protocol), its statistics, and what it is (facts from its config.json, provenance from the store)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from serving.engine.batcher import DynamicBatcher
from serving.engine.facts import ModelFacts
from serving.engine.policies import split_tag
from serving.engine.providers import CUDA
from serving.engine.runtime import CapsNetRuntime
from serving.engine.statistics import ModelStatistics


@dataclass(frozen=True)
class Batching:
    """How a version's batcher runs (CAPSNET_MAX_BATCH_SIZE, _MAX_LATENCY_MS, _MAX_QUEUE_DELAY_MS)."""

    max_batch_size: int = 64
    max_latency_ms: int = 1000
    max_queue_delay_ms: float = 0.0


@dataclass
class ModelVersion:
    """One export version being served. `tag` is name:version in the BentoML model store; `metadata`
    is the store's record of it (accuracies, parity summary, source, training recipe)."""

    tag: str
    runtime: CapsNetRuntime
    metadata: dict[str, Any]
    batcher: DynamicBatcher
    statistics: ModelStatistics

    @classmethod
    def load(cls, tag: str, path: str | Path, metadata: dict[str, Any], batching: Batching,
             intra_op_threads: int = 0, statistics_hooks: dict[str, Any] | None = None) -> ModelVersion:
        """Open the export in `path`, warmed up for the largest batch (blocking)."""
        runtime = CapsNetRuntime(path, intra_op_threads=intra_op_threads)
        runtime.warm_up(batching.max_batch_size)
        statistics = ModelStatistics(*split_tag(tag), **(statistics_hooks or {}))
        return cls(tag, runtime, dict(metadata),
                   DynamicBatcher(runtime.infer, batching.max_batch_size, batching.max_latency_ms, statistics,
                                  batching.max_queue_delay_ms),
                   statistics)

    async def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Validated [N, 1, S, S] -> {output name: [N, ...]}, batched with every other request to this
        version, counted in its statistics. Raises QueuedTooLong past the latency budget."""
        start = time.perf_counter_ns()
        try:
            answer = await self.batcher.submit(images)
        except BaseException:
            self.statistics.record_request(False, time.perf_counter_ns() - start)
            raise
        self.statistics.record_request(True, time.perf_counter_ns() - start, answer.queue_ns, answer.batch)
        return answer.outputs

    @property
    def facts(self) -> ModelFacts:
        return self.runtime.facts

    @property
    def name(self) -> str:
        return split_tag(self.tag)[0]

    @property
    def version(self) -> str:
        return split_tag(self.tag)[1]

    @property
    def objects(self) -> int:
        return self.facts.objects

    @property
    def on_gpu(self) -> bool:
        return self.runtime.provider == CUDA

    def provenance(self) -> dict[str, Any]:
        """Which model this is: version, how it was trained, its recorded accuracies, the file it came from."""
        m = self.metadata
        return {"version": self.version, "training": m.get("training"), "source": m.get("source"),
                "validation_accuracy": m.get("val_accuracy"), "test_accuracy": m.get("test_accuracy")}

    def summary(self) -> str:
        """One line for the log: tag, training, accuracies, source, input and task."""
        p, training = self.provenance(), self.metadata.get("training") or {}
        trained = ", ".join(f"{training[key]} {word}" if key != "seed" else f"seed {training[key]}"
                            for key, word in (("variant", "network"), ("epochs", "epochs"), ("seed", ""))
                            if training.get(key) is not None)
        accuracy = ", ".join(f"{k} {100 * p[f'{k}_accuracy']:.2f} %" for k in ("validation", "test")
                             if p.get(f"{k}_accuracy") is not None)
        size = self.facts.image_size
        return (f"{self.tag} ({trained or 'training not recorded'}; {accuracy or 'no accuracy recorded'}; "
                f"from {p['source'] or 'an older export (source not recorded)'}; "
                f"{size}x{size} input, {self.objects} object(s) per input, "
                f"{self.facts.precision}, on {self.runtime.provider})")

    def describe(self) -> dict[str, Any]:
        """What a client needs to call this model, and which version it is."""
        facts = self.facts
        return {"model_tag": self.tag, "name": self.name, **self.provenance(), "precision": facts.precision,
                "input_size": [1, facts.image_size, facts.image_size],
                "task": facts.task,
                "class_names": facts.class_names, "outputs": facts.output_dims,
                "reconstructions": facts.reconstructs,
                "pose_dims": facts.pose_dim,
                # explain/reconstruct/perturb work (capsnet export's default); equivariance works always
                "explorer": self.runtime.decoder is not None and facts.explorable}
