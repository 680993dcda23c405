"""What one `bentoml serve` serves at start-up: its settings and the registered model versions, chosen
once at import by CAPSNET_MODEL_TAG and the version policies (serving/engine/repository.py). BentoML packs the
versions named here into a Bento when it is built, and the per-model `infer_*` APIs are declared from
them (serving/bento/api_types.py); with CAPSNET_MODEL_CONTROL=explicit the repository loads others later."""

from __future__ import annotations

import sys
from pathlib import Path

import bentoml

from serving.engine.repository import StoredVersion, VersionPolicy, parse_policies
from serving.handlers.classify import task_of
from serving.settings import MODEL_PREFIX, ServingSettings, bento_model_tags


def objects_of(model: bentoml.Model) -> int:
    """How many objects one input of this registered export holds."""
    return int(task_of(model.info.metadata)["objects"])


def list_store(extra_names: tuple[str, ...] = ()) -> list[StoredVersion]:
    """Every registered version of the capsnet-* models (and of `extra_names`), as the repository sees them."""
    return [StoredVersion(m.tag.name, m.tag.version, m.info.creation_time, m.info.metadata.get("val_accuracy"))
            for m in bentoml.models.list() if m.tag.name.startswith(MODEL_PREFIX) or m.tag.name in extra_names]


def path_and_metadata(tag: str) -> tuple[str, dict]:
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
        name, _, version = entry.partition(":")
        if version and version != "latest":
            pinned.setdefault(name, []).append(version)
        else:
            pinned.setdefault(name, [])
    return {name: VersionPolicy("specific", versions=tuple(versions)) if versions else
            policies.get(name, default_policy) for name, versions in pinned.items()}


def resolve_models(wanted: dict[str, VersionPolicy]) -> list[bentoml.Model]:
    """The stored versions `wanted` selects, the default model (a single-object one, capsnet-mnist
    first) first. Exits saying how to create one if a name or pinned version is missing."""
    store = list_store(tuple(wanted))
    found, problems = [], []
    for name, policy in wanted.items():
        versions = [v for v in store if v.name == name]
        try:
            found += [bentoml.models.get(v.tag) for v in policy.select(versions)] if versions else []
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
    return sorted(found, key=lambda m: (objects_of(m) != 1, m.tag.name != f"{MODEL_PREFIX}mnist", m.tag.name))


settings = ServingSettings.from_env()
# name -> version policy, the default model first (the order NAMES and the repository keep)
_wanted = wanted_models(settings, bento_model_tags(Path(__file__).resolve().parents[2]))
MODELS = resolve_models(_wanted)  # the versions served at start-up, default model first
NAMES = list(dict.fromkeys(m.tag.name for m in MODELS))
WANTED = {name: _wanted[name] for name in NAMES}


def selection_lines() -> list[str]:
    """What `make serve` prints before starting: each version that will serve, with its validation
    accuracy and source, and the settings that chose it."""
    lines = []
    for m in MODELS:
        accuracy = m.info.metadata.get("val_accuracy")
        lines.append(f"  {m.tag}  " + (f"validation {100 * accuracy:.2f} %" if accuracy is not None else
                                       "(no validation accuracy recorded)")
                     + f"  from {m.info.metadata.get('source') or 'an older export (source not recorded)'}")
    chosen_by = (f"CAPSNET_MODEL_TAG={','.join(settings.model_tags)}" if settings.model_tags else
                 f"version policy {settings.version_policy!r} (CAPSNET_VERSION_POLICY; 'best' = the highest "
                 "validation accuracy of each model's registered versions)")
    return [f"Serving {len(MODELS)} model version(s), chosen by {chosen_by}; {NAMES[0]} answers requests that "
            "name no model:", *lines]
