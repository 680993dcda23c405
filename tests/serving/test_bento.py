"""A built Bento serves the model it was built with, not whatever is newest in the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bentoml
import pytest

from export.bento import GPU_BENTO_NAME, bentofile, gpu_requirements
from export.registry import register_export
from serving.bento.store import bento_model_tags
from tests.helpers import REPO
from tests.serving.server import Server


def test_bento_model_tags_reads_the_built_bento_only(tmp_path):
    assert bento_model_tags(REPO) == []  # the source tree is not a Bento
    (tmp_path / "src").mkdir()
    (tmp_path / "bento.yaml").write_text("models:\n- tag: capsnet-mnist:old\n  alias: x\n- tag: capsnet-other:v1\n")
    assert bento_model_tags(tmp_path / "src") == ["capsnet-mnist:old", "capsnet-other:v1"]
    assert bento_model_tags(tmp_path) == []  # not a src/ folder


@pytest.mark.slow
def test_a_built_bento_serves_its_own_model(registered):
    export_dir = registered.path  # a registered export folder holds everything register_export needs
    built_with = register_export(export_dir, "capsnet-mnist")
    build = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag"], cwd=REPO,
                           capture_output=True, text=True, timeout=180)
    assert build.returncode == 0, build.stderr[-3000:]
    bento_tag = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento = bentoml.get(bento_tag)
    assert built_with in [str(m.tag) for m in bento.info.models]
    newer = register_export(export_dir, "capsnet-mnist")  # now the newest capsnet-mnist
    assert str(bentoml.models.get("capsnet-mnist:latest").tag) == newer != built_with
    s = Server({}, target=bento_tag)
    try:
        s.wait()
        assert s.get("metadata").json()["model_tag"] == built_with
        assert f"serving {built_with} (" in s.output(tail=10**7)
    finally:
        s.stop()


def test_the_gpu_variant_differs_only_in_name_label_and_onnxruntime_requirement():
    plain, gpu = bentofile(gpu=False), bentofile(gpu=True)
    assert gpu["name"] == GPU_BENTO_NAME and gpu["labels"]["accelerator"] == "nvidia-cuda-13"
    assert gpu["python"]["packages"] == [p for p in plain["python"]["packages"] if not p.startswith("onnxruntime")] \
        + gpu_requirements()
    assert "onnxruntime-gpu[cuda,cudnn]>=1.31" in gpu_requirements()
    rest = {k: v for k, v in gpu.items() if k not in ("name", "labels", "python")}
    assert rest == {k: v for k, v in plain.items() if k not in ("name", "labels", "python")}


@pytest.mark.slow
def test_the_built_gpu_bento_records_the_cuda_13_requirements(registered):
    register_export(registered.path, "capsnet-mnist")
    # a subprocess, as the CLI runs: building imports serving.service, which resolves its models once
    # per process (an in-process build would fix the models of the in-process service tests)
    build = subprocess.run([sys.executable, "-c", "from export.bento import main; raise SystemExit(main(['--gpu']))"],
                           cwd=REPO, capture_output=True, text=True, timeout=180)
    assert build.returncode == 0, build.stderr[-3000:]
    bento = bentoml.get(build.stdout.strip().splitlines()[-1].removeprefix("built Bento "))
    assert bento.info.name == GPU_BENTO_NAME and bento.info.labels["accelerator"] == "nvidia-cuda-13"
    python_env = bento.path_of("env/python")
    assert "onnxruntime-gpu[cuda,cudnn]>=1.31" in open(f"{python_env}/requirements.in").read().splitlines()
    locked = dict(line.split("==") for line in open(f"{python_env}/requirements.txt").read().splitlines()
                  if "==" in line and not line.startswith(("#", "-")))
    assert "nvidia-cudnn-cu13" in locked and locked["nvidia-cuda-runtime"].startswith("13.")
    assert Path(bento.path_of("src/serving/service.py")).is_file()  # the same service
