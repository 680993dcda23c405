"""A built Bento serves the model it was built with, not whatever is newest in the store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bentoml
import httpx
import pytest
import yaml

from export.bento import GPU_BENTO_NAME, bentofile, gpu_requirements
from export.registry import register_export
from serving.bento.store import bento_model_tags
from tests.helpers import REPO, with_accuracy
from tests.serving.server import serving


def test_bento_model_tags_reads_the_services_models_not_everything_packed(tmp_path):
    assert bento_model_tags(REPO) == []  # the source tree is not a Bento
    (tmp_path / "src").mkdir()
    # what `bentoml build` writes: everything packed at the top (a bentofile alias's newest export
    # included), the versions the service declared under services[]
    (tmp_path / "bento.yaml").write_text(yaml.safe_dump({
        "models": [{"tag": "capsnet-mnist:newest", "alias": "latest"}, {"tag": "capsnet-mnist:best"},
                   {"tag": "capsnet-other:v1"}],
        "services": [{"name": "capsnet", "models": [{"tag": "capsnet-mnist:best"}, {"tag": "capsnet-other:v1"}]}]}))
    assert bento_model_tags(tmp_path / "src") == ["capsnet-mnist:best", "capsnet-other:v1"]
    assert bento_model_tags(tmp_path) == []  # not a src/ folder


def in_store(home: Path, code: str) -> str:
    """Run `code` in a fresh process whose BentoML store is `home`; its last line of output."""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "BENTOML_HOME": str(home)},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_a_built_bento_serves_the_policys_choice_of_every_model_not_the_newest(registered, registered_fashion,
                                                                                tmp_path):
    # a store of its own, so that what the build selects does not depend on what other tests registered
    home = tmp_path / "bentoml"
    best = with_accuracy(Path(registered.path), tmp_path / "best", 0.99)
    newest = with_accuracy(Path(registered.path), tmp_path / "newest", 0.90)
    register = "from export.registry import register_export as r; print(r({!r}, {!r}))"
    best_tag = in_store(home, register.format(str(best), "capsnet-mnist"))
    newest_tag = in_store(home, register.format(str(newest), "capsnet-mnist"))  # registered last
    fashion_tag = in_store(home, register.format(registered_fashion.path, "capsnet-fashion-mnist"))
    bento_tag = in_store(home, "from export.bento import build_bento; print(build_bento(False))")
    bento_yaml = yaml.safe_load(Path(in_store(home, f"import bentoml; print(bentoml.get({bento_tag!r}).path)"),
                                     "bento.yaml").read_text())
    assert [m["tag"] for m in bento_yaml["services"][0]["models"]] == [best_tag, fashion_tag]
    assert newest_tag not in [m["tag"] for m in bento_yaml["models"]]  # not even packed

    with serving({"BENTOML_HOME": str(home)}, target=bento_tag) as s:
        served = {m["name"]: m for m in s.get("metadata").json()["models"]}
        assert set(served) == {"capsnet-mnist", "capsnet-fashion-mnist"}
        assert httpx.get(f"http://127.0.0.1:{s.oip_port}/v2/models/capsnet-mnist").json()["versions"] == [
            best_tag.split(":")[1]]
        assert s.grpc().is_model_ready("capsnet-fashion-mnist", fashion_tag.split(":")[1])
        assert not s.grpc().is_model_ready("capsnet-mnist", newest_tag.split(":")[1])
        assert f"serving {best_tag} (" in s.output(tail=10**7)


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
