"""A built Bento serves the model it was built with, not whatever is newest in the store."""

from __future__ import annotations

import subprocess
import sys

import bentoml
import pytest

from export.registry import register_export
from serving.settings import bento_model_tags
from tests.conftest import REPO
from tests.serving.conftest import Server


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
        assert s.post("metadata", json={}).json()["model_tag"] == built_with
        assert f"serving model {built_with}" in s.output(tail=10**7)
    finally:
        s.stop()
