"""What one server selects from a real BentoML model store at start-up (serving/bento/store.py):
the version policy applied to registered versions (their recorded validation accuracy and creation
order), NAME and NAME:latest meaning "by policy", a pinned version that is not registered ending the
start with instructions and exit 2, and the lines `make serve` prints."""

from __future__ import annotations

from pathlib import Path

import bentoml
import pytest

from export.registry import register_export
from serving.bento.store import select_at_startup, selection_lines
from serving.settings import ServingSettings
from tests.helpers import REPO, with_accuracy

NAME = "capsnet-selection"


@pytest.fixture(scope="module")
def versions(registered, tmp_path_factory) -> dict[str, str]:
    """Three versions of one model: the middle one registered has the best validation accuracy."""
    root = tmp_path_factory.mktemp("selection")
    return {label: register_export(with_accuracy(Path(registered.path), root / label, accuracy), NAME)
            for label, accuracy in (("old", 0.95), ("best", 0.99), ("newest", 0.90))}


@pytest.mark.parametrize("env, expected", [
    ({"CAPSNET_MODEL_TAG": NAME}, ["best"]),  # the default policy: best
    ({"CAPSNET_MODEL_TAG": f"{NAME}:latest"}, ["best"]),  # :latest is "by its policy", not the newest
    ({"CAPSNET_MODEL_TAG": NAME, "CAPSNET_VERSION_POLICY": "latest"}, ["newest"]),
    ({"CAPSNET_MODEL_TAG": NAME, "CAPSNET_VERSION_POLICY": "latest:2"}, ["newest", "best"]),
    ({"CAPSNET_MODEL_TAG": NAME, "CAPSNET_VERSION_POLICY": f"best;{NAME}=all"}, ["old", "best", "newest"]),
])
def test_the_policy_picks_from_the_registered_versions(versions, env, expected):
    selection = select_at_startup(ServingSettings.from_env(env), REPO)
    by_tag = {tag: label for label, tag in versions.items()}
    assert sorted(by_tag[str(m.tag)] for m in selection.models) == sorted(expected)
    assert selection.default_name == NAME
    if expected == ["best"]:
        lines = selection_lines(selection, ServingSettings.from_env(env))
        assert f"{versions['best']}  validation 99.00 %" in lines[1] and "chosen by CAPSNET_MODEL_TAG" in lines[0]


def test_a_pinned_version_that_is_not_registered_ends_the_start_with_instructions(versions, capsys):
    with pytest.raises(SystemExit) as ended:
        select_at_startup(ServingSettings.from_env({"CAPSNET_MODEL_TAG": f"{NAME}:nosuchversion"}), REPO)
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert "nosuchversion" in err and "make pipeline" in err and "bentoml models list" in err
    assert bentoml.models.get(versions["best"])  # nothing was touched
