"""What serving knows of one export, read from one document: the export's config.json (written by
export/onnx_export.py, copied into the BentoML store beside model.onnx). The runtime, the API types
and the protocols all read these facts; nothing else spells out an output name or its shape.

Output names: the graph's served outputs, in the order the low-level infer APIs pack them, and the
explorer's extra outputs (run directly, not served over the protocols).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

PROBABILITIES = "probabilities"  # [N, K] capsule lengths
POSES = "poses"  # [N, K, D]
RECONSTRUCTIONS_TOP2 = "reconstructions_top2"  # [N, 2, 1, S, S], optional (two-object models)
SERVED_OUTPUTS = (PROBABILITIES, POSES, RECONSTRUCTIONS_TOP2)
# The explorer's graph outputs: the longest capsule's reconstruction [N, 1, S, S], the final coupling
# coefficients [N, N_in, K] and the primary capsules' lengths [N, N_in].
RECONSTRUCTION, ROUTING, PRIMARY_LENGTHS = "reconstruction", "routing", "primary_lengths"
EXPLAIN_OUTPUTS = (RECONSTRUCTION, ROUTING, PRIMARY_LENGTHS)
CONFIG_FILE = "config.json"
# The graph file of each precision a registered version may serve in (export/registry.py).
MODEL_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}


def task_of(description: dict[str, Any]) -> dict[str, Any]:
    """The task an export's config.json records; exports from before tasks were recorded held one
    object per input."""
    return description.get("task", {"objects": 1, "name": "single-object"})


@dataclass(frozen=True)
class ModelFacts:
    """One export's shape facts: input side S, class names (K), pose size D, objects per input, and
    the outputs its graph has."""

    config: dict[str, Any]  # the whole config.json (model config, routing iterations, versions, ...)

    @classmethod
    def read(cls, export_dir: str | Path) -> ModelFacts:
        """The facts of the export in `export_dir` (a store model's folder or an export folder)."""
        return cls(json.loads((Path(export_dir) / CONFIG_FILE).read_text()))

    @property
    def precision(self) -> str:
        """"fp32", or "int8" for a version registered from capsnet export --int8."""
        return str(self.config.get("precision", "fp32"))

    @property
    def model_file(self) -> str:
        """The graph this version serves: model.onnx, or model.int8.onnx."""
        return MODEL_FILES[self.precision]

    @property
    def image_size(self) -> int:
        return int(self.config["model_config"]["image_size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def pose_dim(self) -> int:
        return int(self.config["model_config"]["digit_dim"])

    @property
    def task(self) -> dict[str, Any]:
        return task_of(self.config)

    @property
    def objects(self) -> int:
        """How many objects one input holds (1 for a digit, 2 for an overlapping pair)."""
        return int(self.task["objects"])

    @property
    def graph_outputs(self) -> list[str]:
        return list(self.config["outputs"])

    # served_outputs and output_dims are read on every request (runtime, data plane, packing): worked
    # out once per version, not per request. Nothing changes `config` after it is read.
    @cached_property
    def served_outputs(self) -> list[str]:
        """The outputs every protocol returns, in packing order."""
        graph = set(self.graph_outputs)
        return [name for name in SERVED_OUTPUTS if name in graph]

    @property
    def reconstructs(self) -> bool:
        """Whether answers can carry each found object's reconstruction."""
        return RECONSTRUCTIONS_TOP2 in self.graph_outputs

    @property
    def explorable(self) -> bool:
        """explain / reconstruct / perturb work: the export has the decoder and the explorer's outputs."""
        return bool(self.config.get("decoder")) and set(EXPLAIN_OUTPUTS) <= set(self.graph_outputs)

    @cached_property
    def output_dims(self) -> dict[str, list[int]]:
        """Per served output, its shape after the batch axis."""
        k, d, s = len(self.class_names), self.pose_dim, self.image_size
        dims = {PROBABILITIES: [k], POSES: [k, d], RECONSTRUCTIONS_TOP2: [2, 1, s, s]}
        return {name: dims[name] for name in self.served_outputs}

    @property
    def packed_width(self) -> int:
        """W of the low-level infer APIs' [N, W] rows: every served output flattened, in order."""
        return sum(math.prod(dims) for dims in self.output_dims.values())
