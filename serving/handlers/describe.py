"""The `/metadata` document: what this server serves and how (models, provider, batching, admission,
versions). Built from the classifier's repository and settings; the BentoML API returns it as is."""

from __future__ import annotations

import platform
from typing import Any

import numpy as np
import onnxruntime as ort

from serving.handlers.classify import Classifier


def metadata_document(classifier: Classifier, server_versions: dict[str, str] | None = None) -> dict[str, Any]:
    """The default model's details at the top (another model's while the default is unloaded), every
    served version under `models`, the admission's limits and counts; `server_versions` join the
    library versions (the serving framework's, which this module does not import)."""
    s, models, repository = classifier.settings, classifier.models, classifier.repository
    admission = classifier.admission.snapshot()
    if not models:
        return {"models": [], "default_model": classifier.default_name, "model_control": s.model_control,
                "repository": repository.index(), "admission": admission}
    model = next((m for m in models if m.name == classifier.default_name), models[0])
    config = model.facts.config
    return {
        "model_tag": model.tag,
        "model_config": config["model_config"],
        "class_names": model.facts.class_names,
        "routing_iters": config["routing_iters"],
        "outputs": model.facts.output_dims,
        # only what the export recorded: a model from an interrupted run has no test accuracy
        "accuracy": {name: model.metadata[key] for name, key in (("validation", "val_accuracy"),
                     ("test", "test_accuracy")) if model.metadata.get(key) is not None},
        "parity": model.metadata.get("parity"),
        "models": [m.describe() for m in models],
        "default_model": classifier.default_name,
        "version_policy": s.version_policy,
        "model_control": s.model_control,
        "provider": model.runtime.provider,
        "providers": model.runtime.session.get_providers(),
        "cuda_unavailable": model.runtime.cuda_unavailable,  # why not CUDA, in words; None on CUDA
        "require_gpu": s.require_gpu,
        # the statistics are this worker's; per version: /v2/models/stats, and nv_inference_* on /metrics
        "batching": {"max_batch_size": s.max_batch_size, "max_latency_ms": s.max_latency_ms,
                     "max_queue_delay_ms": s.max_queue_delay_ms,
                     "workers": s.workers, **model.statistics.batching()},
        "grpc_port": s.grpc_port,
        "versions": {**(server_versions or {}), "onnxruntime": ort.__version__, "numpy": np.__version__,
                     "python": platform.python_version(), "exported_with": config.get("versions", {})},
        "admission": admission,
    }
