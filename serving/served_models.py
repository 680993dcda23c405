"""What one `bentoml serve` serves: its settings and the registered models, resolved once at import
(BentoML packs the models named here into a Bento when it is built, and the API types are derived
from them: serving/api_types.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import bentoml
from bentoml.exceptions import NotFound

from serving.core import task_of
from serving.settings import MODEL_PREFIX, ServingSettings, bento_model_tags


def objects_of(model: bentoml.Model) -> int:
    """How many objects one input of this registered export holds."""
    return int(task_of(model.info.metadata)["objects"])


def newest_of_each(prefix: str) -> list[bentoml.Model]:
    """The newest version of every stored model whose name starts with `prefix`."""
    newest: dict[str, bentoml.Model] = {}
    for model in bentoml.models.list():
        name = model.tag.name
        if name.startswith(prefix) and (name not in newest or
                                        model.info.creation_time > newest[name].info.creation_time):
            newest[name] = model
    return list(newest.values())


def resolve_models(tags: tuple[str, ...]) -> list[bentoml.Model]:
    """The stored models to serve, the default one (a single-object model, capsnet-mnist first)
    first: `tags` if given; else, in a built Bento, the models it was built with; else (the source
    tree) the newest version of every capsnet-* model. Exits saying how to create one if none."""
    wanted = list(tags) or bento_model_tags(Path(__file__).resolve().parents[1])
    found, missing = [], []
    for tag in wanted:
        try:
            found.append(bentoml.models.get(tag))
        except NotFound:
            missing.append(tag)
    if not wanted:
        found = newest_of_each(MODEL_PREFIX)
        missing = [] if found else [f"{MODEL_PREFIX}mnist"]
    if missing or not found:
        sys.stderr.write(
            f"\nNo model {', '.join(repr(m) for m in missing)} in the BentoML model store. Create one with\n"
            "    make pipeline\n"
            "or, from an existing checkpoint,\n"
            "    capsnet export RUN/best.pt -o RUN/export\n"
            "(or point CAPSNET_MODEL_TAG at registered models, comma-separated: `bentoml models list`).\n\n")
        raise SystemExit(2)
    return sorted(found, key=lambda m: (objects_of(m) != 1, m.tag.name != f"{MODEL_PREFIX}mnist", m.tag.name))


settings = ServingSettings.from_env()
MODELS = resolve_models(settings.model_tags)
NAMES = [m.tag.name for m in MODELS]
