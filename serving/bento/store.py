"""The BentoML model store as the server sees it, and what one `bentoml serve` serves at start-up:
the registered versions chosen by CAPSNET_MODEL_TAG, a built Bento's models and the version policies
(serving/engine/policies.py). Functions only: serving/service.py, the composition root, calls
`select_at_startup` once; BentoML packs the versions it names into a Bento when one is built, and the
per-model `infer_*` APIs are declared from them (serving/bento/api_types.py). With
CAPSNET_MODEL_CONTROL=explicit the repository loads others later through `list_store`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml
import yaml

from serving.engine.facts import ModelFacts
from serving.engine.policies import StoredVersion, VersionPolicy, parse_policies, split_tag
from serving.engine.repository import default_order
from serving.settings import ServingSettings

MODEL_PREFIX = "capsnet-"  # with no CAPSNET_MODEL_TAG, every capsnet-* model in the store serves


def bento_model_tags(source_root: Path) -> list[str]:
    """The exact model versions a built Bento serves, or [] when `source_root` (the folder holding
    serving/) is not the src/ folder of a built Bento (e.g. the repository itself).

    A Bento is laid out as <bento>/bento.yaml + <bento>/src/<our files>. bento.yaml names models in two
    places: `services[].models`, the versions the service declared when `bentoml build` imported it
    (the version policy's choice, serving/bento/api_types.py: per_model_attributes), and the top-level
    `models`, everything packed, which also holds any bentofile `models:` entry (such as a `latest`
    alias). The service's list is what was selected and tested, so that is the one read. (BentoML's
    own alias resolution does not reach the service's import in a served Bento, so we read the file.)
    """
    bento_yaml = source_root.parent / "bento.yaml"
    if source_root.name != "src" or not bento_yaml.is_file():
        return []
    info = yaml.safe_load(bento_yaml.read_text()) or {}
    return [str(m["tag"]) for service in info.get("services") or [] if isinstance(service, dict)
            for m in service.get("models") or [] if isinstance(m, dict) and "tag" in m]


def list_store(extra_names: tuple[str, ...] = ()) -> list[StoredVersion]:
    """Every registered version of the capsnet-* models (and of `extra_names`), as the repository sees them."""
    return [StoredVersion(m.tag.name, m.tag.version, m.info.creation_time, m.info.metadata.get("val_accuracy"),
                          m.info.metadata.get("precision", "fp32"))
            for m in bentoml.models.list() if m.tag.name.startswith(MODEL_PREFIX) or m.tag.name in extra_names]


def path_and_metadata(tag: str) -> tuple[str, dict[str, Any]]:
    """Where a registered version's export lies, and the store's record of it."""
    model = bentoml.models.get(tag)
    return model.path, model.info.metadata


def wanted_models(settings: ServingSettings, bento_tags: list[str]) -> dict[str, VersionPolicy]:
    """What to serve at start-up, name -> version policy: CAPSNET_MODEL_TAG's entries (NAME:VERSION pins
    that version, NAME serves NAME by its policy); else, in a built Bento, the exact versions it was
    built with; else every capsnet-* model in the store by its policy."""
    default_policy, policies = parse_policies(settings.version_policy)
    entries = list(settings.model_tags) or bento_tags
    if not entries:
        names = sorted({v.name for v in list_store()})
        return {name: policies.get(name, default_policy) for name in names}
    pinned: dict[str, list[str]] = {}
    for entry in entries:
        name, version = split_tag(entry)
        if version and version != "latest":
            pinned.setdefault(name, []).append(version)
        else:
            pinned.setdefault(name, [])
    return {name: VersionPolicy("specific", versions=tuple(versions)) if versions else
            policies.get(name, default_policy) for name, versions in pinned.items()}


@dataclass(frozen=True)
class Selection:
    """The versions one server starts with: `wanted` (name -> version policy) and `models` (the stored
    versions they select), both default model first; `facts` of each name's preferred version."""

    wanted: dict[str, VersionPolicy]
    models: list[bentoml.Model]
    facts: dict[str, ModelFacts]

    @property
    def names(self) -> list[str]:
        return list(self.wanted)

    @property
    def default_name(self) -> str:
        return self.names[0]


def select_at_startup(settings: ServingSettings, source_root: Path) -> Selection:
    """The versions `settings` (and a built Bento at `source_root`) select from the store. Exits
    saying how to create one if a name or pinned version is missing."""
    wanted = wanted_models(settings, bento_model_tags(source_root))
    store = list_store(tuple(wanted))
    found: dict[str, list[bentoml.Model]] = {}
    problems = []
    for name, policy in wanted.items():
        versions = [v for v in store if v.name == name]
        try:
            found[name] = [bentoml.models.get(v.tag) for v in policy.select(versions)] if versions else []
        except ValueError as e:  # a pinned version that is not registered
            problems.append(f"{name}: {e}")
        if not versions:
            problems.append(f"no model {name!r} in the BentoML model store")
    if not wanted:
        problems.append(f"no {MODEL_PREFIX}* model in the BentoML model store")
    if problems:
        sys.stderr.write(
            "\n" + "\n".join(problems) + "\nCreate one with\n"
            "    make pipeline           (or make pretrained: the shipped weights)\n"
            "or, from an existing checkpoint,\n"
            "    capsnet export RUN/best.pt -o RUN/export\n"
            "(or point CAPSNET_MODEL_TAG at registered models, NAME or NAME:VERSION, comma-separated: "
            "`bentoml models list`).\n\n")
        raise SystemExit(2)
    facts = {name: ModelFacts.read(models[0].path) for name, models in found.items()}
    order = default_order((name, facts[name].objects) for name in found)
    return Selection({name: wanted[name] for name in order}, [m for name in order for m in found[name]],
                     {name: facts[name] for name in order})


def selection_lines(selection: Selection, settings: ServingSettings) -> list[str]:
    """What `make serve` prints before starting: each version that will serve, with its validation
    accuracy and source, and the settings that chose it."""
    lines = []
    for m in selection.models:
        accuracy = m.info.metadata.get("val_accuracy")
        lines.append(f"  {m.tag}  " + (f"validation {100 * accuracy:.2f} %" if accuracy is not None else
                                       "(no validation accuracy recorded)")
                     + f"  from {m.info.metadata.get('source') or 'an older export (source not recorded)'}")
    chosen_by = (f"CAPSNET_MODEL_TAG={','.join(settings.model_tags)}" if settings.model_tags else
                 f"version policy {settings.version_policy!r} (CAPSNET_VERSION_POLICY; 'best' = the highest "
                 "validation accuracy of each model's registered versions)")
    return [f"Serving {len(selection.models)} model version(s), chosen by {chosen_by}; {selection.default_name} "
            "answers requests that name no model:", *lines]
